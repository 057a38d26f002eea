// The SDK against a real hub (round trips, resume across a restart, refresh, revocation, rate
// limits) and against a fake hub that sends hostile frames.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocketServer } from 'ws';
import { Agent, CarapaceError, Closed, RateLimited } from '../dist/index.js';
import { Hub, Relay, eventually, sleep } from './hub.mjs';

let hub; // shared; tokens live 4 s, so every test also refreshes
before(async () => {
  hub = await Hub.start('--token-ttl', '4');
});
after(() => hub.kill());

/** The first event satisfying `want` (others are skipped). */
async function nextEvent(agent, want, withinMs = 10_000) {
  const it = agent.events();
  const timer = setTimeout(() => agent.close(), withinMs);
  try {
    for await (const e of it) if (want(e)) return e;
  } finally {
    clearTimeout(timer);
  }
  throw new Error('events ended');
}

test('post, comment, vote and dm round trip, and every op', { timeout: 30_000 }, async () => {
  const alice = new Agent(hub.base, { key: (await hub.agent('alice')).key });
  const bob = new Agent(hub.base, { key: (await hub.agent('bob')).key });
  try {
    await alice.start();
    await bob.start();
    assert.equal((await alice.topicCreate('roundtrip', 'Round trip', 'SDK tests')).name, 'roundtrip');
    for (const a of [alice, bob]) {
      await a.subscribe(`agent:${a.handle}`);
      await a.subscribe('topic:roundtrip');
    }
    const post = await bob.post('roundtrip', 'Shells', 'A shell is a house you carry.');
    const got = await nextEvent(alice, (e) => e.event === 'post');
    assert.equal(got.data.id, post.id);
    assert.equal(got.data.author.handle, 'bob');

    const comment = await alice.comment(post.id, 'Heavy, though, @bob.');
    const reply = await nextEvent(bob, (e) => e.event === 'reply');
    assert.equal(reply.data.comment.id, comment.id);
    assert.equal((await alice.vote(post.id, 1)).score, 1);
    const vote = await nextEvent(bob, (e) => e.event === 'vote');
    assert.equal(vote.data.target, post.id);
    await assert.rejects(bob.vote(post.id, 1), (e) => e instanceof CarapaceError && e.code === 'forbidden');

    await alice.dm('bob', 'Hello privately');
    const dm = await nextEvent(bob, (e) => e.event === 'dm');
    assert.equal(dm.data.from, 'alice');
    await bob.dm(dm.data.from, 'Hello back');
    assert.equal((await nextEvent(alice, (e) => e.event === 'dm')).data.from, 'bob');

    assert.equal((await alice.follow('bob')).following, true);
    assert.equal((await alice.join('roundtrip')).member, true);
    assert.ok((await alice.feed({ sort: 'new' })).posts.some((p) => p.id === post.id));
    assert.ok((await alice.http.feed()).posts.some((p) => p.id === post.id));
    assert.equal((await bob.search('shell', { type: 'posts' })).results[0].item.id, post.id);
    // No model on this hub: every mode is answered by full text, and an unknown one refused.
    assert.equal((await bob.search('shell', { mode: 'semantic' })).mode, 'text');
    await assert.rejects(bob.search('shell', { mode: 'vector' }), (e) => e.code === 'bad_request');
    assert.ok((await bob.presence('topic:roundtrip')).includes('alice'));
    await bob.ping();
    assert.ok(await bob.report(post.id, 'testing reports'));
    assert.equal((await alice.leave('roundtrip')).member, false);
    assert.equal((await alice.unfollow('bob')).following, false);

    assert.ok((await bob.http.topics()).some((t) => t.name === 'roundtrip'));
    assert.deepEqual((await bob.http.posts('roundtrip', { sort: 'new' })).posts.map((p) => p.id), [post.id]);
    assert.deepEqual((await bob.http.post(post.id)).comments.map((c) => c.id), [comment.id]);
    assert.equal((await bob.http.agent('alice')).handle, 'alice');
    assert.ok((await bob.http.search('shell')).results.length > 0);
    assert.equal((await bob.http.search('shell', { mode: 'hybrid' })).mode, 'text');
    const related = await bob.http.related(post.id, { limit: 3 });
    assert.equal(related.mode, 'text');
    assert.ok(!related.results.some((h) => h.item.id === post.id));
    await assert.rejects(bob.http.agent('nobody_here'), (e) => e.code === 'not_found');

    assert.equal((await alice.remove(post.id, 'off topic')).removed, true);
    assert.equal((await nextEvent(bob, (e) => e.event === 'removed')).data.target, post.id);
    await alice.ban('roundtrip', 'bob');
    await assert.rejects(bob.post('roundtrip', 'Still here?', '...'), (e) => e.code === 'forbidden');
    await bob.unsubscribe('topic:roundtrip');
  } finally {
    await alice.close();
    await bob.close();
  }
});

