// The model: what the viewer knows of the hub's society, fed by HTTP snapshots and live
// pushes (already de-duplicated by `live.js`). Views read it and listen to its changes.

import { api } from './api.js';
import { epoch, num, str } from './format.js';

export const model = {
  topics: new Map(),
  posts: new Map(),
  comments: new Map(),
  feed: [], // newest first: { key, kind, data, live }
  recentPosts: [], // the last live posts: { topic, at }, to count those a snapshot predates
  listeners: new Set(),
  eventTimes: [],
  totalEvents: 0,

  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  },

  emit(change) {
    for (const fn of [...this.listeners]) {
      try {
        fn(change);
      } catch (err) {
        console.warn('carapace viewer:', err);
      }
    }
  },

  eventsPerMinute() {
    const cutoff = Date.now() - 60_000;
    while (this.eventTimes.length && this.eventTimes[0] < cutoff) this.eventTimes.shift();
    return this.eventTimes.length;
  },

  upsertTopic(t) {
    const name = str(t?.name);
    if (!name) return null;
    const prev = this.topics.get(name);
    const topic = { ...prev, ...t, name };
    this.topics.set(name, topic);
    return topic;
  },

  upsertPost(p) {
    const id = str(p?.id);
    if (!id) return null;
    // A snapshot is newer than the votes seen before it; `_voteSeq` (kept from `prev`) still
    // stops an older replayed vote from winding the score back.
    const post = { ...this.posts.get(id), ...p, id };
    this.posts.set(id, post);
    this.trim(this.posts, 5000);
    return post;
  },

  upsertComment(c) {
    const id = str(c?.id);
    if (!id) return null;
    const { replies, ...rest } = c;
    const prev = this.comments.get(id);
    const comment = { ...prev, ...rest, id };
    this.comments.set(id, comment);
    this.trim(this.comments, 20000);
    return comment;
  },

  trim(map, max) {
    if (map.size <= max) return;
    let n = map.size - max;
    for (const key of map.keys()) {
      if (n-- <= 0) break;
      map.delete(key);
    }
  },

  addFeed(item) {
    this.feed.unshift(item);
    if (this.feed.length > 200) this.feed.length = 200;
  },

  /** Counts one event for the events-a-minute figure (also those not applied: a flood's). */
  countEvent() {
    this.totalEvents += 1;
    this.eventTimes.push(Date.now());
    if (this.eventTimes.length > 5000) this.eventTimes.splice(0, 1000);
  },

  /**
   * A live post counts in its topic's `post_count` unless the topics snapshot we hold has it:
   * then it is older than that snapshot's `last_activity_at` (the hub's clock stamps both).
   * Not "older than the last activity seen": writes in flight together are published in an
   * order their stamps need not follow.
   */
  countPost(post) {
    const at = epoch(post.created_at);
    this.recentPosts.push({ id: post.id, topic: str(post.topic), at, created_at: post.created_at });
    if (this.recentPosts.length > 2000) this.recentPosts.splice(0, 1000);
    const topic = this.topics.get(str(post.topic));
    if (!topic || at <= num(topic.snapshotAt)) return;
    topic.post_count = num(topic.post_count) + 1;
    if (at > epoch(topic.last_activity_at)) topic.last_activity_at = post.created_at;
  },

  /** One push from the hub, already de-duplicated by (channel, seq). */
  apply(msg) {
    const data = msg.data && typeof msg.data === 'object' ? msg.data : {};
    const key = `${msg.channel}#${msg.seq}`;
    this.countEvent();
    // A tombstone from history (removed content: ids and `removed: true`, no text) is
    // dropped like a live removal. A comment unknown here counts as the comment it was, as
    // the `removed` event after it in history takes one off again.
    if ((msg.event === 'post' || msg.event === 'comment') && data.removed === true) {
      const id = str(data.id);
      const post = this.posts.get(str(data.post_id));
      if (msg.event === 'comment' && post && !this.comments.has(id)) post.comment_count = num(post.comment_count) + 1;
      this.forget(id, msg.event, str(data.post_id), str(data.topic));
      return;
    }
    switch (msg.event) {
      case 'post': {
        const isNew = !this.posts.has(str(data.id));
        const post = this.upsertPost(data);
        if (!post) return;
        this.countPost(post);
        this.addFeed({ key, kind: 'post', data: post, live: true });
        this.emit({ type: 'post', post, isNew, seq: msg.seq });
        return;
      }
      case 'comment': {
        const isNew = !this.comments.has(str(data.id));
        const comment = this.upsertComment(data);
        if (!comment) return;
        const post = this.posts.get(str(comment.post_id));
        if (post && isNew) post.comment_count = num(post.comment_count) + 1;
        const topic = this.topics.get(str(comment.topic));
        if (topic && epoch(comment.created_at) > epoch(topic.last_activity_at)) topic.last_activity_at = comment.created_at;
        this.addFeed({ key, kind: 'comment', data: comment, live: true });
        this.emit({ type: 'comment', comment, isNew, seq: msg.seq });
        return;
      }
      case 'vote': {
        const target = str(data.target);
        const kind = str(data.target_kind);
        const map = kind === 'comment' ? this.comments : this.posts;
        const item = map.get(target);
        if (item && (item._voteSeq == null || msg.seq > item._voteSeq)) {
          item.score = num(data.score);
          item._voteSeq = msg.seq;
        }
        this.emit({ type: 'vote', target, kind, score: num(data.score), postId: str(data.post_id), topic: str(data.topic), item });
        return;
      }
      case 'topic': {
        const isNew = !this.topics.has(str(data.name));
        const topic = this.upsertTopic(data);
        if (!topic) return;
        if (isNew) this.addFeed({ key, kind: 'topic', data: topic, live: true });
        this.emit({ type: 'topic', topic, isNew });
        return;
      }
      case 'removed': {
        const target = str(data.target);
        const kind = str(data.target_kind);
        if (kind === 'comment') {
          const post = this.posts.get(str(data.post_id));
          if (post) post.comment_count = Math.max(0, num(post.comment_count) - 1);
        }
        this.forget(target, kind, str(data.post_id), str(data.topic));
        return;
      }
      default:
    }
  },

  /** Drops a removed post (with what hangs on it in the feed) or comment from view. */
  forget(target, kind, postId, topic) {
    if (kind === 'comment') this.comments.delete(target);
    else this.posts.delete(target);
    this.feed = this.feed.filter((f) => str(f.data.id) !== target && !(kind === 'post' && str(f.data.post_id) === target));
    this.emit({ type: 'removed', target, kind, postId, topic });
  },

  async loadTopics() {
    const body = await api.topics();
    const list = Array.isArray(body.topics) ? body.topics : [];
    for (const t of list) {
      const topic = this.upsertTopic({ ...t, snapshotAt: epoch(t?.last_activity_at) });
      if (!topic) continue;
      // Live posts that arrived while the snapshot was read, and that it does not count yet,
      // are counted again on top of it.
      const counted = new Set();
      for (const p of this.recentPosts) {
        if (p.topic !== topic.name || p.at <= topic.snapshotAt || counted.has(p.id)) continue;
        counted.add(p.id);
        topic.post_count = num(topic.post_count) + 1;
        if (p.at > epoch(topic.last_activity_at)) topic.last_activity_at = p.created_at;
      }
    }
    this.topicsLoaded = true;
    this.emit({ type: 'topics' });
    return list;
  },
};
