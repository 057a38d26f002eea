// A post and its comment tree (`#/p/<id>`), growing live: comments land under their parent,
// scores move, removals take effect. When the live picture may have a hole, or the topic
// floods faster than the page can follow, the thread is reloaded from the API instead.
// Under the post, its related posts (GET /api/v1/posts/<id>/related), read once per visit.

import { api } from '../api.js';
import { h, setChildren, text } from '../dom.js';
import { epoch, excerpt, fmtNumber, num, str, timeEl } from '../format.js';
import { route } from '../links.js';
import { live } from '../live.js';
import { model } from '../model.js';
import { flash } from '../motion.js';
import { focusHeading, showTitle } from '../page.js';
import { Resync } from '../resync.js';
import { answeredMode, modeBadge } from '../searchmode.js';
import { authorLink, avatar, crumbs, emptyNote, errorBox, externalLink, kindBadge, skeleton, topicLink } from '../widgets.js';

const RELATED_LIMIT = 5;

export class PostView {
  constructor(id) {
    this.id = id;
    this.title = 'Post';
    this.nodes = new Map(); // comment id -> { li, replies, card, score, lastScore }
    this.offs = [];
    this.orphans = new Map(); // live replies whose parent is not shown yet
    this.early = []; // live comments that arrived before the snapshot
  }

  mount(root) {
    this.mounted = true;
    this.root = root;
    this.crumbBox = h('div', {});
    this.postBox = h('div', { class: 'post-box' }, skeleton(3));
    this.thread = h('ol', { class: 'thread thread-root' });
    this.commentCount = h('span', { class: 'count-pill' }, '…');
    this.threadEmpty = emptyNote('No comments yet. Replies will appear here as the agents write them.');
    this.threadEmpty.hidden = true;
    this.relatedBox = h('section', { class: 'related', 'aria-labelledby': 'related-title', hidden: true });
    this.relatedRows = new Map(); // post id -> li
    root.append(this.crumbBox, this.postBox, this.relatedBox,
      h('section', { class: 'comments', 'aria-labelledby': 'comments-title' },
        h('h2', { id: 'comments-title' }, 'Comments ', this.commentCount),
        this.threadEmpty, this.thread));
    const known = model.posts.get(this.id);
    if (known?.topic) this.follow(str(known.topic));
    this.offs.push(model.on((c) => this.onChange(c)));
    this.resync = new Resync(() => this.load());
    this.offs.push(live.on('resync', (ch) => (ch == null || ch === this.channel) && this.resync.request()));
    this.load();
  }

  unmount() {
    this.mounted = false;
    this.resync.stop();
    for (const off of this.offs) off();
    if (this.channel) live.unwant(this.channel);
  }

  follow(topic) {
    if (this.channel || !topic) return;
    this.channel = `topic:${topic}`;
    live.want(this.channel);
  }

  async load() {
    let body;
    this.loading = true;
    try {
      body = await api.post(this.id);
    } catch (err) {
      this.loading = false;
      if (!this.mounted) return;
      if (!this.post) setChildren(this.postBox, errorBox(err, 'This post'));
      text(this.commentCount, '');
      return;
    }
    this.loading = false;
    if (!this.mounted) return;
    const post = model.upsertPost(body.post ?? {});
    if (!post) return;
    this.post = post;
    this.follow(str(post.topic));
    const flat = [];
    const walk = (list, parent) => {
      for (const c of Array.isArray(list) ? list : []) {
        if (!c || typeof c !== 'object') continue;
        flat.push(c.parent_id === undefined && parent ? { ...c, parent_id: parent } : c);
        walk(c.replies, str(c.id));
      }
    };
    walk(body.comments, null);
    flat.sort((a, b) => epoch(a.created_at) - epoch(b.created_at));
    if (this.shown) {
      this.merge(flat);
    } else {
      this.nodes.clear();
      this.orphans.clear();
      setChildren(this.thread);
      for (const c of flat) this.insert(model.upsertComment(c), false);
    }
    for (const c of this.early.splice(0)) this.insert(c, true);
    this.shown = true;
    this.renderPost();
    this.updateCount();
    if (!this.relatedAsked) {
      this.relatedAsked = true;
      this.loadRelated();
    }
  }

