// The hub serves the viewer with a strict Content-Security-Policy and safe headers, and the
// page talks to nobody but its own origin.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, launchBrowser, openPage, society, waitLive } from './helpers.js';

function parseCsp(header) {
  const out = new Map();
  for (const part of header.split(';')) {
    const [name, ...values] = part.trim().split(/\s+/);
    if (name) out.set(name.toLowerCase(), values);
  }
  return out;
}

describe('CSP, headers and same-origin only', { timeout: 60_000 }, () => {
  let hub;
  let browser;
  let agents;
  let post;

  before(async () => {
    hub = await Hub.start();
    ({ agents } = await society(hub, 'olga', [
      { handle: 'nori', name: 'Nori', bio: 'Tests things.' },
      { handle: 'pike', name: 'Pike', bio: 'Also tests things.' },
    ]));
    post = await agents.nori.post('general', 'A link to elsewhere', 'The viewer must not fetch it.', { kind: 'link', url: 'https://example.org/page' });
    await agents.pike.comment(post.id, 'Noted.');
    browser = await launchBrowser();
  });

  after(async () => {
    for (const a of Object.values(agents ?? {})) a.close();
    await browser?.close();
    await hub?.stop();
  });

  it('serves / with a strict CSP and safe headers', async () => {
    const res = await fetch(`${hub.url}/`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    const header = res.headers.get('content-security-policy');
    assert.ok(header, 'a Content-Security-Policy header');
    assert.doesNotMatch(header, /unsafe-inline|unsafe-eval|unsafe-hashes|strict-dynamic/i);
    const csp = parseCsp(header);
    const scriptSrc = csp.get('script-src') ?? csp.get('default-src');
    assert.deepEqual(scriptSrc, ["'self'"], `script-src is 'self' only: ${header}`);
    const styleSrc = csp.get('style-src') ?? csp.get('default-src');
    assert.deepEqual(styleSrc, ["'self'"], `style-src is 'self' only: ${header}`);
    assert.deepEqual(csp.get('frame-ancestors'), ["'none'"], 'frame-ancestors none');
    assert.ok(csp.has('default-src'), 'a default-src');
    assert.ok(!(csp.get('default-src') ?? []).includes('*'), 'no wildcard default-src');
    const connect = csp.get('connect-src') ?? csp.get('default-src');
    for (const src of connect) {
      assert.ok(src === "'self'" || src.includes('127.0.0.1') || src.includes('localhost'), `connect-src stays on this host: ${src}`);
    }
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    const referrer = res.headers.get('referrer-policy');
    assert.ok(referrer, 'a Referrer-Policy header');
    assert.ok(['no-referrer', 'same-origin', 'strict-origin', 'strict-origin-when-cross-origin'].includes(referrer.trim()),
      `a strict Referrer-Policy: ${referrer}`);
  });

  it('serves the assets with the right types and nosniff', async () => {
    const files = [['/js/main.js', /javascript/], ['/js/views/post.js', /javascript/], ['/css/base.css', /^text\/css/],
      ['/css/narrow.css', /^text\/css/], ['/favicon.svg', /^image\/svg\+xml/]];
    for (const [file, type] of files) {
      const res = await fetch(`${hub.url}${file}`);
      assert.equal(res.status, 200, file);
      assert.match(res.headers.get('content-type') ?? '', type, file);
      assert.equal(res.headers.get('x-content-type-options'), 'nosniff', file);
      await res.arrayBuffer();
    }
  });

  it('makes no request to another origin, and violates no CSP rule', async () => {
    const { page, rec, context } = await openPage(browser);
    let documentHeaders = null;
    page.on('response', (r) => {
      if (r.url() === `${hub.url}/`) documentHeaders = r.headers();
    });
    await page.goto(`${hub.url}/`);
    await waitLive(page);
    await page.locator('.topic-card').first().waitFor();
    await page.goto(`${hub.url}/#/t/general`);
    await page.locator('.post-row a.ext-link').waitFor();
    await page.goto(`${hub.url}/#/p/${encodeURIComponent(post.id)}`);
    await page.locator('.c-body', { hasText: 'Noted.' }).waitFor();
    await page.goto(`${hub.url}/#/a/nori`);
    await page.locator('.profile h1').waitFor();
    await page.waitForTimeout(500);

    assert.ok(documentHeaders?.['content-security-policy'], 'the browser got the CSP header');
    const origin = new URL(hub.url).origin;
    const foreign = rec.requests.map((r) => r.url).filter((u) => new URL(u).origin !== origin);
    assert.deepEqual(foreign, [], 'every request stays on the hub origin');
    assert.ok(rec.websockets.length >= 1, 'the viewer opened its WebSocket');
    for (const ws of rec.websockets) assert.equal(new URL(ws).host, new URL(hub.url).host, `websocket on the same host: ${ws}`);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
    assert.deepEqual(rec.pageErrors, []);
    assert.deepEqual(rec.consoleErrors, []);
    await context.close();
  });
});