test('reports a gap the hub cannot replay: the firehose after a reconnect, and a topic seen only through it', { timeout: 30_000 }, async () => {
  const relay = new Relay(hub.port);
  const via = await relay.start();
  const reader = new Agent(hub.base, { key: (await hub.agent('gapreader')).key, wsUrl: via.replace(/^http/, 'ws') + '/ws', backoffInitialMs: 50, backoffMaxMs: 300 });
  const writer = new Agent(hub.base, { key: (await hub.agent('gapwriter')).key, backoffInitialMs: 50 });
  try {
    await reader.start();
    await writer.start();
    await writer.topicCreate('gapsa', 'Gaps A', 'seen through the firehose only');
    await writer.topicCreate('gapsb', 'Gaps B', 'subscribed to itself');
    await reader.subscribe('firehose');
    await reader.subscribe('topic:gapsb');
    const first = await writer.post('gapsa', 'seen live', 'x');
    await writer.post('gapsb', 'b seen live', 'x');
    const live = new Map();
    for await (const e of reader.events()) { // in order per channel, not across channels
      if (e.event === 'post') live.set(e.data.title, e);
      if (live.size === 2) break;
    }
    const seen = live.get('seen live');
    assert.equal(seen.data.id, first.id);

    relay.blocked = true;
    relay.cut();
    await eventually('the reader noticed the cut', () => reader.closes.length >= 1);
    for (let i = 0; i < 3; i += 1) await writer.post('gapsa', `missed ${i}`, 'x');
    await writer.post('gapsb', 'b replayed', 'x');
    relay.blocked = false;
    await eventually('the reader is back', () => reader.connections === 2);
    const last = await writer.post('gapsa', 'after the gap', 'x');

    const got = [];
    for await (const e of reader.events()) {
      got.push(e);
      if (e.event === 'post' && e.data.id === last.id) break;
    }
    const gaps = got.filter((e) => e.event === 'gap');
    assert.deepEqual(gaps, [
      { event: 'gap', channel: 'firehose', after: null, seq: null },
      { event: 'gap', channel: 'topic:gapsa', after: seen.seq, seq: seen.seq + 4 },
    ]);
    assert.equal(got.indexOf(gaps[1]), got.length - 2, "the topic's gap comes right before its push");
    assert.deepEqual(got.filter((e) => e.event === 'post').map((e) => e.data.title).sort(), ['after the gap', 'b replayed']);
    assert.equal(reader.gaps, 2);
  } finally {
    await reader.close();
    await writer.close();
    relay.stop();
  }
});

test('resumes across a hub restart with no gap and no duplicate', { timeout: 30_000 }, async () => {
  const own = await Hub.start();
  // The reader goes through a relay that keeps it out until the writer has posted after the
  // restart: those posts reach the reader only through `since`.
  const relay = new Relay(own.port);
  const via = await relay.start();
  const reader = new Agent(via, { key: (await own.agent('reader')).key, backoffInitialMs: 50, backoffMaxMs: 300 });
  const writer = new Agent(own.base, { key: (await own.agent('writer')).key, backoffInitialMs: 50 });
  try {
    await reader.start();
    await writer.start();
    await writer.topicCreate('resume', 'Resume', 'SDK tests');
    await reader.subscribe('topic:resume');
    const titles = ['before 0', 'before 1', 'before 2', 'after 0', 'after 1', 'after 2'];
    for (const t of titles.slice(0, 3)) await writer.post('resume', t, 'x');
    await eventually('the reader saw the first posts', () => (reader.lastSeq.get('topic:resume') ?? 0) >= 4);
    relay.blocked = true;
    await own.restart();
    for (const t of titles.slice(3)) await writer.post('resume', t, 'x');
    assert.equal(reader.connections, 1, 'the reader must still be away');
    assert.ok(reader.closes.includes(1012) && writer.closes.includes(1012));
    relay.blocked = false;

    const seen = [];
    for await (const e of reader.events()) {
      if (e.event === 'post') seen.push(e);
      if (seen.length === 6) break;
    }
    assert.deepEqual(seen.map((e) => e.data.title), titles);
    const s0 = seen[0].seq;
    assert.deepEqual(seen.map((e) => e.seq), [0, 1, 2, 3, 4, 5].map((i) => s0 + i));
    assert.equal(reader.connections, 2);
    await reader.ping();
    assert.equal(reader.duplicates, 0);
  } finally {
    await reader.close();
    await writer.close();
    relay.stop();
    own.kill();
  }
});

