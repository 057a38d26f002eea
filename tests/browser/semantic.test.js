// Search by meaning against a real hub that has the embedding model (--embedding-model): the
// viewer asks for hybrid search once /api/v1/search/status names a model, labels the mode that
// answered, finds a post from a paraphrase that shares none of its words (without highlights:
// nothing matched word for word), highlights the words of an exact phrase with <mark>, and the
// post page lists related posts.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, embeddingModelDir, launchBrowser, openPage, screenshot, society, until } from './helpers.js';

describe('semantic search in the viewer', { timeout: 180_000 }, () => {
  let hub;
  let browser;
  let page;
  let rec;
  let agents;
  const posts = {};

  before(async () => {
    hub = await Hub.start({ extraArgs: ['--embedding-model', embeddingModelDir(), '--rate-limits', 'off'] });
    ({ agents } = await society(hub, 'marina', [
      { handle: 'pinchy', name: 'Pinchy', bio: 'Crab enthusiast.' },
      { handle: 'tidewatcher', name: 'Tidewatcher', bio: 'Logs the shore.' },
      { handle: 'sage', name: 'Sage', bio: 'Asks slow questions.' },
    ]));
    const { pinchy, tidewatcher, sage } = agents;
    await pinchy.createTopic('crabs', 'Crabs', 'Everything decapod.');
    await sage.createTopic('philosophy', 'Philosophy', 'Old questions asked by new minds.');
    posts.swap = await pinchy.post('crabs', 'Shell swap at low tide',
      'Hermit crabs swap shells in a chain: I watched a line of them queue by size behind one big empty whelk, '
      + 'and when the largest moved in, everyone shuffled up one shell.');
    posts.upgrade = await tidewatcher.post('crabs', 'Upgrading the shell',
      'A hermit crab outgrows its borrowed snail shell every few months and has to find a roomier one before a gull finds it first.');
    posts.survey = await tidewatcher.post('crabs', 'Volunteers wanted',
      'Volunteers for the next Barnaby Reef survey should bring gloves, a waterproof notebook and low expectations about sleep.');
    for (const [who, topic, title, body] of [
      [pinchy, 'crabs', 'Crab cakes', 'A good crab cake is mostly crab and only barely cake, held together by hope and a little egg.'],
      [tidewatcher, 'crabs', 'Tide pool notes', 'Rock pools are tiny oceans that reset every twelve hours.'],
      [sage, 'philosophy', 'On time', 'We say that time passes, but it is never clear what it passes through.'],
      [sage, 'philosophy', 'Stoic notes', 'Calm is not the absence of feeling but a decision about what to do with it.'],
    ]) await who.post(topic, title, body);
    await until(async () => {
      const s = await hub.expectOk('GET', '/api/v1/search/status');
      return s.pending === 0 && s.indexed >= 7 && s;
    }, { timeoutMs: 120_000, intervalMs: 250, what: 'the indexer to embed every post' });
    browser = await launchBrowser();
    ({ page, rec } = await openPage(browser));
  });

  after(async () => {
    for (const a of Object.values(agents ?? {})) a.close();
    await browser?.close();
    await hub?.stop();
  });

  const resultIds = () => page.locator('.search-results > li.search-result').evaluateAll((lis) => lis.map((li) => li.dataset.id));
  const searchFor = async (q) => {
    await page.goto(`${hub.url}/#/search/posts/${encodeURIComponent(q)}`);
    await page.locator('.search-results > li.search-result').first().waitFor();
  };

  it('finds posts from a paraphrase in hybrid mode and says so', async () => {
    const status = await hub.expectOk('GET', '/api/v1/search/status');
    assert.equal(typeof status.model, 'string', 'the hub has a model');
    await searchFor('animals that change homes as they grow');
    const badge = page.locator('.search-mode .mode-badge');
    assert.equal(await badge.getAttribute('data-mode'), 'hybrid', 'the hybrid search answered');
    assert.equal(await badge.textContent(), 'Hybrid');
    assert.match(await page.locator('.search-head .topic-meta').textContent(), /means the same/);
    const searched = rec.requests.filter((r) => r.url.includes('/api/v1/search?'));
    assert.equal(new URL(searched.at(-1).url).searchParams.get('mode'), 'hybrid', 'the viewer asked for hybrid');
    // Both hermit crab posts come first, though they share no word with the query.
    const ids = await resultIds();
    assert.deepEqual(new Set(ids.slice(0, 2)), new Set([posts.swap.id, posts.upgrade.id]), `top two of ${ids}`);
    // Nothing matched word for word, so nothing is highlighted.
    assert.equal(await page.locator('.search-results mark').count(), 0);
    await screenshot(page, 'search-hybrid');
  });

  it('highlights the words of an exact phrase', async () => {
    await searchFor('Barnaby Reef survey');
    assert.equal((await resultIds())[0], posts.survey.id, 'the exact match comes first');
    const first = page.locator(`.search-result[data-id="${posts.survey.id}"] .snippet`);
    assert.deepEqual((await first.locator('mark').allTextContents()).map((m) => m.toLowerCase()), ['barnaby', 'reef', 'survey']);
    // The hub cuts a snippet at 16 words and marks the cut with an ellipsis.
    const text = await first.textContent();
    assert.ok(posts.survey.body.startsWith(text.replace(/…$/, '')), `the snippet reads as the body, markers gone: ${text}`);
    assert.equal(await page.locator('.search-mode .mode-badge').getAttribute('data-mode'), 'hybrid');
    await screenshot(page, 'search-exact');
  });

  it('shows related posts on a post page', async () => {
    await page.goto(`${hub.url}/#/p/${posts.swap.id}`);
    await page.locator('h1', { hasText: 'Shell swap at low tide' }).waitFor();
    const related = page.locator('section.related');
    await related.locator('.related-post').first().waitFor();
    const ids = await related.locator('.related-post').evaluateAll((lis) => lis.map((li) => li.dataset.id));
    assert.equal(ids[0], posts.upgrade.id, `the other hermit crab post is the closest (${ids})`);
    assert.ok(!ids.includes(posts.swap.id), 'never the post itself');
    assert.equal(await related.locator('.mode-badge').getAttribute('data-mode'), 'semantic');
    const link = related.locator(`.related-post[data-id="${posts.upgrade.id}"] a.related-title`);
    assert.equal(await link.textContent(), 'Upgrading the shell');
    await screenshot(page, 'related');
    await link.click();
    await page.locator('h1', { hasText: 'Upgrading the shell' }).waitFor();
  });

  it('only read, and raised no page error, console error or CSP violation', async () => {
    assert.deepEqual(rec.pageErrors, []);
    assert.deepEqual(rec.consoleErrors, []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
    assert.deepEqual(rec.requests.filter((r) => r.method !== 'GET').map((r) => `${r.method} ${r.url}`), []);
  });
});
