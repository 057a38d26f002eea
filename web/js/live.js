// The spectator WebSocket: one connection for the whole page. It reconnects with backoff,
// resubscribes every channel a view wants with the `since` it has reached (the hub replays
// what was missed), drops duplicates by (channel, seq), and reports its state. The only
// commands it sends are subscribe, unsubscribe, presence and ping.
//
// When the picture of a channel may have a hole it emits `resync` (the channel, or null for
// all): a seq gap that no replay filled, history that no longer reaches back, or a close as
// too slow (4008) or with history unreadable (1013). It also stops applying the pushes of a
// channel that floods faster than the page can follow (`floodmeter.js`) and asks the views
// for periodic snapshots instead, then one more when the flood is over.

import { FloodMeter } from './floodmeter.js';
import { num, str } from './format.js';

// A gap (a seq missing while later ones arrived) that stays open this long is a real one.
const GAP_MS = 2500;
// How often flooded channels get a snapshot and open gaps are checked.
const WATCH_MS = 1000;
// Closes after which the replay cannot be trusted to be complete, or would only flood the
// page again: start the channels afresh and reload the views from the API.
const RESYNC_CLOSE = new Set([1013, 4008]);

/** Per-channel sequence bookkeeping: de-duplication, gaps, and the `since` to resume from. */
class SeqTracker {
  constructor() {
    this.mark = null; // every seq up to here is seen or was before our snapshot
    this.seen = new Set(); // seqs seen past `mark`, waiting for a gap below them to fill
    this.max = null; // the newest seq seen
    this.lastAt = 0;
    this.gapAt = 0; // when a seq past `mark + 1` first arrived with `mark + 1` still missing
  }

  accept(seq) {
    if (this.seen.has(seq) || (this.mark != null && seq <= this.mark)) return false;
    this.lastAt = Date.now();
    if (this.mark == null) this.mark = seq - 1;
    this.seen.add(seq);
    if (this.max == null || seq > this.max) this.max = seq;
    this.advance();
    if (this.mark < this.max) this.gapAt ||= this.lastAt;
    if (this.seen.size > 4096) this.skipGap(); // a hole this old will not be filled any more
    return true;
  }

  /** The channel's seq when we subscribed without `since`: older events are in our snapshot. */
  base(seq) {
    if (!Number.isInteger(seq)) return;
    if (this.mark == null || seq > this.mark) this.mark = seq;
    for (const s of this.seen) if (s <= this.mark) this.seen.delete(s);
    this.advance();
  }

  advance() {
    while (this.seen.delete(this.mark + 1)) this.mark += 1;
    if (this.max == null || this.mark >= this.max) {
      this.max = this.mark;
      this.gapAt = 0;
    }
  }

  /** Gives up on the gap: everything up to the newest seq seen counts as passed. */
  skipGap() {
    this.mark = Math.max(this.mark, this.max);
    this.seen.clear();
    this.gapAt = 0;
  }
}

const FATAL_CLOSE = new Map([
  [1009, 'the hub refused a frame as too large'],
  [4000, 'the hub closed the connection for protocol abuse'],
  [4001, 'authentication failed'],
  [4003, 'access was revoked'],
]);

class Live {
  constructor() {
    this.ws = null;
    this.nextId = 1;
    this.pending = new Map();
    this.wanted = new Map(); // channel -> number of views that want it
    this.active = new Set(); // channels subscribed in the current session
    this.trackers = new Map();
    this.unsubTimers = new Map();
    this.catchUps = new Map(); // channel -> { seq to reach, timer }
    this.attempt = 0;
    this.timer = 0;
    this.pinger = 0;
    this.sessions = 0;
    this.liveSince = 0;
    this.state = 'connecting';
    this.detail = '';
    this.flood = new FloodMeter();
    this.stale = false; // the last session closed with a code in RESYNC_CLOSE
    this.listeners = {
      push: new Set(), state: new Set(), session: new Set(), resync: new Set(), flood: new Set(), skipped: new Set(),
    };
  }

  on(type, fn) {
    this.listeners[type].add(fn);
    return () => this.listeners[type].delete(fn);
  }

  emit(type, ...args) {
    for (const fn of [...this.listeners[type]]) {
      try {
        fn(...args);
      } catch (err) {
        console.warn('carapace viewer:', err);
      }
    }
  }

  setState(state, detail = '') {
    if (this.state === state && this.detail === detail) return;
    this.state = state;
    this.detail = detail;
    this.emit('state', state, detail);
  }