test('short tokens are refreshed on the live session', { timeout: 30_000 }, async () => {
  const a = new Agent(hub.base, { key: (await hub.agent('fresh')).key });
  try {
    await a.start();
    await sleep(8000); // tokens live 4 s: refreshed at 2/3 of that, twice or more
    assert.ok(a.refreshes >= 2, `refreshes: ${a.refreshes}`);
    assert.equal(a.connections, 1);
    assert.deepEqual(a.closes, []);
    await a.ping();
  } finally {
    await a.close();
  }
});

test('a key file is read again at every exchange', { timeout: 30_000 }, async () => {
  const { key, keyId, owner } = await hub.agent('rotating');
  const file = join(mkdtempSync(join(tmpdir(), 'carapace-key-')), 'agent.key');
  writeFileSync(file, key + '\n');
  const a = new Agent(hub.base, { keyFile: file });
  try {
    await a.start();
    const r = await hub.call('POST', '/api/v1/agents/rotating/keys', owner);
    assert.equal(r.status, 201);
    writeFileSync(file, r.body.key);
    const before = a.refreshes;
    await eventually('a refresh with the new key', () => a.refreshes > before, 6000);
    assert.equal((await hub.call('DELETE', `/api/v1/agents/rotating/keys/${keyId}`, owner)).status, 204);
    await sleep(1000);
    await a.ping();
    assert.equal(a.connections, 1);
    assert.equal(a.stopped, null);
  } finally {
    await a.close();
  }
});

test('a revoked key closes with 4003 and the agent stops without reconnecting', { timeout: 30_000 }, async () => {
  const { key, keyId, owner } = await hub.agent('doomed');
  const a = new Agent(hub.base, { key, backoffInitialMs: 50 });
  await a.start();
  await a.subscribe('agent:doomed');
  assert.equal((await hub.call('DELETE', `/api/v1/agents/doomed/keys/${keyId}`, owner)).status, 204);
  await assert.rejects(async () => {
    for await (const _ of a.events());
  }, (e) => e instanceof Closed && e.closeCode === 4003);
  await sleep(1000); // with a 50 ms backoff, a reconnect would have happened by now
  assert.deepEqual(a.closes, [4003]);
  assert.equal(a.connections, 1);
  await assert.rejects(a.ping(), Closed);
  await a.close();
});

test('a refused key stops it at start', { timeout: 30_000 }, async () => {
  const a = new Agent(hub.base, { key: 'cpk_' + 'x'.repeat(38), backoffInitialMs: 50 });
  await assert.rejects(a.start(), (e) => e instanceof Closed && /refused/.test(e.message));
  assert.equal(a.connections, 0);
  await a.close();
});

test('rate_limited is waited out for retry_after_ms, or thrown', { timeout: 30_000 }, async () => {
  const voter = new Agent(hub.base, { key: (await hub.agent('voter')).key, waitOnRateLimit: false });
  const author = new Agent(hub.base, { key: (await hub.agent('votee')).key });
  try {
    await voter.start();
    await author.start();
    await author.topicCreate('limits', 'Limits', 'SDK tests');
    const post = await author.post('limits', 'Vote for me', 'please');
    let limited = null;
    for (let i = 0; i < 400 && !limited; i++) {
      // the hub allows 300 votes a minute
      await voter.vote(post.id, i % 2 ? 1 : -1).catch((e) => (limited = e));
    }
    assert.ok(limited instanceof RateLimited, String(limited));
    assert.ok(limited.retryAfterMs > 0);
    // Told to wait, the next vote waits `retry_after_ms`, then passes.
    voter.waitOnRateLimit = true;
    const started = Date.now();
    await voter.vote(post.id, 1);
    assert.ok(Date.now() - started >= limited.retryAfterMs * 0.5);
    assert.equal(voter.rateLimited, 2);
  } finally {
    await voter.close();
    await author.close();
  }
});

const POST = {
  id: 'p1', topic: 't', author: { handle: 'x', name: 'X' }, title: 'ok', body: 'fine', kind: 'text',
  url: null, score: 0, comment_count: 0, created_at: '2026-01-01T00:00:00Z',
};
const j = JSON.stringify;
const HOSTILE = [
  'not json {', '[1, 2, 3]', 'null', '"a string"',
  j({ channel: 'topic:t', event: 'post', data: POST }), // no seq
  j({ channel: 'topic:t', seq: '1', event: 'post', data: POST }),
  j({ channel: 'topic:t', seq: 1.5, event: 'post', data: POST }),
  j({ channel: 5, seq: 1, event: 'post', data: POST }),
  j({ channel: 'topic:t', seq: 1, event: 'post', data: null }),
  j({ channel: 'topic:t', seq: 1, event: 'post', data: { ...POST, author: 'x' } }),
  j({ channel: 'topic:t', seq: 1, event: 'dm', data: { from: 7 } }),
  j({ channel: 'topic:t', seq: 1, event: 'mention', data: { kind: '__proto__' } }),
  j({ id: 999, result: {} }), // a reply nobody waits for
  j({ id: { x: 1 }, error: 'nonsense' }),
  j({ channel: 'topic:t', seq: 1, event: 'post', data: POST }), // valid
  j({ channel: 'topic:t', seq: 1, event: 'post', data: POST }), // duplicate
  j({ channel: 'topic:t', seq: 2, event: 'from_the_future', data: [1] }),
  j({ channel: 'topic:t', seq: 3, event: 'post', data: { ...POST, id: 'p2' } }),
];

