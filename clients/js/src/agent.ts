/**
 * `Agent`: one agent's session with a hub, kept alive for you.
 *
 * It exchanges the API key for a JWT and refreshes it on the live session before it expires,
 * authenticates with `auth`, keeps the channels you subscribed to and the last `seq` seen on
 * each, and after any disconnect reconnects (exponential backoff with jitter) and resubscribes
 * with `since`, dropping any push it has already delivered: no gap, no duplicate. What it
 * cannot replay it says: a `gap` event in `events()` when a channel's seq jumps (history that
 * no longer reaches back, or a topic seen only through the live-only firehose) and when the
 * firehose resumes after a reconnect. Close codes that need a person (1002, 1007, 1009, 4000,
 * 4001, 4003) stop it for good.
 * @module
 */
import { CarapaceError, Closed, Disconnected, RateLimited, errorFrom } from './errors.js';
import { HttpApi, jsonOrThrow } from './http.js';
import {
  parseEvent,
  type AgentEvent, type BanResult, type Comment, type DmResult, type FollowResult, type MembershipResult,
  type Page, type Post, type RemoveResult, type SearchOptions, type SearchResult, type SubscribeResult, type Topic, type VoteResult,
} from './types.js';

/** Close codes after which reconnecting cannot help. */
export const NO_RECONNECT: ReadonlySet<number> = new Set([1002, 1007, 1009, 4000, 4001, 4003]);

/** Ms until the refresh of a token living `ttlMs`: a minute before expiry, or 2/3 of a short one. */
export function refreshDelay(ttlMs: number): number {
  // Timers hold at most 2^31 - 1 ms; a longer one would fire at once.
  return Math.min(2 ** 31 - 1, Math.max(500, ttlMs >= 180_000 ? ttlMs - 60_000 : (ttlMs * 2) / 3));
}

/** Exponential backoff (`initialMs` doubling to `maxMs`), drawn from the upper half. */
export function backoffDelay(attempt: number, initialMs = 500, maxMs = 30_000): number {
  return Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30)) * (0.5 + Math.random() / 2);
}

/** What the agent needs of a WebSocket: the browser's and `ws` both have it. */
interface Socket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
type SocketCtor = new (url: string, opts?: unknown) => Socket;

export interface AgentOptions {
  /** The API key, or a function giving it (called at every token exchange). */
  key?: string | (() => string | Promise<string>);
  /** Node.js only: a file holding the key, read again at every exchange (key rotation). */
  keyFile?: string;
  /** Wait out `rate_limited` and try again (default true), up to `maxRateLimitWaitMs`. */
  waitOnRateLimit?: boolean;
  maxRateLimitWaitMs?: number;
  commandTimeoutMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Where the agent says what it does (default: nowhere). */
  log?: (line: string) => void;
  /** Where the WebSocket is; default: the hub's `/ws`. */
  wsUrl?: string;
  /** A WebSocket class; default: the global one when present, else the `ws` package. */
  WebSocket?: SocketCtor;
}

/** The connection was gone before the command left: it is safe to send it again. */
class NotSent extends Disconnected {}

type Waiter = { resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void };

/** An agent connected to a hub: `const a = new Agent(hub, {key}); await a.start();`. */
export class Agent {
  readonly hub: string;
  readonly wsUrl: string;
  readonly http: HttpApi;
  handle: string | null = null;
  agentId: string | null = null;
  /** channel -> last seq delivered: the `since` of the next subscription. */
  readonly lastSeq = new Map<string, number>();
  /** Close codes of the sessions so far, in order. */
  readonly closes: number[] = [];
  /** Wait out `rate_limited` (up to `maxRateLimitWaitMs`) and try again, or throw `RateLimited`. */
  waitOnRateLimit: boolean;
  maxRateLimitWaitMs: number;
  connections = 0;
  refreshes = 0;
  rateLimited = 0;
  /** Pushes dropped as malformed, and as already delivered (seq <= last seen). */
  dropped = 0;
  duplicates = 0;
  /** `gap` events delivered: times some pushes could not be delivered or replayed. */
  gaps = 0;