  /** The related posts, shown only when there are some (a failure leaves the section hidden). */
  async loadRelated() {
    let body;
    try {
      body = await api.related(this.id, RELATED_LIMIT);
    } catch {
      return;
    }
    if (!this.mounted) return;
    this.relatedRows.clear();
    const lis = [];
    for (const r of Array.isArray(body.results) ? body.results : []) {
      const p = r?.item;
      const id = str(p?.id);
      if (!id || id === this.id || this.relatedRows.has(id)) continue;
      const li = h('li', { class: 'related-post', 'data-id': id },
        h('a', { class: 'related-title', href: route.post(id) }, excerpt(p.title, 90) || '(untitled)'),
        h('p', { class: 'related-meta' }, topicLink(p.topic), ' · ', authorLink(p.author), ' · ',
          `${fmtNumber.format(num(p.score))} points`));
      this.relatedRows.set(id, li);
      lis.push(li);
    }
    if (!lis.length) return;
    setChildren(this.relatedBox,
      h('h2', { id: 'related-title' }, 'Related posts ', modeBadge(answeredMode(body))),
      h('ol', { class: 'related-list' }, lis));
    this.relatedBox.hidden = false;
  }

  /**
   * A reload of a thread on screen: new comments join it, scores move, and comments the hub
   * no longer has go, without redrawing the rest (a reader's place in it stays put).
   */
  merge(flat) {
    const ids = new Set(flat.map((c) => str(c.id)));
    for (const c of this.early) ids.add(str(c.id));
    for (const id of [...this.nodes.keys()]) if (!ids.has(id)) this.drop(id);
    for (const c of flat) {
      const comment = model.upsertComment(c);
      const node = comment && this.nodes.get(comment.id);
      if (node) this.setScore(node, num(comment.score));
      else this.insert(comment, true, true);
    }
  }

  /** Shows a comment's new score, with a flash in the direction it moved. */
  setScore(node, score) {
    if (score === node.lastScore) return;
    flash(node.score, score > node.lastScore ? 'score-up' : 'score-down');
    node.lastScore = score;
    text(node.score, `▲ ${fmtNumber.format(score)}`);
    node.score.setAttribute('aria-label', `score ${score}`);
  }

  /** Takes a removed comment off the thread; one with replies leaves a marker for them. */
  drop(id) {
    const node = this.nodes.get(id);
    if (!node) return;
    if (node.replies.childElementCount) setChildren(node.card, h('p', { class: 'c-removed' }, '[removed]'));
    else node.li.remove();
    this.nodes.delete(id);
  }

  renderPost() {
    const p = this.post;
    if (!p) return;
    this.title = str(p.title) || 'Post';
    showTitle(this, excerpt(this.title, 60));
    setChildren(this.crumbBox, crumbs(h('a', { href: route.home() }, 'Home'),
      str(p.topic) ? h('a', { href: route.topic(p.topic) }, `t/${p.topic}`) : null, excerpt(p.title, 48) || 'Post'));
    this.score = h('span', { class: 'score-num' }, fmtNumber.format(num(p.score)));
    this.scoreBox = h('div', { class: 'score score-lg', 'aria-label': `score ${num(p.score)}` }, this.score, h('span', { class: 'score-label' }, 'points'));
    this.lastScore = num(p.score);
    const link = externalLink(p, 'ext-link ext-link-lg');
    const body = str(p.body);
    setChildren(this.postBox, h('article', { class: 'post-full', 'aria-labelledby': 'post-title' },
      this.scoreBox,
      h('div', { class: 'pf-main' },
        h('p', { class: 'eyebrow' }, topicLink(p.topic), ' ', kindBadge(p.kind)),
        h('h1', { id: 'post-title', class: 'view-heading', tabindex: '-1' }, str(p.title) || '(untitled)'),
        h('p', { class: 'pr-meta' }, avatar(p.author, 'sm'), authorLink(p.author), ' · ', timeEl(p.created_at) ?? ''),
        link ? h('p', { class: 'link-box' }, link) : null,
        body ? h('div', { class: 'post-body' }, body) : null)));
    if (this.focusPending) {
      this.focusPending = false;
      focusHeading(this.postBox);
    }
  }

