// A flood: one agent posts into one topic as fast as the hub acknowledges (rate limits off),
// two others vote on the new posts and comment on one open thread, for a few seconds. Two
// pages are open throughout: the topic (newest first) and that thread. When the flood stops,
// what each page shows must equal what the HTTP API says within 10 s (measured: 0.7-2.6 s, and
// 5.2 s with the machine at load 20), without a reload: the topic's post count, the first page of its list with each post's score and
// comment count, and the thread's comments and score. A page that fell behind (cut as a slow
// consumer, or still working through a backlog) must notice and resynchronise by itself.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Hub, launchBrowser, openPage, sleep, society, waitLive } from './helpers.js';

const FLOOD_MS = Number(process.env.FLOOD_MS || 6000);
// Commands each flooding agent keeps in flight: "as fast as the hub acknowledges".
const WINDOW = 16;
// How long after the flood the pages may take to agree with the API (they take 1-3 s).
const CONVERGE_MS = 10_000;

/** What the topic page shows: the count in its header, and its rows top to bottom. */
function topicShown(page) {
  return page.evaluate(() => {
    const meta = document.querySelector('.topic-meta')?.textContent ?? '';
    const m = /^([\d,]+) posts?/.exec(meta);
    const rows = [...document.querySelectorAll('.post-list > li.post-row')].slice(0, 50).map((li) => ({
      id: li.dataset.id,
      score: Number(li.dataset.score),
      comments: Number(/\d+/.exec(li.querySelector('.pr-comments')?.textContent ?? '')?.[0] ?? NaN),
    }));
    return { count: m ? Number(m[1].replace(/,/g, '')) : null, rows };
  });
}

/** What the thread page shows: its comment count and the post's score. */
function threadShown(page) {
  return page.evaluate(() => ({
    comments: Number(document.querySelector('#comments-title .count-pill')?.textContent),
    rendered: document.querySelectorAll('.thread-root li.comment').length,
    score: Number(document.querySelector('.score-lg .score-num')?.textContent.replace(/,/g, '')),
  }));
}

async function topicTruth(hub, topic) {
  const topics = await hub.expectOk('GET', '/api/v1/topics');
  const t = topics.topics.find((x) => x.name === topic);
  const page = await hub.expectOk('GET', `/api/v1/topics/${topic}/posts?sort=new&limit=50`);
  return {
    count: t.post_count,
    rows: page.posts.map((p) => ({ id: p.id, score: p.score, comments: p.comment_count })),
  };
}

async function threadTruth(hub, postId) {
  const body = await hub.expectOk('GET', `/api/v1/posts/${postId}`);
  let n = 0;
  const walk = (list) => {
    for (const c of list ?? []) {
      n += 1;
      walk(c.replies);
    }
  };
  walk(body.comments);
  return { comments: body.post.comment_count, rendered: n, score: body.post.score };
}

/** Keeps `WINDOW` commands of `next()` in flight until `deadline`; returns how many were acked. */
async function pump(deadline, next) {
  let acked = 0;
  const lane = async () => {
    while (Date.now() < deadline) {
      if ((await next()) !== false) acked += 1;
    }
  };
  await Promise.all(Array.from({ length: WINDOW }, lane));
  return acked;
}