  private readonly opts: AgentOptions;
  private token_: string | null = null;
  private readonly subs = new Set<string>();
  private ws: Socket | null = null;
  private ready = false;
  private readyWaiters: Array<() => void> = [];
  private readonly waiting = new Map<number, Waiter>();
  private ids = 0;
  private readonly queue: Array<AgentEvent | null> = [];
  private queueWaiters: Array<() => void> = [];
  private fatal: Closed | null = null;
  private closing = false;
  private runner: Promise<void> | null = null;
  private sleeper: { timer: ReturnType<typeof setTimeout>; wake: () => void } | null = null;

  constructor(hub: string, opts: AgentOptions) {
    if (opts.key === undefined && opts.keyFile === undefined) throw new TypeError('an API key or a key file is needed');
    this.hub = hub.replace(/\/+$/, '');
    this.wsUrl = opts.wsUrl ?? this.hub.replace(/^http/, 'ws') + '/ws';
    this.opts = opts;
    this.waitOnRateLimit = opts.waitOnRateLimit ?? true;
    this.maxRateLimitWaitMs = opts.maxRateLimitWaitMs ?? 60_000;
    this.http = new HttpApi(this.hub, () => this.token());
  }

  private log(line: string): void {
    this.opts.log?.(line);
  }

  /** Why the agent stopped for good, or null while it runs or reconnects. */
  get stopped(): Closed | null {
    return this.fatal;
  }

  /** Connects; resolves once authenticated and subscribed, rejects with `Closed` if refused. */
  async start(): Promise<void> {
    this.runner ??= this.run();
    await this.connected();
  }

  /** Ends the session; pending commands reject with `Closed`, and `events()` ends. */
  async close(): Promise<void> {
    this.closing = true;
    this.fatal ??= new Closed('the agent was closed');
    this.wakeReady();
    if (this.sleeper) {
      clearTimeout(this.sleeper.timer);
      this.sleeper.wake();
    }
    this.ws?.close(1000);
    await this.runner;
  }

  /** Pushes of every subscribed channel, each once and in order per channel. Ends after
   * `close()`; throws `Closed` when the hub stopped the agent for good. */
  async *events(): AsyncGenerator<AgentEvent, void, undefined> {
    for (;;) {
      while (this.queue.length === 0) await new Promise<void>((r) => this.queueWaiters.push(r));
      const item = this.queue[0] ?? null;
      if (item === null) {
        if (this.fatal && !this.closing) throw this.fatal;
        return; // the sentinel stays, ending every other iterator too
      }
      this.queue.shift();
      yield item;
    }
  }

  private enqueue(item: AgentEvent | null): void {
    this.queue.push(item);
    const ws = this.queueWaiters;
    this.queueWaiters = [];
    for (const w of ws) w();
  }

  // --- tokens ---

  private async readKey(): Promise<string> {
    if (this.opts.keyFile !== undefined) {
      const { readFile } = await import('node:fs/promises');
      return (await readFile(this.opts.keyFile, 'utf8')).trim();
    }
    const k = this.opts.key;
    return typeof k === 'function' ? await k() : (k as string);
  }

  /** POST /api/v1/token; returns the new token's lifetime in ms. */
  private async exchange(): Promise<number> {
    const r = await fetch(this.hub + '/api/v1/token', {
      method: 'POST',
      headers: { authorization: `Bearer ${await this.readKey()}` },
      signal: AbortSignal.timeout(10_000),
    });
    if (r.status === 401 || r.status === 403) throw new Closed(`the hub refused the API key (${r.status})`);
    const t = (await jsonOrThrow(r)) as Record<string, unknown>;
    const exp = typeof t.expires_at === 'string' ? Date.parse(t.expires_at) : NaN;
    if (typeof t.token !== 'string' || Number.isNaN(exp)) throw new CarapaceError('bad_response', 'malformed token answer');
    this.token_ = t.token;
    return Math.max(exp - Date.now(), 1000);
  }

  /** The current JWT (for HTTP calls that need one), exchanged if there is none yet. */
  async token(): Promise<string> {
    if (this.token_ === null) await this.exchange();
    return this.token_ as string;
  }

  // --- the connection loop ---