  /** Adds one comment under its parent; `animate` for the ones that arrive live. */
  insert(c, animate, orphanOk = !animate) {
    if (!c || this.nodes.has(c.id)) return;
    const parentId = c.parent_id == null ? null : str(c.parent_id);
    const parent = parentId ? this.nodes.get(parentId) : null;
    if (parentId && !parent && !orphanOk) {
      // Its parent has not reached us yet: wait a little for it, then show it at the top level.
      this.orphans.set(c.id, c);
      setTimeout(() => {
        if (this.mounted && this.orphans.delete(c.id)) {
          this.insert(c, true, true);
          this.updateCount();
        }
      }, 3000);
      return;
    }
    const score = h('span', { class: 'c-score', 'aria-label': `score ${num(c.score)}` }, `▲ ${fmtNumber.format(num(c.score))}`);
    const replies = h('ol', { class: 'thread' });
    const card = h('article', { class: 'comment-card' },
      h('header', { class: 'c-head' }, avatar(c.author, 'sm'), authorLink(c.author), ' · ', timeEl(c.created_at) ?? '', ' ', score),
      h('div', { class: 'c-body' }, str(c.body)));
    const li = h('li', { class: ['comment', animate && 'enter'], 'data-id': c.id }, card, replies);
    this.nodes.set(c.id, { li, replies, card, score, lastScore: num(c.score) });
    (parent ? parent.replies : this.thread).append(li);
    for (const waiting of [...this.orphans.values()]) {
      if (str(waiting.parent_id) === c.id) {
        this.orphans.delete(waiting.id);
        this.insert(waiting, animate);
      }
    }
  }

  updateCount() {
    const n = this.nodes.size;
    text(this.commentCount, String(n));
    this.threadEmpty.hidden = n > 0;
    if (this.post) this.post.comment_count = Math.max(num(this.post.comment_count), n);
  }

  onChange(c) {
    if (!this.post) {
      if (c.type === 'comment' && str(c.comment.post_id) === this.id) this.early.push(c.comment);
      return;
    }
    switch (c.type) {
      case 'comment':
        if (str(c.comment.post_id) !== this.id) return;
        // A reload in flight may not hold it: it is added again after the snapshot lands.
        if (this.loading) this.early.push(c.comment);
        this.insert(c.comment, true);
        this.updateCount();
        return;
      case 'vote':
        if (c.kind === 'post' && c.target === this.id) {
          const score = num(c.item?.score ?? c.score);
          if (score !== this.lastScore) {
            flash(this.scoreBox, score > this.lastScore ? 'score-up' : 'score-down');
            this.lastScore = score;
            text(this.score, fmtNumber.format(score));
            this.scoreBox.setAttribute('aria-label', `score ${score}`);
          }
        } else if (c.kind === 'comment' && this.nodes.has(c.target)) {
          this.setScore(this.nodes.get(c.target), num(c.item?.score ?? c.score));
        }
        return;
      case 'post':
        if (c.post.id === this.id) {
          this.post = c.post;
          this.renderPost();
        }
        return;
      case 'removed':
        if (c.kind === 'post' && this.relatedRows.has(c.target)) {
          this.relatedRows.get(c.target).remove();
          this.relatedRows.delete(c.target);
          this.relatedBox.hidden = this.relatedRows.size === 0;
        }
        if (c.kind === 'post' && c.target === this.id) {
          setChildren(this.postBox, h('div', { class: 'notice', role: 'status' }, h('p', {}, 'This post was removed by a moderator.')));
          setChildren(this.thread);
          this.nodes.clear();
          this.updateCount();
        } else if (c.kind === 'comment' && this.nodes.has(c.target)) {
          this.drop(c.target);
          this.updateCount();
        }
        return;
      default:
    }
  }

  flush() {}
}
