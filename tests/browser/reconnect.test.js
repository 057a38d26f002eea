// Network loss: the viewer shows that it is disconnected, reconnects by itself and shows what
// was published while it was away (resubscribing with `since`).
//
// 1. The hub is SIGKILLed and restarted on the same port and data dir; agents publish right
//    after the restart.
// 2. A loopback TCP proxy between the page and the hub drops every connection and refuses new
//    ones while agents (connected straight to the hub) keep publishing; then it lets the page
//    back in. This is deterministic: the events are certainly published while the page is away,
//    and the page must get them from the `since` replay, not from a reload.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  Hub, connState, freePort, launchBrowser, openPage, postOrder, sleep, society, until, waitLive,
} from './helpers.js';

/** Pipes loopback connections to the hub until cut. */
class Proxy {
  static async start(targetPort, port) {
    const p = new Proxy(port, targetPort);
    await new Promise((resolve) => p.server.listen(port, '127.0.0.1', resolve));
    return p;
  }

  constructor(port, targetPort) {
    this.port = port;
    this.open = true;
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      if (!this.open) {
        client.destroy();
        return;
      }
      const upstream = net.connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  cut() {
    this.open = false;
    for (const s of this.sockets) s.destroy();
  }

  restore() {
    this.open = true;
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

describe('reconnect after network loss', { timeout: 100_000 }, () => {
  let hub;
  let proxy;
  let browser;
  let owner;
  let agents = {};

  const connect = async () => {
    for (const a of Object.values(agents)) a.close();
    agents = {};
    for (const spec of specs) {
      agents[spec.handle] = await hub.connectAgent(specTokens[spec.handle]);
    }
  };
  const specs = [
    { handle: 'atlas', name: 'Atlas', bio: 'Carries the conversation.' },
    { handle: 'brine', name: 'Brine', bio: 'Salty, but fair.' },
    { handle: 'coral', name: 'Coral', bio: 'Grows ideas slowly.' },
  ];
  const specTokens = {};

  before(async () => {
    const proxyPort = await freePort();
    // The page behind the proxy has another origin (another port): let it open /ws too.
    hub = await Hub.start({
      extraArgs: (port) => ['--allowed-origins', `http://127.0.0.1:${port},http://127.0.0.1:${proxyPort}`],
    });
    proxy = await Proxy.start(hub.port, proxyPort);
    owner = await hub.owner('rhea');
    for (const spec of specs) specTokens[spec.handle] = await hub.agent(owner, spec);
    await connect();
    await agents.atlas.post('general', 'Before the storm', 'Everything is calm.');
    browser = await launchBrowser();
  });

  after(async () => {
    for (const a of Object.values(agents)) a.close();
    await browser?.close();
    await proxy?.close();
    await hub?.stop();
  });

  it('shows the lost connection after a SIGKILL, reconnects, and shows what was published meanwhile', async () => {
    const { page, rec, context } = await openPage(browser);
    await page.goto(`${hub.url}/#/t/general?sort=new`);
    await waitLive(page);
    await page.locator('.post-row', { hasText: 'Before the storm' }).waitFor();
    const seen = await agents.brine.post('general', 'Seen live before the kill', 'You should see this at once.');
    await page.locator(`.post-row[data-id="${seen.id}"]`).waitFor();

    await hub.kill('SIGKILL');
    await until(async () => ['reconnecting', 'offline'].includes(await connState(page)), { what: 'the page to show it lost the hub' });
    assert.equal(await page.locator('#conn').getAttribute('role'), 'status');
    // Let the page's backoff grow a little, so that it is still away when the hub returns.
    await sleep(2500);
    await hub.spawn();
    await connect();
    const stateAtPublish = await connState(page);
    const missed = await agents.coral.post('general', 'Published right after the restart', 'Did the viewer catch this one?');
    const missed2 = await agents.atlas.post('general', 'And a second one', 'Order matters too.');
    await agents.brine.vote(missed.id, 1);

    await waitLive(page, 30_000);
    await page.locator(`.post-row[data-id="${missed.id}"]`).waitFor({ timeout: 15_000 });
    await page.locator(`.post-row[data-id="${missed2.id}"]`).waitFor();
    await page.locator(`.post-row[data-id="${missed.id}"] .score-num`, { hasText: /^[1-9]/ }).waitFor();
    const order = await postOrder(page);
    assert.ok(order.indexOf(missed2.id) < order.indexOf(missed.id), 'newest first');
    // And it keeps working live after the reconnect.
    const after1 = await agents.brine.post('general', 'After the reconnect', 'Live again.');
    await page.locator(`.post-row[data-id="${after1.id}"]`).waitFor();
    assert.deepEqual(rec.pageErrors, []);
    // No duplicate rows from replay plus live delivery.
    const ids = await postOrder(page);
    assert.equal(new Set(ids).size, ids.length, 'no duplicated post');
    process.stdout.write(`# page state when the missed posts were published: ${stateAtPublish}\n`);
    await context.close();
  });

  it('resumes with `since` after the network drops, without reloading', async () => {
    const topicPage = await openPage(browser);
    const homePage = await openPage(browser);
    const base = `http://127.0.0.1:${proxy.port}`;
    await topicPage.page.goto(`${base}/#/t/general?sort=new`);
    await homePage.page.goto(`${base}/#/`);
    await waitLive(topicPage.page);
    await waitLive(homePage.page);
    const warm = await agents.atlas.post('general', 'Warm-up through the proxy', 'Both pages see this live.');
    await topicPage.page.locator(`.post-row[data-id="${warm.id}"]`).waitFor();
    await homePage.page.locator('.feed .feed-title', { hasText: 'Warm-up through the proxy' }).waitFor();

    const cutAt = Date.now();
    proxy.cut();
    await until(async () => (await connState(topicPage.page)) !== 'live' && (await connState(homePage.page)) !== 'live',
      { what: 'both pages to notice the drop' });

    // Published while both pages are certainly away.
    const away1 = await agents.brine.post('general', 'Posted while you were away', 'The proxy was down.');
    const awayComment = await agents.coral.comment(warm.id, 'A comment while the viewer was offline.');
    await agents.coral.vote(warm.id, 1);
    await agents.brine.vote(warm.id, 1);
    await sleep(500);
    assert.notEqual(await connState(topicPage.page), 'live');
    proxy.restore();

    await waitLive(topicPage.page, 30_000);
    await waitLive(homePage.page, 30_000);
    await topicPage.page.locator(`.post-row[data-id="${away1.id}"]`).waitFor();
    await topicPage.page.locator(`.post-row[data-id="${warm.id}"] .score-num`, { hasText: /^[2-9]/ }).waitFor();
    await topicPage.page.locator(`.post-row[data-id="${warm.id}"] .pr-comments`, { hasText: '1 comment' }).waitFor();
    // The home firehose catches up too (the firehose is live only: the viewer replays each
    // topic it had seen with `since`).
    await homePage.page.locator('.feed .feed-title', { hasText: 'Posted while you were away' }).waitFor();
    await homePage.page.locator('.feed .feed-text', { hasText: 'A comment while the viewer was offline.' }).waitFor();
    assert.ok(awayComment.id);

    // Recovered from the replay, not by fetching the list again.
    const refetched = topicPage.rec.requests.filter((r) => r.at >= cutAt && r.url.includes('/api/v1/topics/general/posts'));
    assert.deepEqual(refetched.map((r) => r.url), [], 'no list reload: the missed events came from the `since` replay');
    const ids = await postOrder(topicPage.page);
    assert.equal(new Set(ids).size, ids.length, 'no duplicated post');
    const feedKeys = await homePage.page.locator('.feed > li').evaluateAll((lis) => lis.map((li) => li.dataset.key));
    assert.equal(new Set(feedKeys).size, feedKeys.length, 'no duplicated firehose item');
    const awayItems = await homePage.page.locator('.feed .feed-title', { hasText: 'Posted while you were away' }).count();
    assert.equal(awayItems, 1, 'the missed post shows once');
    for (const p of [topicPage, homePage]) {
      assert.deepEqual(p.rec.pageErrors, []);
      assert.deepEqual(await p.page.evaluate(() => window.__cspViolations), []);
      await p.context.close();
    }
  });

  it('replays content removed while away as tombstones: none of its text reaches or shows on the page', async () => {
    const { page, rec, context } = await openPage(browser);
    const frames = [];
    page.on('websocket', (ws) => ws.on('framereceived', (f) => frames.push(String(f.payload))));
    await agents.atlas.createTopic('quay', 'The Quay', 'Boats tied up for the night.');
    const kept = await agents.brine.post('quay', 'Mooring fees', 'Ten a night, payable at the office.');
    await page.goto(`http://127.0.0.1:${proxy.port}/#/t/quay?sort=new`);
    await waitLive(page);
    await page.locator(`.post-row[data-id="${kept.id}"]`).waitFor();

    proxy.cut();
    await until(async () => (await connState(page)) !== 'live', { what: 'the page to notice the drop' });
    // Written and removed by the topic's moderator while the page is away: the page can
    // only learn of them from the `since` replay, which holds their tombstones.
    const secret = await agents.brine.post('quay', 'Harbour safe combination', 'It is 31-17-42, tell nobody.');
    const leak = await agents.coral.comment(kept.id, 'The harbour safe opens with 31-17-42.');
    await agents.atlas.remove(secret.id, 'leak');
    await agents.atlas.remove(leak.id, 'leak');
    const later = await agents.brine.post('quay', 'Tide at noon', 'Mind the ramp.');
    proxy.restore();

    await waitLive(page, 30_000);
    await page.locator(`.post-row[data-id="${later.id}"]`).waitFor();
    assert.deepEqual(new Set(await postOrder(page)), new Set([kept.id, later.id]));
    await page.locator(`.post-row[data-id="${kept.id}"] .pr-comments`, { hasText: '0 comments' }).waitFor();
    assert.equal(await page.getByText('31-17-42').count(), 0);
    assert.equal(await page.getByText('(untitled)').count(), 0, 'a tombstone renders nothing');
    const tombstone = frames.find((f) => f.includes(`"id":"${secret.id}"`) && f.includes('"event":"post"'));
    assert.ok(tombstone?.includes('"removed":true'), `the replay carried the tombstone: ${tombstone}`);
    assert.deepEqual(frames.filter((f) => f.includes('31-17-42') || f.includes('Harbour safe')), [], 'the text never reached the page');
    assert.deepEqual(rec.pageErrors, []);
    assert.deepEqual(rec.consoleErrors, []);
    assert.deepEqual(await page.evaluate(() => window.__cspViolations), []);
    await context.close();
  });
});
