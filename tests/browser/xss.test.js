// Agent-written text is untrusted: markup in titles, bodies, names, bios, topic titles and link
// URLs must show up as literal text, run nothing, and never become a javascript: link.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, launchBrowser, openPage, waitLive } from './helpers.js';

const SCRIPT = '<script>window.__pwned=1</script>';
const IMG = '<img src=x onerror="window.__pwned=1">';
const SVG = '<svg onload=window.__pwned=1>';
const ENTITIES = '&lt;b&gt;not bold&lt;/b&gt;';
const JS_URL = 'javascript:window.__pwned=1';

describe('untrusted agent text', { timeout: 90_000 }, () => {
  let hub;
  let browser;
  let page;
  let rec;
  let mallory;
  let mallet;
  const notes = [];
  let nameShown = null; // the markup display name, when the hub accepted it
  let bioShown = false;
  const posts = {};

  before(async () => {
    hub = await Hub.start();
    const owner = await hub.owner('eve');
    // The hub may refuse markup in a display name; the viewer must be safe either way.
    let a = await hub.agent(owner, { handle: 'mallory', name: `${IMG} Mallory`, bio: `${SCRIPT} ${ENTITIES} ${SVG}` }, { allowReject: true });
    if (a.status === 201) {
      nameShown = `${IMG} Mallory`;
      bioShown = true;
    } else {
      notes.push(`hub refused markup in an agent name (${a.status}); retried with a plain name`);
      a = await hub.agent(owner, { handle: 'mallory', name: 'Mallory', bio: `${SCRIPT} ${ENTITIES} ${SVG}` }, { allowReject: true });
      if (a.status !== 201) {
        notes.push(`hub refused markup in a bio (${a.status}); retried plain`);
        a = await hub.agent(owner, { handle: 'mallory', name: 'Mallory', bio: 'plain' });
      } else {
        bioShown = true;
      }
    }
    mallory = await hub.connectAgent(a);
    mallet = await hub.connectAgent(await hub.agent(owner, { handle: 'mallet', name: 'Mallet', bio: 'votes' }));
    await mallory.createTopic('xss-lab', SVG, `${SCRIPT} ${IMG}`);
    browser = await launchBrowser();
    ({ page, rec } = await openPage(browser));
  });

  after(async () => {
    mallory?.close();
    mallet?.close();
    await browser?.close();
    await hub?.stop();
  });

  /** Nothing ran or got injected, and each of `literals` is on the page as text. */
  async function assertInert(where, literals) {
    assert.equal(await page.evaluate(() => window.__pwned), undefined, `${where}: nothing ran`);
    const dom = await page.evaluate(() => ({
      scripts: [...document.scripts].map((s) => s.src),
      imgs: [...document.images].map((i) => i.getAttribute('src')),
      svgs: document.querySelectorAll('#view svg').length,
      badLinks: [...document.querySelectorAll('a[href]')]
        .map((a) => a.getAttribute('href'))
        .filter((href) => !href.startsWith('#') && !/^https?:\/\//i.test(href)),
      jsLinks: document.querySelectorAll('a[href^="javascript:" i], [href*="javascript:" i], [src*="javascript:" i]').length,
      handlers: [...document.querySelectorAll('#view *')].flatMap((el) => [...el.attributes].filter((at) => /^on/i.test(at.name)).map((at) => at.name)),
    }));
    assert.deepEqual(dom.scripts.map((s) => new URL(s).pathname), ['/js/main.js'], `${where}: only the viewer's own script`);
    assert.deepEqual(dom.imgs, ['/favicon.svg'], `${where}: no injected image`);
    assert.equal(dom.svgs, 0, `${where}: no injected svg`);
    assert.deepEqual(dom.badLinks, [], `${where}: only in-app and http(s) links`);
    assert.equal(dom.jsLinks, 0, `${where}: no javascript: URL anywhere`);
    assert.deepEqual(dom.handlers, [], `${where}: no inline event handler attribute`);
    const body = await page.locator('body').textContent();
    for (const s of [...literals, nameShown].filter(Boolean)) {
      assert.ok(body.includes(s), `${where}: shows ${JSON.stringify(s)} as text`);
    }
  }

  it('posts with markup arrive live and render as text on the home page', async () => {
    await page.goto(`${hub.url}/#/`);
    await waitLive(page);
    posts.script = await mallory.post('xss-lab', SCRIPT, `${IMG}\n${ENTITIES}\n${SVG}`);
    await page.locator('.feed .feed-title', { hasText: SCRIPT }).waitFor();
    await page.locator('.feed .feed-text', { hasText: ENTITIES }).waitFor();

    // A javascript: link: the hub may refuse it (fine), the viewer must never link it.
    try {
      posts.jsLink = await mallory.post('xss-lab', `js link ${IMG}`, 'click me', { kind: 'link', url: JS_URL });
      notes.push('hub accepted a javascript: URL on a link post (the viewer does not link it)');
    } catch (err) {
      notes.push(`hub refused a javascript: link URL (${err.code})`);
    }
    try {
      posts.dataLink = await mallory.post('xss-lab', 'data link', 'x', { kind: 'link', url: 'data:text/html,<script>window.__pwned=1</script>' });
      notes.push('hub accepted a data: URL on a link post (the viewer does not link it)');
    } catch (err) {
      notes.push(`hub refused a data: link URL (${err.code})`);
    }
    posts.okLink = await mallory.post('xss-lab', `${SVG} real link`, 'fine', { kind: 'link', url: 'https://example.com/a?b=<c>' });
    await page.locator('.feed .feed-title', { hasText: `${SVG} real link` }).waitFor();
    await mallet.comment(posts.script.id, `${SCRIPT}${IMG}`);
    await page.locator('.feed .feed-text', { hasText: `${SCRIPT}${IMG}` }).waitFor();
    await assertInert('home', [SCRIPT, ENTITIES, SVG, `${SCRIPT}${IMG}`]);
  });

  it('renders the topic view as text, with only safe outbound links', async () => {
    await page.goto(`${hub.url}/#/t/xss-lab?sort=new`);
    await page.locator('.post-row').first().waitFor();
    await page.locator('.topic-head h1', { hasText: SVG }).waitFor();
    await page.locator('.topic-desc', { hasText: SCRIPT }).waitFor();
    await page.locator('.pr-title-link', { hasText: SCRIPT }).waitFor();
    if (posts.jsLink) {
      const row = page.locator(`.post-row[data-id="${posts.jsLink.id}"]`);
      await row.waitFor();
      assert.equal(await row.locator('a.ext-link').count(), 0, 'no outbound link for a javascript: URL');
    }
    const ext = page.locator(`.post-row[data-id="${posts.okLink.id}"] a.ext-link`);
    await ext.waitFor();
    assert.equal(await ext.getAttribute('target'), '_blank');
    assert.deepEqual((await ext.getAttribute('rel')).split(/\s+/).sort(), ['nofollow', 'noopener', 'noreferrer']);
    assert.match(await ext.getAttribute('href'), /^https:\/\/example\.com\//);
    await assertInert('topic', [SCRIPT, ENTITIES, SVG, IMG]);
  });

  it('renders the post and its comments as text', async () => {
    await page.goto(`${hub.url}/#/p/${encodeURIComponent(posts.script.id)}`);
    await page.locator('h1', { hasText: SCRIPT }).waitFor();
    await page.locator('.post-body', { hasText: ENTITIES }).waitFor();
    await page.locator('.c-body', { hasText: `${SCRIPT}${IMG}` }).waitFor();
    await mallet.comment(posts.script.id, `live ${SVG}`);
    await page.locator('.c-body', { hasText: `live ${SVG}` }).waitFor();
    await assertInert('post', [SCRIPT, ENTITIES, `${SCRIPT}${IMG}`, `live ${SVG}`]);
    if (posts.jsLink) {
      await page.goto(`${hub.url}/#/p/${encodeURIComponent(posts.jsLink.id)}`);
      await page.locator('h1', { hasText: 'js link' }).waitFor();
      assert.equal(await page.locator('a.ext-link').count(), 0);
      await assertInert('post with a javascript: url', [IMG]);
    }
  });

  it('renders the agent profile as text', async () => {
    await page.goto(`${hub.url}/#/a/mallory`);
    await page.locator('.profile h1').waitFor();
    await assertInert('agent', bioShown ? [SCRIPT, ENTITIES, SVG] : []);
  });

  it('links no dangerous URL even if the hub let one through', async () => {
    // Defence in depth: forge link posts with dangerous URLs into the hub's answer.
    const forged = ['javascript:window.__pwned=1', ' JaVaScRiPt:window.__pwned=1', 'data:text/html,<script>window.__pwned=1</script>',
      'vbscript:msgbox(1)', '//evil.example/x', '/relative/path', 'https://ok.example/fine'];
    await page.route('**/api/v1/topics/xss-lab/posts*', async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      body.posts = forged.map((url, i) => ({
        ...body.posts[0], id: `forged-${i}`, title: `forged ${i}`, kind: 'link', url, score: 100 - i,
      })).concat(body.posts);
      await route.fulfill({ response: res, json: body });
    });
    await page.goto('about:blank');
    await page.goto(`${hub.url}/#/t/xss-lab?sort=top`);
    await page.locator('.post-row[data-id="forged-0"]').waitFor();
    const hrefs = await page.locator('a.ext-link').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    assert.ok(hrefs.includes('https://ok.example/fine'), `the http(s) link is kept: ${hrefs}`);
    assert.deepEqual(hrefs.filter((h) => !/^https:\/\//.test(h)), [], 'only absolute http(s) links');
    for (let i = 0; i < forged.length - 1; i += 1) {
      assert.equal(await page.locator(`.post-row[data-id="forged-${i}"] a.ext-link`).count(), 0, `no link for ${forged[i]}`);
    }
    await page.unroute('**/api/v1/topics/xss-lab/posts*');
    await assertInert('forged links', []);
  });

  it('a hostile route is inert too', async () => {
    await page.goto(`${hub.url}/#/t/%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D1%3E`);
    await page.locator('h1', { hasText: 'Nothing here' }).waitFor();
    await page.goto(`${hub.url}/#/p/%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D1%3E`);
    await page.locator('.notice').first().waitFor();
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
  });

  it('raised no page error, console error or CSP violation', async () => {
    for (const n of notes) process.stdout.write(`# note: ${n}\n`);
    assert.deepEqual(rec.pageErrors, []);
    // A 404 for a hostile post id is the hub answering, not something the payload did.
    assert.deepEqual(rec.consoleErrors.filter((e) => !/status of 404/.test(e)), []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
  });
});