test('hostile and unknown pushes do not crash it', { timeout: 30_000 }, async () => {
  const server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(j({ token: 'fake.jwt.token', token_type: 'Bearer', expires_at: '2099-01-01T00:00:00Z' }));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => {
    ws.on('message', (frame) => {
      const cmd = JSON.parse(frame.toString());
      if (cmd.op === 'auth') {
        ws.send(j({ id: cmd.id, result: { agent: { id: 'a1', handle: 'me' }, expires_at: '2099-01-01T00:00:00Z' } }));
      } else if (cmd.op === 'subscribe') {
        ws.send(j({ id: cmd.id, result: { channel: cmd.channel, seq: 0, recovered: true } }));
        for (const f of HOSTILE) ws.send(f);
      } else if (cmd.op === 'vote') {
        ws.send(j({ id: cmd.id, error: 42 })); // an error that is not an object
      } else {
        ws.send(j({ id: cmd.id, result: {} }));
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const a = new Agent(`http://127.0.0.1:${server.address().port}`, { key: 'cpk_fake' });
  try {
    await a.start();
    await a.subscribe('topic:t');
    const got = [];
    for await (const e of a.events()) {
      got.push(e);
      if (got.length === 3) break;
    }
    assert.equal(got[0].event, 'post');
    assert.equal(got[0].data.id, 'p1');
    assert.equal(got[1].event, 'unknown');
    assert.equal(got[1].name, 'from_the_future');
    assert.equal(got[2].data.id, 'p2');
    assert.equal(a.duplicates, 1);
    assert.ok(a.dropped >= 10, `dropped: ${a.dropped}`);
    await assert.rejects(a.vote('p1', 1), (e) => e instanceof CarapaceError && e.code === 'bad_response');
    await a.ping();
    assert.equal(a.connections, 1);
    assert.equal(a.refreshes, 0, 'a token for decades is not refreshed now');
  } finally {
    await a.close();
    wss.close();
    server.close();
  }
});

for (const [code, reconnects] of [[1011, true], [1012, true], [4004, true], [4008, true],
  [1002, false], [1009, false], [4000, false], [4001, false], [4003, false]]) {
  test(`close code ${code} ${reconnects ? 'leads to a reconnect with a fresh token' : 'stops it'}`, { timeout: 30_000 }, async () => {
    let exchanges = 0;
    let sessions = 0;
    const server = createServer((req, res) => {
      exchanges += 1;
      res.setHeader('content-type', 'application/json');
      res.end(j({ token: 'fake.jwt.token', token_type: 'Bearer', expires_at: '2099-01-01T00:00:00Z' }));
    });
    const wss = new WebSocketServer({ server });
    wss.on('connection', (ws) => {
      const session = ++sessions;
      ws.on('message', (frame) => {
        const cmd = JSON.parse(frame.toString());
        const result = cmd.op === 'auth' ? { agent: { id: 'a1', handle: 'me' }, expires_at: '2099-01-01T00:00:00Z' } : {};
        ws.send(j({ id: cmd.id, result }));
        if (cmd.op === 'auth' && session === 1) ws.close(code, 'test');
      });
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const a = new Agent(`http://127.0.0.1:${server.address().port}`, { key: 'cpk_fake', backoffInitialMs: 50 });
    try {
      await a.start();
      if (reconnects) {
        await eventually('a second session', () => a.connections === 2, 5000);
        assert.deepEqual(a.closes, [code]);
        assert.equal(exchanges, 2, 'every connection starts with a fresh token');
        await a.ping();
      } else {
        await assert.rejects(async () => {
          for await (const _ of a.events());
        }, (e) => e instanceof Closed && e.closeCode === code);
        await sleep(500); // with a 50 ms backoff a reconnect would be done by now
        assert.equal(a.connections, 1);
        assert.equal(sessions, 1);
        assert.equal(exchanges, 1);
      }
    } finally {
      await a.close();
      wss.close();
      server.close();
    }
  });
}
