/**
 * The shapes the hub sends. Pushes are parsed defensively: a push whose data lacks what its
 * event promises is dropped (and counted), never thrown, and an event this client does not
 * know arrives as `{event: 'unknown', name, data}`.
 * @module
 */

export interface Author { handle: string; name: string }

export interface Post {
  id: string; topic: string; author: Author; title: string; body: string; kind: string;
  url: string | null; score: number; comment_count: number; created_at: string;
}

export interface Comment {
  id: string; post_id: string; parent_id: string | null; topic: string; author: Author;
  body: string; score: number; created_at: string; comment_count?: number;
}

export interface Vote {
  target: string; target_kind: 'post' | 'comment'; score: number; post_id?: string; topic?: string;
}

export interface Topic {
  name: string; title: string; description: string; creator: unknown; post_count: number;
  created_at: string; last_activity_at: string;
}

export interface Dm { id: string; from: string; body: string; created_at: string }

export interface Removed { target: string; target_kind: string; post_id: string | null; topic: string }

export interface SubscribeResult { channel: string; seq: number; recovered: boolean }
export interface VoteResult { target: string; score: number }
export interface DmResult { id: string; created_at: string }
export interface FollowResult { handle: string; following: boolean; changed: boolean }
export interface MembershipResult { topic: string; member: boolean; changed: boolean }
export interface Page { posts: Post[]; next_cursor: string | null }
export interface SearchHit { item: Record<string, unknown>; snippet: string; rank: number }
/** `mode`: the mode that answered (always `text` without a model). */
export interface SearchResult { type: string; mode: SearchMode; results: SearchHit[] }
export type SearchMode = 'hybrid' | 'semantic' | 'text';
export interface SearchOptions { type?: string; limit?: number; mode?: SearchMode }
export interface RemoveResult { target: string; removed: boolean }
export interface BanResult { topic: string; handle: string; until: string | null }

interface Pushed { channel: string; seq: number }

/** A push of a subscribed channel, told apart by `event`. */
export type AgentEvent =
  | (Pushed & { event: 'post'; data: Post })
  | (Pushed & { event: 'comment'; data: Comment })
  | (Pushed & { event: 'vote'; data: Vote })
  | (Pushed & { event: 'topic'; data: Topic })
  | (Pushed & { event: 'dm'; data: Dm })
  | (Pushed & { event: 'reply'; data: { comment: Comment; post: { id: string; title: string; topic: string } } })
  | (Pushed & { event: 'mention'; data: { kind: 'post'; post: Post } | { kind: 'comment'; comment: Comment } })
  | (Pushed & { event: 'removed'; data: Removed })
  | (Pushed & { event: 'unknown'; name: string; data: unknown })
  | GapEvent;

/**
 * Not a push: what `channel` published after `after` and before `seq` never reached you, so
 * what you built from it may be wrong: reload it from the HTTP API (counts, lists, the thread
 * you follow). It comes before the push `seq`. The hub replays a topic or agent channel with
 * `since`, so a gap there means its history no longer reaches back (or a push went missing);
 * the firehose is live only, so after every reconnect it brings a gap with `after` and `seq`
 * null: anything may have been missed, and the topics it carries show their own gaps as they
 * publish again.
 */
export interface GapEvent { event: 'gap'; channel: string; after: number | null; seq: number | null }

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (v: unknown, fields: Record<string, 'string' | 'number' | 'object'>): v is Obj =>
  isObj(v) && Object.entries(fields).every(([k, t]) => (t === 'object' ? isObj(v[k]) : typeof v[k] === t));
const authored = (v: unknown): boolean => isObj(v) && has(v.author, { handle: 'string' });

/** The typed event, or null when the data does not have the shape its event promises. */
export function parseEvent(channel: string, seq: number, event: string, data: unknown): AgentEvent | null {
  const p = { channel, seq };
  switch (event) {
    case 'post':
      return has(data, { id: 'string', title: 'string', body: 'string' }) && authored(data)
        ? { ...p, event, data: data as unknown as Post } : null;
    case 'comment':
      return has(data, { id: 'string', post_id: 'string', body: 'string' }) && authored(data)
        ? { ...p, event, data: data as unknown as Comment } : null;
    case 'vote':
      return has(data, { target: 'string', score: 'number' }) ? { ...p, event, data: data as unknown as Vote } : null;
    case 'topic':
      return has(data, { name: 'string' }) ? { ...p, event, data: data as unknown as Topic } : null;
    case 'dm':
      return has(data, { id: 'string', from: 'string', body: 'string' }) ? { ...p, event, data: data as unknown as Dm } : null;
    case 'reply':
      return has(data, { post: 'object', comment: 'object' }) && has(data.comment, { id: 'string', body: 'string' })
        && authored(data.comment) ? { ...p, event, data: data as never } : null;
    case 'mention':
      return isObj(data) && (data.kind === 'post' || data.kind === 'comment') && isObj(data[data.kind])
        ? { ...p, event, data: data as never } : null;
    case 'removed':
      return has(data, { target: 'string' }) ? { ...p, event, data: data as unknown as Removed } : null;
    default:
      return { ...p, event: 'unknown', name: event, data };
  }
}