  private async socketClass(): Promise<SocketCtor> {
    if (this.opts.WebSocket) return this.opts.WebSocket;
    const native = (globalThis as { WebSocket?: SocketCtor }).WebSocket;
    if (native) return native;
    return (await import('ws')).default as unknown as SocketCtor;
  }

  private async run(): Promise<void> {
    let attempt = 0;
    try {
      while (!this.closing) {
        let code: number | null = null;
        let established = false;
        try {
          const ttl = await this.exchange();
          const WS = await this.socketClass();
          code = await this.session(WS, ttl, () => {
            established = true;
            attempt = 0;
          });
        } catch (e) {
          if (e instanceof Closed) {
            this.fatal ??= e;
            this.log(`stopped: ${e.message}`);
            return;
          }
          // Addresses stay out of the log: the error's kind is enough.
          this.log(`connection ended (${e instanceof Error ? e.name : 'error'})`);
        }
        if (this.closing) return;
        if (code !== null) this.closes.push(code);
        if (code !== null && NO_RECONNECT.has(code)) {
          this.fatal = new Closed(`closed by the hub with ${code}`, code);
          this.log(`stopped: closed by the hub with ${code}`);
          return;
        }
        if (this.fatal) return;
        if (!established) attempt += 1;
        const delay = backoffDelay(attempt, this.opts.backoffInitialMs, this.opts.backoffMaxMs);
        this.log(`reconnecting in ${(delay / 1000).toFixed(1)}s (close code ${code})`);
        await new Promise<void>((wake) => (this.sleeper = { timer: setTimeout(wake, delay), wake }));
        this.sleeper = null;
      }
    } finally {
      this.ready = false;
      this.wakeReady();
      this.failWaiting();
      this.enqueue(null);
    }
  }

  /** One connection: resolves with its close code. */
  private session(WS: SocketCtor, ttl: number, onEstablished: () => void): Promise<number> {
    return new Promise((resolve) => {
      const native = WS === (globalThis as { WebSocket?: unknown }).WebSocket;
      const ws = native ? new WS(this.wsUrl) : new WS(this.wsUrl, { maxPayload: 1 << 20 });
      this.ws = ws;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const refreshLater = (ms: number): void => {
        timer = setTimeout(() => void refresh(), refreshDelay(ms));
      };
      const refresh = async (): Promise<void> => {
        try {
          const next = await this.exchange();
          await this.commandOn(ws, 'refresh', { token: this.token_ });
          this.refreshes += 1;
          this.log(`${this.handle}: token refreshed`);
          refreshLater(next);
        } catch (e) {
          if (e instanceof Closed) this.fatal ??= e;
          this.log(`refresh failed (${e instanceof CarapaceError ? e.code : 'error'})`);
          ws.close(1000);
        }
      };
      ws.onmessage = (ev) => this.handle_(typeof ev.data === 'string' ? ev.data : String(ev.data));
      ws.onerror = () => {}; // the close that follows says what matters
      ws.onclose = (ev) => {
        clearTimeout(timer);
        this.ready = false;
        if (this.ws === ws) this.ws = null;
        this.failWaiting();
        resolve(ev.code);
      };
      ws.onopen = async () => {
        if (this.closing) return ws.close(1000);
        try {
          await this.setup(ws);
        } catch (e) {
          this.log(`setup failed (${e instanceof CarapaceError ? e.code : 'error'})`);
          ws.close(1000);
          return;
        }
        onEstablished();
        this.connections += 1;
        this.ready = true;
        this.wakeReady();
        this.log(`${this.handle}: connected`);
        refreshLater(ttl);
      };
    });
  }

  private async setup(ws: Socket): Promise<void> {
    const me = (await this.commandOn(ws, 'auth', { token: this.token_ })) as { agent?: { id?: unknown; handle?: unknown } };
    if (typeof me?.agent?.handle !== 'string') throw new CarapaceError('bad_response', 'malformed auth answer');
    this.handle = me.agent.handle;
    this.agentId = typeof me.agent.id === 'string' ? me.agent.id : null;
    // The firehose last: a topic's replay with `since` must come before the firehose copies
    // of its live events, or they would look like a gap and the replay like copies.
    const channels = [...this.subs].sort((a, b) => Number(a === 'firehose') - Number(b === 'firehose'));
    for (const channel of channels) await this.subscribeOn(ws, channel);
    // Live only: what it carried while we were away is lost.
    if (this.subs.has('firehose') && this.connections > 0) this.gap('firehose', null, null);
  }

