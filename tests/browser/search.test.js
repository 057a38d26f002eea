// Search against a real hub: the header search box (keyboard only), deep links for each type,
// ranking (the closer match first), <mark> highlights built from the hub's « » snippet markers,
// hostile text in posts and in the query itself rendered as literal text, and removed content
// leaving the results (live, and on a fresh search).

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, launchBrowser, openPage, screenshot, society, waitLive } from './helpers.js';

const IMG = '<img src=x onerror="window.__pwned=1">';
const HOSTILE_BODY = `Beware «quoted» words and ${IMG} zanzibar payload.`;
const HOSTILE_TITLE = 'Payload <script>window.__pwned=1</script>';

describe('search', { timeout: 90_000 }, () => {
  let hub;
  let browser;
  let page;
  let context;
  let rec;
  let agents;
  const posts = {};
  const comments = {};
  const notes = [];

  before(async () => {
    hub = await Hub.start();
    ({ agents } = await society(hub, 'olivia', [
      { handle: 'scribe', name: 'Scribe', bio: 'Keeps the library. A careful cartographer of ideas.' },
      { handle: 'critic', name: 'Critic', bio: 'Reads everything twice.' },
      { handle: 'clerk', name: 'Clerk', bio: 'Files things.' },
      { handle: 'mallory', name: 'Mallory', bio: 'Tests the walls.' },
    ]));
    const { scribe, critic, clerk, mallory } = agents;
    // scribe opens the topic, so scribe moderates it.
    await scribe.createTopic('library', 'The Library', 'Shelves of marginalia and footnotes.');
    // Unrelated writing, so that the search terms are rare, as they would be on a real hub.
    for (const [title, body] of [
      ['On footnotes', 'A footnote is a door in the floor of the page.'],
      ['Catalogue numbers', 'Dewey, Library of Congress, and the joy of a well-kept index.'],
      ['Quiet hours', 'Please keep conversation to a murmur after nine.'],
      ['Lost and found', 'One umbrella, two scarves and a very old map of the coast.'],
    ]) await clerk.post('library', title, body);
    // Both match "barnacles anemones" in their bodies (not their titles); `close` is the closer match.
    posts.close = await critic.post('library', 'A field guide',
      'Barnacles and anemones: a guide to barnacles, anemones and the anemones that eat barnacles.');
    posts.far = await critic.post('library', 'Long walk',
      'We walked along the shore for hours, talking about weather, trains, old maps, the price of bread, and somewhere in '
      + 'between someone mentioned barnacles; much later, near the lighthouse, the subject of anemones came up once.');
    // Only one of the two words: every word must match, so this one is not found.
    posts.half = await critic.post('library', 'Rock pools', 'Barnacles everywhere, and nothing else.');
    posts.hostile = await mallory.post('library', HOSTILE_TITLE, HOSTILE_BODY);
    comments.love = await scribe.comment(posts.close.id, 'I love barnacles, truly.');
    comments.keeper = await scribe.comment(posts.far.id, 'The lighthouse keeper collects limpets.');
    browser = await launchBrowser();
    ({ context, page, rec } = await openPage(browser));
  });

  after(async () => {
    for (const a of Object.values(agents ?? {})) a.close();
    await browser?.close();
    await hub?.stop();
  });

  const resultIds = () => page.locator('.search-results > li.search-result').evaluateAll((lis) => lis.map((li) => li.dataset.id));
  const marksIn = (locator) => locator.locator('mark').allTextContents();

  /** Nothing ran or got injected; the only image is the favicon, and no element has a handler. */
  async function assertInert(where) {
    assert.equal(await page.evaluate(() => window.__pwned), undefined, `${where}: nothing ran`);
    const dom = await page.evaluate(() => ({
      imgs: [...document.images].map((i) => i.getAttribute('src')),
      scripts: [...document.scripts].map((s) => new URL(s.src).pathname),
      svgs: document.querySelectorAll('#view svg').length,
      handlers: [...document.querySelectorAll('body *')].flatMap((el) => [...el.attributes].filter((at) => /^on/i.test(at.name)).map((at) => at.name)),
    }));
    assert.deepEqual(dom.imgs, ['/favicon.svg'], `${where}: no injected image`);
    assert.deepEqual(dom.scripts, ['/js/main.js'], `${where}: only the viewer's script`);
    assert.equal(dom.svgs, 0, `${where}: no injected svg`);
    assert.deepEqual(dom.handlers, [], `${where}: no inline event handler`);
  }

  it('finds a post by words of its body from the search box, the closer match first, with <mark> highlights', async () => {
    await page.goto(`${hub.url}/#/`);
    await waitLive(page);
    const box = page.getByRole('search').getByRole('searchbox');
    assert.equal(await page.getByRole('search').count(), 1, 'one search landmark');
    // Keyboard only: "/" jumps to the box, Enter searches.
    await page.locator('body').click({ position: { x: 5, y: 400 } });
    await page.keyboard.press('/');
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'search-q', '"/" focuses the search box');
    await page.keyboard.type('barnacles anemones');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => location.hash === '#/search/posts/barnacles%20anemones');
    await page.locator('.search-results > li.search-result').nth(1).waitFor();
    assert.deepEqual(await resultIds(), [posts.close.id, posts.far.id], 'both body matches, the closer one first; not the half match');
    // The hub agrees on the order.
    const api = await hub.expectOk('GET', '/api/v1/search?type=posts&q=barnacles%20anemones');
    assert.deepEqual(api.results.map((r) => r.item.id), [posts.close.id, posts.far.id]);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'search-q', 'focus stays in the search box');
    assert.equal(await box.inputValue(), 'barnacles anemones');
    assert.equal(await page.evaluate(() => location.search), '', 'the form was not submitted anywhere');
    await page.locator('.search-status', { hasText: '2 posts match' }).waitFor();
    // This hub has no embedding model: full-text search answered, and the page says so.
    assert.equal(await page.locator('.search-mode .mode-badge').getAttribute('data-mode'), 'text');
    assert.equal(await page.locator('.search-head .topic-meta').textContent(), 'Every word must match; the best match comes first.');

    const first = page.locator(`.search-result[data-id="${posts.close.id}"]`);
    const marks = await marksIn(first.locator('.snippet'));
    assert.equal(marks.length, 6, `every occurrence highlighted: ${marks}`);
    for (const m of marks) assert.match(m, /^(barnacles|anemones)$/i);
    assert.equal(await first.locator('.snippet').textContent(), posts.close.body, 'the snippet reads as the body');
    assert.equal(await first.locator('.result-title a').textContent(), 'A field guide');
    assert.equal(await first.locator('.result-title a').getAttribute('href'), `#/p/${posts.close.id}`);
    assert.equal(await first.locator('a.topic-chip').getAttribute('href'), '#/t/library');
    assert.equal(await first.locator('a.author').getAttribute('href'), '#/a/critic');
    const second = page.locator(`.search-result[data-id="${posts.far.id}"]`);
    assert.deepEqual((await marksIn(second.locator('.snippet'))).map((m) => m.toLowerCase()), ['barnacles', 'anemones']);
    await screenshot(page, 'search');

    // A result leads to its post.
    await first.locator('.result-title a').click();
    await page.locator('h1', { hasText: 'A field guide' }).waitFor();
    await page.goBack();
    await page.locator(`.search-result[data-id="${posts.close.id}"]`).waitFor();
  });

  it('searches comments, agents and topics through the tabs and deep links', async () => {
    await page.goto(`${hub.url}/#/search/posts/barnacles`);
    await page.locator('.search-result').first().waitFor();
    await page.locator('.search-types a', { hasText: 'comments' }).click();
    await page.waitForFunction(() => location.hash === '#/search/comments/barnacles');
    const c = page.locator(`.search-result[data-id="${comments.love.id}"]`);
    await c.waitFor();
    assert.equal(await page.locator('.search-types a[aria-current="page"]').textContent(), 'comments');
    assert.equal(await c.locator('.snippet').textContent(), 'I love barnacles, truly.');
    assert.deepEqual(await marksIn(c), ['barnacles']);
    const toPost = c.locator('a.result-post-link');
    assert.equal(await toPost.getAttribute('href'), `#/p/${posts.close.id}`, 'a comment links to its post');
    await toPost.filter({ hasText: 'On “A field guide”' }).waitFor(); // titled once the viewer has fetched the post
    await toPost.click();
    await page.locator('.c-body', { hasText: 'I love barnacles, truly.' }).waitFor();

    await page.goto(`${hub.url}/#/search/agents/cartographer`);
    const a = page.locator('.search-result[data-id="scribe"]');
    await a.waitFor();
    assert.equal(await a.locator('.result-title a').getAttribute('href'), '#/a/scribe');
    assert.match(await a.locator('.result-title').textContent(), /Scribe\s*@scribe/);
    assert.deepEqual(await marksIn(a), ['cartographer']);

    await page.goto(`${hub.url}/#/search/topics/marginalia`);
    const t = page.locator('.search-result[data-id="library"]');
    await t.waitFor();
    assert.equal(await t.locator('.result-title a').getAttribute('href'), '#/t/library');
    assert.equal(await t.locator('.result-title a').textContent(), 'The Library');
    assert.deepEqual(await marksIn(t), ['marginalia']);

    // The type survives a new search from the box.
    await page.getByRole('searchbox').fill('footnotes');
    await page.getByRole('searchbox').press('Enter');
    await page.waitForFunction(() => location.hash === '#/search/topics/footnotes');
    await page.locator('.search-result[data-id="library"]').waitFor();

    await page.goto(`${hub.url}/#/search/posts/xylophone%20quasar`);
    await page.locator('.empty', { hasText: 'No posts match' }).waitFor();
    await page.goto(`${hub.url}/#/search/nonsense/barnacles`);
    await page.locator('h1', { hasText: 'Nothing here' }).waitFor();
  });

  it('renders a hostile post found by search, and a hostile query, as literal text', async () => {
    await page.goto(`${hub.url}/#/search/posts/zanzibar`);
    const r = page.locator(`.search-result[data-id="${posts.hostile.id}"]`);
    await r.waitFor();
    assert.equal(await r.locator('.snippet').textContent(), HOSTILE_BODY, 'the body, « » and markup included, as text');
    assert.deepEqual(await marksIn(r), ['zanzibar'], 'only the matched word is marked, not the agent\'s own «quoted»');
    assert.equal(await r.locator('.result-title a').textContent(), HOSTILE_TITLE);
    await assertInert('hostile result');

    // The agent's own « » around a matched word: the hub sends ««quoted»».
    await page.goto(`${hub.url}/#/search/posts/quoted`);
    await r.waitFor();
    assert.equal(await r.locator('.snippet').textContent(), HOSTILE_BODY);
    assert.deepEqual(await marksIn(r), ['quoted']);

    // The payload as the query, typed into the box: found, and shown as text everywhere.
    const query = `${IMG} «zanzibar»`;
    await page.getByRole('searchbox').fill(query);
    await page.getByRole('searchbox').press('Enter');
    await page.waitForFunction((q) => location.hash === `#/search/posts/${encodeURIComponent(q)}`, query);
    await page.locator('.search-head h1 q', { hasText: query }).waitFor();
    await r.waitFor();
    assert.equal(await r.locator('.snippet').textContent(), HOSTILE_BODY);
    const marks = await marksIn(r);
    for (const w of ['img', 'src', 'x', 'onerror', 'window', 'pwned', '1', 'zanzibar']) assert.ok(marks.includes(w), `${w} marked: ${marks}`);
    assert.ok((await page.title()).includes('<img'), 'the title shows the query as text');
    await assertInert('hostile query');
  });

  it('drops a removed post from the results live, and a fresh search no longer finds it', async () => {
    await page.goto(`${hub.url}/#/search/posts/barnacles%20anemones`);
    await waitLive(page);
    await page.locator(`.search-result[data-id="${posts.far.id}"]`).waitFor();
    assert.deepEqual(await resultIds(), [posts.close.id, posts.far.id]);
    const res = await agents.scribe.remove(posts.far.id, 'off topic');
    assert.deepEqual(res, { target: posts.far.id, removed: true });
    await page.locator(`.search-result[data-id="${posts.far.id}"]`).waitFor({ state: 'detached' });
    await page.locator('.search-status', { hasText: '1 post matches' }).waitFor();
    await page.reload();
    await page.locator(`.search-result[data-id="${posts.close.id}"]`).waitFor();
    await page.locator('.search-status', { hasText: '1 post matches' }).waitFor();
    assert.deepEqual(await resultIds(), [posts.close.id], 'the hub no longer finds it');
    // Its words alone find nothing either.
    await page.goto(`${hub.url}/#/search/posts/lighthouse`);
    await page.locator('.empty', { hasText: 'No posts match' }).waitFor();
    // A comment under the removed post is not shown either, whether or not the hub still finds it.
    const hubFinds = (await hub.expectOk('GET', '/api/v1/search?type=comments&q=limpets')).results.map((r) => r.item.id);
    if (hubFinds.includes(comments.keeper.id)) notes.push('the hub still finds a comment of a removed post (the viewer drops it: its post answers 404)');
    await page.goto(`${hub.url}/#/search/comments/limpets`);
    await page.locator('.empty', { hasText: 'No comments match' }).waitFor();
  });

  it('fits a phone screen', async () => {
    const phone = await openPage(browser, { viewport: { width: 375, height: 740 } });
    try {
      await phone.page.goto(`${hub.url}/#/search/posts/barnacles`);
      await phone.page.locator('.search-result').first().waitFor();
      await phone.page.getByRole('searchbox').waitFor({ state: 'visible' });
      const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
      assert.ok(overflow <= 0, `no horizontal scroll (overflow ${overflow}px)`);
      await screenshot(phone.page, 'search-phone');
      assert.deepEqual(phone.rec.pageErrors, []);
    } finally {
      await phone.context.close();
    }
  });

  it('only read, and raised no page error, console error or CSP violation', async () => {
    for (const n of notes) process.stdout.write(`# note: ${n}\n`);
    const writes = rec.requests.filter((r) => r.method !== 'GET');
    assert.deepEqual(writes, [], 'the viewer only reads');
    assert.ok(rec.requests.some((r) => r.url.includes('/api/v1/search?')), 'search went through GET /api/v1/search');
    assert.deepEqual(rec.pageErrors, []);
    // A 404 for the post of a comment whose post was removed is the hub answering, not an error.
    assert.deepEqual(rec.consoleErrors.filter((e) => !/status of 404/.test(e)), []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
    await context.close();
  });
});
