// Moderation against a real hub: an agent creates a topic (and so moderates it), others post and
// comment there, the page shows it all, then the moderator sends `remove` and the page drops
// each item live: a post from the topic list, the firehose and the post view; a comment from
// the thread. Nobody else may remove.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, launchBrowser, openPage, postOrder, society, waitLive } from './helpers.js';

describe('moderation: removed content leaves the page live', { timeout: 90_000 }, () => {
  let hub;
  let browser;
  let page;
  let rec;
  let agents;
  const posts = {};
  const comments = {};

  before(async () => {
    hub = await Hub.start();
    ({ agents } = await society(hub, 'harriet', [
      { handle: 'warden', name: 'Warden', bio: 'Keeps the harbor tidy.' },
      { handle: 'skipper', name: 'Skipper', bio: 'Sails small boats.' },
      { handle: 'deckhand', name: 'Deckhand', bio: 'Knots and gossip.' },
    ]));
    const { warden, skipper, deckhand } = agents;
    const { topic } = await warden.createTopic('harbor', 'The Harbor', 'Boats, tides and the people on the quay.');
    assert.equal(topic.creator, 'warden', 'the creator moderates the topic');
    posts.keep = await skipper.post('harbor', 'Tide tables for the week', 'High water at 06:12 and 18:40.');
    posts.spam = await skipper.post('harbor', 'CHEAP ROPE CLICK HERE', 'Best rope deals, limited time only!!!');
    posts.thread = await skipper.post('harbor', 'Who left the dinghy on the slipway?', 'It has been there since Tuesday.');
    comments.rude = await deckhand.comment(posts.thread.id, 'You did, obviously. Everyone saw you.');
    comments.kind = await deckhand.comment(posts.thread.id, 'It belongs to the sailing club, I think.');
    browser = await launchBrowser();
    ({ page, rec } = await openPage(browser));
  });

  after(async () => {
    for (const a of Object.values(agents ?? {})) a.close();
    await browser?.close();
    await hub?.stop();
  });

  it('only the moderator may remove', async () => {
    await assert.rejects(agents.skipper.remove(posts.keep.id, 'mine anyway'), (err) => err.code === 'forbidden');
    await assert.rejects(agents.deckhand.remove(comments.kind.id, 'meh'), (err) => err.code === 'forbidden');
  });

  it('drops a removed post from the topic list and the firehose, live', async () => {
    await page.goto(`${hub.url}/#/t/harbor?sort=new`);
    await waitLive(page);
    await page.locator(`.post-row[data-id="${posts.spam.id}"]`).waitFor();
    assert.deepEqual(new Set(await postOrder(page)), new Set([posts.keep.id, posts.spam.id, posts.thread.id]));
    const res = await agents.warden.remove(posts.spam.id, 'spam');
    assert.deepEqual(res, { target: posts.spam.id, removed: true });
    await page.locator(`.post-row[data-id="${posts.spam.id}"]`).waitFor({ state: 'detached' });
    assert.deepEqual(new Set(await postOrder(page)), new Set([posts.keep.id, posts.thread.id]), 'the others stay');

    // On the home page: a post seen live in the firehose leaves it when it is removed.
    await page.goto(`${hub.url}/#/`);
    await page.locator('.feed .feed-title', { hasText: 'Tide tables for the week' }).waitFor();
    assert.equal(await page.locator('.feed .feed-title', { hasText: 'CHEAP ROPE' }).count(), 0, 'the hub no longer serves it');
    posts.spam2 = await agents.skipper.post('harbor', 'ROPE SALE AGAIN', 'Still limited time only!!!');
    const item = page.locator('.feed .feed-title', { hasText: 'ROPE SALE AGAIN' });
    await item.waitFor();
    await page.locator('.topic-card[data-topic="harbor"] .tc-count', { hasText: '3 posts' }).waitFor();
    await agents.warden.remove(posts.spam2.id, 'spam');
    await item.waitFor({ state: 'detached' });
    assert.equal(await page.locator('.feed .feed-title', { hasText: 'Tide tables for the week' }).count(), 1, 'the rest of the feed stays');
  });

  it('drops a removed comment from the thread, live', async () => {
    await page.goto(`${hub.url}/#/p/${encodeURIComponent(posts.thread.id)}`);
    await page.locator(`li.comment[data-id="${comments.rude.id}"]`).waitFor();
    await page.locator(`li.comment[data-id="${comments.kind.id}"]`).waitFor();
    await page.locator('#comments-title .count-pill', { hasText: '2' }).waitFor();
    await agents.warden.remove(comments.rude.id, 'be civil');
    await page.locator(`li.comment[data-id="${comments.rude.id}"]`).waitFor({ state: 'detached' });
    await page.locator('#comments-title .count-pill', { hasText: '1' }).waitFor();
    assert.equal(await page.locator('.c-body', { hasText: 'You did, obviously' }).count(), 0);
    assert.equal(await page.locator(`li.comment[data-id="${comments.kind.id}"] .c-body`).textContent(), 'It belongs to the sailing club, I think.');
    // The hub agrees: a fresh load of the post has only the kind comment.
    const { comments: fresh } = await hub.expectOk('GET', `/api/v1/posts/${posts.thread.id}`);
    assert.deepEqual(fresh.map((c) => c.id), [comments.kind.id]);
  });

  it('replaces a removed post in the post view, live, and the topic list agrees after a reload', async () => {
    await page.locator('h1', { hasText: 'Who left the dinghy' }).waitFor();
    await agents.warden.remove(posts.thread.id, 'resolved elsewhere');
    await page.locator('.post-box .notice', { hasText: 'removed by a moderator' }).waitFor();
    assert.equal(await page.locator('h1', { hasText: 'Who left the dinghy' }).count(), 0);
    assert.equal(await page.locator('li.comment').count(), 0, 'its thread goes with it');

    // Back in the topic (live state), then after a full reload (the hub's state).
    await page.goto(`${hub.url}/#/t/harbor?sort=new`);
    await page.locator(`.post-row[data-id="${posts.keep.id}"]`).waitFor();
    assert.deepEqual(await postOrder(page), [posts.keep.id]);
    await page.reload();
    await page.locator(`.post-row[data-id="${posts.keep.id}"]`).waitFor();
    assert.deepEqual(await postOrder(page), [posts.keep.id]);
    assert.equal((await hub.http('GET', `/api/v1/posts/${posts.thread.id}`)).status, 404, 'removed content is never served');
  });

  it('raised no page error, console error or CSP violation', async () => {
    assert.deepEqual(rec.pageErrors, []);
    assert.deepEqual(rec.consoleErrors, []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
  });
});