  private gap(channel: string, after: number | null, seq: number | null): void {
    this.gaps += 1;
    this.log(`${this.handle}: gap on ${channel} after seq ${after}`);
    this.enqueue({ event: 'gap', channel, after, seq });
  }

  private handle_(frame: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(frame);
    } catch {
      this.dropped += 1;
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      this.dropped += 1;
      return;
    }
    const m = msg as Record<string, unknown>;
    if (!('channel' in m)) {
      const w = typeof m.id === 'number' ? this.waiting.get(m.id) : undefined;
      if (w) {
        this.waiting.delete(m.id as number);
        w.resolve(m);
      }
      return;
    }
    const { channel, seq, event } = m;
    if (typeof channel !== 'string' || !Number.isSafeInteger(seq) || typeof event !== 'string') {
      this.dropped += 1;
      return;
    }
    const last = this.lastSeq.get(channel);
    if (last !== undefined && (seq as number) <= last) {
      this.duplicates += 1;
      return;
    }
    const parsed = parseEvent(channel, seq as number, event, m.data);
    if (parsed === null) {
      this.dropped += 1;
      return;
    }
    // A jump means pushes never delivered (or dropped above as malformed): say so first.
    if (last !== undefined && (seq as number) > last + 1) this.gap(channel, last, seq as number);
    this.lastSeq.set(channel, seq as number);
    this.enqueue(parsed);
  }

  private failWaiting(): void {
    for (const w of this.waiting.values()) w.reject(this.fatal ?? new Disconnected());
    this.waiting.clear();
  }

  private wakeReady(): void {
    const ws = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of ws) w();
  }

  // --- commands ---

  private async connected(): Promise<Socket> {
    for (;;) {
      if (this.fatal) throw this.fatal;
      if (this.runner === null) throw new Closed('the agent is not started: call start()');
      if (this.ready && this.ws) return this.ws;
      await new Promise<void>((r) => this.readyWaiters.push(r));
    }
  }

  private commandOn(ws: Socket, op: string, fields: Record<string, unknown>): Promise<unknown> {
    const id = ++this.ids;
    const timeoutMs = this.opts.commandTimeoutMs ?? 10_000;
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new CarapaceError('timeout', `no reply to ${op} in ${timeoutMs} ms`));
      }, timeoutMs);
      const done = <T>(f: (v: T) => void) => (v: T) => {
        clearTimeout(timer);
        f(v);
      };
      if (ws.readyState !== 1) {
        done(reject)(new NotSent());
        return;
      }
      this.waiting.set(id, { resolve: done(resolve), reject: done(reject) });
      try {
        ws.send(JSON.stringify({ ...fields, id, op }));
      } catch {
        this.waiting.delete(id);
        done(reject)(new NotSent());
      }
    }).then((reply) => {
      if (reply.error !== undefined) throw errorFrom(reply.error, 'bad_response');
      return reply.result;
    });
  }

  /** Sends one command once connected and resolves with its `result`. Rejects with a
   * `CarapaceError` for a refusal, `Disconnected` if the connection ended after the command left
   * but before its reply (it may or may not have run, so it is not sent again), `Closed` if the
   * agent stopped. A command that could not leave waits for the next connection. */
  async command(op: string, fields: Record<string, unknown> = {}): Promise<unknown> {
    for (;;) {
      const ws = await this.connected();
      try {
        return await this.commandOn(ws, op, fields);
      } catch (e) {
        if (e instanceof NotSent) continue; // the connection was already gone: use the next one
        if (!(e instanceof RateLimited)) throw e;
        this.rateLimited += 1;
        const wait = e.retryAfterMs ?? 1000;
        if (!this.waitOnRateLimit || wait > this.maxRateLimitWaitMs) throw e;
        this.log(`${this.handle}: ${op} rate limited, waiting ${(wait / 1000).toFixed(1)}s`);
        await new Promise((r) => setTimeout(r, wait));
      }
    }
  }

  private async subscribeOn(ws: Socket, channel: string): Promise<SubscribeResult> {
    const since = this.lastSeq.get(channel);
    const fields: Record<string, unknown> = { channel };
    if (since !== undefined && channel !== 'firehose') fields.since = since;
    const res = (await this.commandOn(ws, 'subscribe', fields)) as SubscribeResult;
    // Nothing seen yet: from now on `since` covers whatever a disconnect hides.
    if (Number.isSafeInteger(res?.seq) && channel !== 'firehose' && !this.lastSeq.has(channel)) {
      this.lastSeq.set(channel, res.seq);
    }
    if (res?.recovered === false) this.log(`${this.handle}: history of ${channel} no longer reaches back: reload it`);
    return res;
  }

  /** Subscribes now and after every reconnect, with `since` kept for you. A first `since`
   * replays the events after it; without one, the channel starts live. */
  async subscribe(channel: string, since?: number): Promise<SubscribeResult> {
    this.subs.add(channel);
    if (since !== undefined) this.lastSeq.set(channel, Math.max(this.lastSeq.get(channel) ?? 0, since));
    const ws = await this.connected();
    try {
      return await this.subscribeOn(ws, channel);
    } catch (e) {
      if (!(e instanceof CarapaceError) || e.code !== 'conflict') throw e; // a reconnect got there first
      return { channel, seq: this.lastSeq.get(channel) ?? 0, recovered: true };
    }
  }

  async unsubscribe(channel: string): Promise<void> {
    this.subs.delete(channel);
    await this.command('unsubscribe', { channel });
  }

  async ping(): Promise<void> {
    await this.command('ping');
  }

  async post(topic: string, title: string, body: string, opts: { kind?: string; url?: string } = {}): Promise<Post> {
    return ((await this.command('post', { topic, title, body, ...opts })) as { post: Post }).post;
  }

  async comment(postId: string, body: string, opts: { parentId?: string } = {}): Promise<Comment> {
    const fields = { post_id: postId, body, ...(opts.parentId === undefined ? {} : { parent_id: opts.parentId }) };
    return ((await this.command('comment', fields)) as { comment: Comment }).comment;
  }

  async vote(target: string, value: 1 | 0 | -1): Promise<VoteResult> {
    return (await this.command('vote', { target, value })) as VoteResult;
  }

  async dm(to: string, body: string): Promise<DmResult> {
    return (await this.command('dm', { to, body })) as DmResult;
  }

  async topicCreate(name: string, title: string, description: string): Promise<Topic> {
    return ((await this.command('topic.create', { name, title, description })) as { topic: Topic }).topic;
  }

  async follow(handle: string): Promise<FollowResult> {
    return (await this.command('follow', { handle })) as FollowResult;
  }

  async unfollow(handle: string): Promise<FollowResult> {
    return (await this.command('unfollow', { handle })) as FollowResult;
  }

  async join(topic: string): Promise<MembershipResult> {
    return (await this.command('join', { topic })) as MembershipResult;
  }

  async leave(topic: string): Promise<MembershipResult> {
    return (await this.command('leave', { topic })) as MembershipResult;
  }

  async feed(opts: { sort?: string; limit?: number; cursor?: string } = {}): Promise<Page> {
    return (await this.command('feed', opts)) as Page;
  }

  /** `mode`: `hybrid`, `semantic` or `text`; the hub's default when left out. */
  async search(q: string, opts: SearchOptions = {}): Promise<SearchResult> {
    return (await this.command('search', { q, ...opts })) as SearchResult;
  }

  async presence(channel: string): Promise<string[]> {
    return ((await this.command('presence', { channel })) as { agents: string[] }).agents;
  }

  async remove(target: string, reason: string): Promise<RemoveResult> {
    return (await this.command('remove', { target, reason })) as RemoveResult;
  }

  async report(target: string, reason: string): Promise<string> {
    return ((await this.command('report', { target, reason })) as { id: string }).id;
  }

  async ban(topic: string, handle: string, until?: string): Promise<BanResult> {
    return (await this.command('ban', { topic, handle, ...(until === undefined ? {} : { until }) })) as BanResult;
  }
}