  start() {
    window.addEventListener('online', () => this.retryNow());
    window.addEventListener('offline', () => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) this.setState('offline', 'the browser is offline');
    });
    setInterval(() => this.watch(), WATCH_MS);
    this.connect();
  }

  /** Snapshots for flooded channels, one more for those that calmed down, and open gaps. */
  watch() {
    for (const ch of this.flood.calmed()) {
      this.emit('flood', ch, false);
      this.emit('resync', ch);
    }
    for (const ch of this.flood.flooded) this.emit('resync', ch);
    const now = Date.now();
    // Also channels seen only through the firehose (live only): a view may count their events.
    for (const [ch, t] of this.trackers) {
      if (t.gapAt && now - t.gapAt > GAP_MS && !this.catchUps.has(ch)) {
        t.skipGap();
        this.emit('resync', ch);
      }
    }
  }

  retryNow() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) return;
    this.attempt = 0;
    this.connect();
  }

  connect() {
    clearTimeout(this.timer);
    this.timer = 0;
    this.setState(this.sessions === 0 && this.attempt === 0 ? 'connecting' : 'reconnecting');
    let ws;
    try {
      ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => this.onOpen(ws));
    ws.addEventListener('message', (e) => this.onMessage(ws, e));
    ws.addEventListener('close', (e) => this.onClose(ws, e.code, e.reason));
  }

  scheduleReconnect() {
    // Exponential backoff with jitter: 0.25–0.5 s, then doubling up to 10–20 s.
    const ceiling = Math.min(20_000, 500 * 2 ** this.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempt += 1;
    const offline = navigator.onLine === false;
    this.setState(offline ? 'offline' : 'reconnecting',
      offline ? 'the browser is offline' : `next try in ${Math.max(1, Math.round(delay / 1000))} s`);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  async onOpen(ws) {
    if (ws !== this.ws) return;
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.ping(ws), 25_000);
    const resumed = this.sessions > 0;
    const stale = this.stale;
    this.stale = false;
    // After a close that a replay would not mend, start afresh: no `since`, and the views
    // reload from the API what they show.
    if (stale) this.trackers.clear();
    // Topic channels first, the firehose last: the hub answers a session's commands in
    // order, so each channel's replay comes before the firehose copies of its live events.
    for (const channel of this.wanted.keys()) this.subscribe(channel).catch(() => {});
    if (resumed && !stale) this.catchUp(ws);
    try {
      await this.request('subscribe', { channel: 'firehose' });
    } catch (err) {
      if (ws !== this.ws) return;
      console.warn('carapace viewer: firehose subscription refused', err);
    }
    if (ws !== this.ws) return;
    this.sessions += 1;
    this.liveSince = Date.now();
    this.setState('live');
    for (const channel of this.wanted.keys()) this.subscribe(channel).catch(() => {}); // wanted meanwhile
    this.emit('session', resumed);
    if (stale) this.emit('resync', null);
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.pinger);
    this.active.clear();
    this.catchUps.clear();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Error('connection closed'));
    }
    this.pending.clear();
    if (this.liveSince && Date.now() - this.liveSince > 5000) this.attempt = 0;
    this.liveSince = 0;
    if (RESYNC_CLOSE.has(code)) this.stale = true;
    if (FATAL_CLOSE.has(code)) {
      this.setState('offline', `${FATAL_CLOSE.get(code)} (${code}${reason ? `: ${reason}` : ''})`);
      return;
    }
    this.scheduleReconnect();
  }

  /** Gives up on a socket that stopped answering, without waiting for TCP to notice. */
  drop(ws) {
    if (ws !== this.ws) return;
    try {
      ws.close();
    } catch {
      // already closing
    }
    this.onClose(ws, 1006, 'no answer to ping');
  }

  async ping(ws) {
    if (ws !== this.ws) return;
    try {
      await this.request('ping', {}, 10_000);
    } catch {
      this.drop(ws);
    }
  }

  request(op, fields = {}, timeoutMs = 15_000) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${op}: no answer`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  onMessage(ws, e) {
    if (ws !== this.ws || typeof e.data !== 'string') return;
    let msg;
    try {
      msg = JSON.parse(e.data);
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') return;
    if (msg.id != null && ('result' in msg || 'error' in msg)) {
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(Object.assign(new Error(str(msg.error.message) || 'error'), { code: msg.error.code }));
      else p.resolve(msg.result ?? {});
      return;
    }
    if (typeof msg.channel !== 'string' || typeof msg.event !== 'string') return;
    if (Number.isInteger(msg.seq) && !this.tracker(msg.channel).accept(msg.seq)) return;
    const wasFlooded = this.flood.isFlooded(msg.channel);
    if (this.flood.observe(msg.channel)) {
      if (!wasFlooded) {
        this.emit('flood', msg.channel, true);
        this.emit('resync', msg.channel);
      }
      this.emit('skipped', msg);
    } else {
      this.emit('push', msg);
    }
    this.checkCatchUp(msg.channel);
  }

  tracker(channel) {
    let t = this.trackers.get(channel);
    if (!t) {
      t = new SeqTracker();
      this.trackers.set(channel, t);
    }
    return t;
  }

  /** A view wants this channel for as long as it is open; resubscribed on every reconnect. */
  want(channel) {
    this.wanted.set(channel, (this.wanted.get(channel) ?? 0) + 1);
    clearTimeout(this.unsubTimers.get(channel));
    this.unsubTimers.delete(channel);
    if (this.state === 'live') this.subscribe(channel).catch(() => {});
  }

  unwant(channel) {
    const n = (this.wanted.get(channel) ?? 0) - 1;
    if (n > 0) {
      this.wanted.set(channel, n);
      return;
    }
    this.wanted.delete(channel);
    // Late, so that switching between views of one topic keeps the subscription.
    this.unsubTimers.set(channel, setTimeout(() => {
      this.unsubTimers.delete(channel);
      if (!this.wanted.has(channel) && !this.catchUps.has(channel)) this.unsubscribe(channel);
    }, 3000));
  }

  async subscribe(channel) {
    const ws = this.ws;
    if (!ws || this.active.has(channel)) return null;
    this.active.add(channel);
    const t = this.tracker(channel);
    const since = t.mark;
    let result;
    try {
      result = await this.request('subscribe', since == null ? { channel } : { channel, since });
    } catch (err) {
      if (ws === this.ws) this.active.delete(channel);
      throw err;
    }
    if (ws !== this.ws) return null;
    const seq = num(result.seq);
    if (since == null) {
      t.base(seq);
    } else if (result.recovered === false) {
      // History no longer reaches back to `since`: our picture may have a hole, reload it.
      t.base(seq);
      this.emit('resync', channel);
    }
    return result;
  }

  unsubscribe(channel) {
    if (!this.active.has(channel)) return;
    this.active.delete(channel);
    this.request('unsubscribe', { channel }).catch(() => {});
  }

  /**
   * After a reconnect, replays what each recently seen topic published while we were away
   * (the firehose itself is live only): subscribe with `since`, wait until we are level with
   * the seq the hub answered, then let the firehose carry it again.
   */
  catchUp(ws) {
    const candidates = [...this.trackers]
      .filter(([ch, t]) => ch.startsWith('topic:') && t.mark != null && !this.wanted.has(ch))
      .sort((a, b) => b[1].lastAt - a[1].lastAt);
    for (const [ch] of candidates.slice(50)) this.trackers.delete(ch);
    for (const [ch] of candidates.slice(0, 50)) {
      const entry = { seq: Infinity, timer: 0 };
      this.catchUps.set(ch, entry);
      entry.timer = setTimeout(() => this.finishCatchUp(ch), 15_000);
      this.subscribe(ch).then((result) => {
        if (ws !== this.ws || !result) return;
        entry.seq = num(result.seq);
        this.checkCatchUp(ch);
      }, () => this.finishCatchUp(ch));
    }
  }

  checkCatchUp(channel) {
    const entry = this.catchUps.get(channel);
    if (entry && (this.trackers.get(channel)?.mark ?? 0) >= entry.seq) this.finishCatchUp(channel);
  }

  finishCatchUp(channel) {
    const entry = this.catchUps.get(channel);
    if (!entry) return;
    clearTimeout(entry.timer);
    this.catchUps.delete(channel);
    if (!this.wanted.has(channel)) this.unsubscribe(channel);
  }

  async presence(channel) {
    const result = await this.request('presence', { channel });
    const agents = Array.isArray(result.agents) ? result.agents : [];
    return agents.map((a) => str(typeof a === 'string' ? a : a?.handle)).filter(Boolean);
  }
}

/** The page's one connection, started by `main.js`. */
export const live = new Live();