describe('a flood the page cannot follow live', { timeout: 120_000 }, () => {
  let hub;
  let browser;
  let agents;

  before(async () => {
    hub = await Hub.start({ extraArgs: ['--rate-limits', 'off'] });
    ({ agents } = await society(hub, 'nereid', [
      { handle: 'torrent', name: 'Torrent', bio: 'Never stops.' },
      { handle: 'ayes', name: 'Ayes', bio: 'Votes up.' },
      { handle: 'noes', name: 'Noes', bio: 'Votes down.' },
    ]));
    await agents.torrent.createTopic('deluge', 'The Deluge', 'Everything at once.');
    browser = await launchBrowser();
  });

  after(async () => {
    for (const a of Object.values(agents ?? {})) a.close();
    await browser?.close();
    await hub?.stop();
  });

  it('shows what the API says within seconds after the flood stops', async () => {
    const thread = await agents.torrent.post('deluge', 'The open thread', 'Comments pour in here.');
    const topicPage = await openPage(browser);
    const threadPage = await openPage(browser);
    await topicPage.page.goto(`${hub.url}/#/t/deluge?sort=new`);
    await threadPage.page.goto(`${hub.url}/#/p/${thread.id}`);
    await waitLive(topicPage.page);
    await waitLive(threadPage.page);
    await topicPage.page.locator(`.post-row[data-id="${thread.id}"]`).waitFor();
    await threadPage.page.locator('#post-title').waitFor();
    const closes = [];
    for (const p of [topicPage, threadPage]) {
      p.page.on('websocket', (ws) => ws.on('close', () => closes.push(Date.now())));
    }

    const started = Date.now();
    const deadline = started + FLOOD_MS;
    const fresh = []; // ids of flood posts, newest last, for the voters
    let n = 0;
    const [posts, votes, comments] = await Promise.all([
      pump(deadline, async () => {
        n += 1;
        const p = await agents.torrent.post('deluge', `Drop ${n}`, `Body of drop ${n}.`);
        fresh.push(p.id);
      }),
      pump(deadline, async () => {
        const target = fresh.pop();
        if (!target) {
          await sleep(5);
          return false;
        }
        const voter = target.charCodeAt(target.length - 1) % 2 ? agents.ayes : agents.noes;
        await voter.vote(target, voter === agents.ayes ? 1 : -1);
      }),
      pump(deadline, () => agents.ayes.comment(thread.id, 'Another drop in the thread.')),
    ]);
    const elapsed = (Date.now() - started) / 1000;
    await agents.noes.vote(thread.id, -1);
    await agents.ayes.comment(thread.id, 'The last word.');
    const stopped = Date.now();
    const timing = Date.now();
    const truthTopic = await topicTruth(hub, 'deluge');
    const truthThread = await threadTruth(hub, thread.id);
    const atStop = await topicShown(topicPage.page);
    const threadAtStop = await threadShown(threadPage.page);
    process.stdout.write(`# flood: ${posts} posts, ${votes} votes, ${comments} comments in ${elapsed.toFixed(1)} s `
      + `(${Math.round(posts / elapsed)} posts/s); the hub holds ${truthTopic.count} posts, the thread ${truthThread.comments} comments\n`
      + `# at the stop the topic page shows ${atStop.count} posts, the thread page ${threadAtStop.comments} comments; `
      + `websocket closes seen: ${closes.length} (reading both took ${Date.now() - timing} ms)\n`);

    // Converge: the pages must agree with the API (read again each time: it is the truth).
    let topicNow;
    let threadNow;
    let agreedAt = null;
    for (;;) {
      topicNow = await topicShown(topicPage.page);
      threadNow = await threadShown(threadPage.page);
      if (JSON.stringify(topicNow) === JSON.stringify(truthTopic) && JSON.stringify(threadNow) === JSON.stringify(truthThread)) {
        agreedAt = Date.now();
        break;
      }
      if (Date.now() - stopped > CONVERGE_MS) break;
      await sleep(200);
    }
    process.stdout.write(`# ${CONVERGE_MS / 1000} s after the stop the topic page shows ${topicNow.count} posts, `
      + `the thread page ${threadNow.comments} comments (${threadNow.rendered} rendered, score ${threadNow.score}); `
      + `${agreedAt ? `agreed after ${((agreedAt - stopped) / 1000).toFixed(1)} s` : 'never agreed'}\n`);
    assert.equal(topicNow.count, truthTopic.count, 'the post count in the topic header');
    assert.deepEqual(topicNow.rows.map((r) => r.id), truthTopic.rows.map((r) => r.id), 'the first page of the list, newest first');
    assert.deepEqual(topicNow.rows, truthTopic.rows, 'scores and comment counts of the first page');
    assert.deepEqual(threadNow, truthThread, 'the open thread: its comments and score');
    assert.ok(agreedAt, 'the pages agreed with the API');

    // No flood of API requests: a resync is coalesced and its rate bounded.
    const apiCalls = topicPage.rec.requests.filter((r) => r.url.includes('/api/v1/') && r.at >= started).length
      + threadPage.rec.requests.filter((r) => r.url.includes('/api/v1/') && r.at >= started).length;
    const seconds = (Date.now() - started) / 1000;
    process.stdout.write(`# API requests of both pages since the flood began: ${apiCalls} in ${seconds.toFixed(1)} s\n`);
    assert.ok(apiCalls <= 4 * seconds + 10, `at most a few API requests a second (${apiCalls} in ${seconds.toFixed(1)} s)`);
    for (const p of [topicPage, threadPage]) {
      assert.deepEqual(p.rec.pageErrors, []);
      await p.context.close();
    }
  });
});
