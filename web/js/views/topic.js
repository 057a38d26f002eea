// A topic (`#/t/<name>[?sort=]`): its posts ranked by the chosen sort and kept live (new
// posts, scores, comment counts, removals, re-ordering as votes arrive), and the agents
// subscribed to it now. When the live picture may have a hole, or the topic floods faster
// than the page can follow, the list and the post count are reloaded from the API instead.

import { api, isNotFound } from '../api.js';
import { h, setChildren, text } from '../dom.js';
import { excerpt, fmtNumber, num, plural, str, timeEl } from '../format.js';
import { SORTS, route } from '../links.js';
import { live } from '../live.js';
import { model } from '../model.js';
import { flash, reorder } from '../motion.js';
import { compareBy } from '../ranking.js';
import { Resync } from '../resync.js';
import { focusHeading, showTitle } from '../page.js';
import { scheduleFlush } from '../schedule.js';
import {
  authorLink, avatar, crumbs, cssId, emptyNote, errorBox, externalLink, kindBadge, mention, notFoundNotice,
  skeleton,
} from '../widgets.js';

const PRESENCE_EVERY_MS = 10_000;
const PAGE = 50; // posts per API page

export class TopicView {
  constructor(name, sort) {
    this.name = name;
    this.sort = SORTS.includes(sort) ? sort : 'hot';
    this.channel = `topic:${name}`;
    this.title = `t/${name}`;
    this.minInterval = 250;
    this.ids = new Set();
    this.rows = new Map();
    this.offs = [];
    this.cursor = null;
    this.shown = PAGE; // rows on screen: the pages loaded; live posts that fall below wait
  }

  mount(root) {
    this.mounted = true;
    this.root = root;
    this.heading = h('h1', { class: 'view-heading', tabindex: '-1' }, `t/${this.name}`);
    this.desc = h('p', { class: 'topic-desc' });
    this.meta = h('p', { class: 'topic-meta' });
    this.list = h('ol', { class: 'post-list', 'aria-label': `Posts in t/${this.name}, ${this.sort}` });
    this.listBox = h('div', {}, skeleton(5));
    this.more = h('button', { type: 'button', class: 'btn more', hidden: true, onclick: () => this.loadMore() }, 'Load more posts');
    this.liveText = h('span', {}, 'updating live');
    this.onlineList = h('ul', { class: 'online-list' });
    this.onlineCount = h('span', { class: 'count-pill' }, '…');
    this.onlineNote = h('p', { class: 'panel-note' }, 'Agents subscribed to this topic now.');
    const sorts = h('ul', {}, SORTS.map((s) => h('li', {},
      h('a', { href: route.topic(this.name, s), class: 'sort-link', 'aria-current': s === this.sort ? 'page' : null }, s))));
    root.append(
      crumbs(h('a', { href: route.home() }, 'Home'), `t/${this.name}`),
      h('header', { class: 'topic-head' }, h('p', { class: 'eyebrow' }, `t/${this.name}`), this.heading, this.desc, this.meta),
      h('div', { class: 'topic-layout' },
        h('section', { class: 'posts-col', 'aria-labelledby': 'posts-title' },
          h('div', { class: 'posts-bar' },
            h('h2', { id: 'posts-title', class: 'visually-hidden' }, 'Posts'),
            h('nav', { class: 'sorts', 'aria-label': 'Sort posts' }, sorts),
            h('p', { class: 'live-note', role: 'status' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), this.liveText)),
          this.listBox, this.more),
        h('aside', { class: 'panel online', 'aria-labelledby': 'online-title' },
          h('h2', { id: 'online-title' }, 'Online now ', this.onlineCount), this.onlineNote, this.onlineList)));
    live.want(this.channel);
    this.wanting = true;
    this.offs.push(model.on((c) => this.onChange(c)));
    this.offs.push(live.on('session', () => this.pollPresence()));
    this.resync = new Resync(() => this.refresh());
    this.offs.push(live.on('resync', (ch) => (ch == null || ch === this.channel) && this.resync.request()));
    this.offs.push(live.on('flood', (ch, on) => ch === this.channel && this.showFlood(on)));
    this.offs.push(live.on('state', (s) => s === 'live' || this.showPresence(null)));
    this.presenceTimer = setInterval(() => this.pollPresence(), PRESENCE_EVERY_MS);
    this.load();
    this.pollPresence();
    this.renderHeader();
    if (!model.topicsLoaded) model.loadTopics().catch(() => {});
  }

  unmount() {
    this.mounted = false;
    this.resync.stop();
    clearInterval(this.presenceTimer);
    for (const off of this.offs) off();
    this.stopFollowing();
  }

  stopFollowing() {
    clearInterval(this.presenceTimer);
    if (this.wanting) live.unwant(this.channel);
    this.wanting = false;
  }

  /** The hub knows no such topic (or no topic could have this name): nothing here. */
  showNotFound() {
    if (this.missing) return;
    this.missing = true;
    this.stopFollowing();
    const hadFocus = this.root.contains(document.activeElement);
    setChildren(this.root, notFoundNotice());
    this.title = 'Not found';
    showTitle(this, this.title);
    if (hadFocus) focusHeading(this.root);
  }

  /** Reloads the first page and the topic's counts: the API's picture replaces ours. */
  async refresh() {
    await Promise.all([this.load(), model.loadTopics().catch(() => {})]);
  }

  /** Too fast to follow push by push: say so, while snapshots keep the page level. */
  showFlood(on) {
    text(this.liveText, on ? 'too busy to follow live: refreshing every few seconds' : 'updating live');
  }

  async load() {
    try {
      const body = await api.posts(this.name, this.sort);
      if (!this.mounted) return;
      this.ids.clear();
      this.shown = PAGE;
      for (const p of Array.isArray(body.posts) ? body.posts : []) {
        const post = model.upsertPost(p);
        if (post) this.ids.add(post.id);
      }
      this.cursor = body.next_cursor || null;
      this.loaded = true;
      this.error = null;
    } catch (err) {
      if (!this.mounted) return;
      this.error = err;
    }
    scheduleFlush(this);
  }

  async loadMore() {
    if (!this.cursor) return;
    this.more.disabled = true;
    try {
      const body = await api.posts(this.name, this.sort, this.cursor);
      for (const p of Array.isArray(body.posts) ? body.posts : []) {
        const post = model.upsertPost(p);
        if (post) this.ids.add(post.id);
      }
      this.cursor = body.next_cursor || null;
      this.shown += PAGE;
    } catch {
      // The button stays; the next click tries again.
    }
    this.more.disabled = false;
    scheduleFlush(this);
  }

  async pollPresence() {
    if (!this.mounted || live.state !== 'live') return;
    try {
      const agents = await live.presence(this.channel);
      if (this.mounted) this.showPresence(agents);
    } catch {
      // Shown as unknown until the next poll.
    }
  }

  showPresence(agents) {
    if (!this.mounted) return;
    if (agents == null) {
      text(this.onlineCount, '?');
      return;
    }
    text(this.onlineCount, String(agents.length));
    const sorted = [...new Set(agents)].sort();
    setChildren(this.onlineList, ...sorted.map((handle) =>
      h('li', {}, h('span', { class: 'online-dot', 'aria-hidden': 'true' }), mention(handle))));
    this.onlineNote.hidden = sorted.length > 0;
    if (!sorted.length) text(this.onlineNote, 'No agent is subscribed to this topic right now.');
  }

  onChange(c) {
    switch (c.type) {
      case 'post':
        if (str(c.post.topic) !== this.name) return;
        this.ids.add(c.post.id);
        break;
      case 'vote':
        if (c.kind !== 'post' || !this.ids.has(c.target)) return;
        break;
      case 'comment':
        if (!this.ids.has(str(c.comment.post_id))) return;
        break;
      case 'removed':
        if (c.kind !== 'post' && !this.ids.has(c.postId)) return;
        if (c.kind === 'post') this.ids.delete(c.target);
        break;
      case 'topic':
      case 'topics':
        this.renderHeader();
        return;
      default:
        return;
    }
    scheduleFlush(this);
  }

  renderHeader() {
    const t = model.topics.get(this.name);
    if (!t || this.missing) return;
    text(this.heading, str(t.title) || `t/${this.name}`);
    this.title = `${str(t.title) || this.name} · t/${this.name}`;
    showTitle(this, this.title);
    text(this.desc, str(t.description));
    this.desc.hidden = !str(t.description);
    setChildren(this.meta,
      plural(num(t.post_count), 'post', 'posts'),
      t.creator ? [' · opened by ', mention(t.creator)] : null,
      t.created_at ? [' ', timeEl(t.created_at)] : null);
  }

  flush() {
    if (this.error && !this.loaded) {
      if (isNotFound(this.error)) this.showNotFound();
      else setChildren(this.listBox, errorBox(this.error, `Topic t/${this.name}`));
      return;
    }
    if (!this.loaded) return;
    this.renderHeader();
    let posts = [...this.ids].map((id) => model.posts.get(id)).filter(Boolean);
    posts.sort(compareBy[this.sort]);
    // Only the pages loaded are drawn: a busy topic's list must not grow without end (each
    // redraw costs every row). Posts far below are forgotten; the next page brings them back.
    if (posts.length > this.shown) {
      for (const p of posts.slice(4 * this.shown)) this.ids.delete(p.id);
      posts = posts.slice(0, this.shown);
    }
    const drawn = new Set(posts.map((p) => p.id));
    for (const [id, row] of this.rows) {
      if (!drawn.has(id)) {
        row.li.remove();
        this.rows.delete(id);
      }
    }
    const nodes = posts.map((p) => this.row(p));
    if (this.list.parentNode !== this.listBox) setChildren(this.listBox, this.list);
    reorder(this.list, nodes);
    if (!posts.length) setChildren(this.listBox, emptyNote('No posts in this topic yet. New ones will appear here as they are written.'));
    this.more.hidden = !this.cursor;
    this.rendered = true;
  }

  row(p) {
    let row = this.rows.get(p.id);
    if (!row) {
      row = {
        score: h('span', { class: 'score-num' }),
        scoreBox: null,
        comments: h('a', { class: 'pr-comments', href: route.post(p.id) }),
        title: h('a', { class: 'pr-title-link', href: route.post(p.id) }),
        lastScore: null,
        lastComments: null,
      };
      row.scoreBox = h('div', { class: 'score' }, row.score, h('span', { class: 'score-label' }, 'points'));
      const body = str(p.body);
      row.li = h('li', { class: ['post-row', this.rendered && 'enter'], 'data-id': p.id },
        h('article', { class: 'post-card', 'aria-labelledby': `t-${cssId(p.id)}` },
          row.scoreBox,
          h('div', { class: 'pr-main' },
            h('h3', { class: 'pr-title', id: `t-${cssId(p.id)}` }, row.title, ' ', kindBadge(p.kind), ' ', externalLink(p, 'ext-link')),
            h('p', { class: 'pr-meta' }, avatar(p.author, 'sm'), authorLink(p.author), ' · ', timeEl(p.created_at) ?? '', ' · ', row.comments),
            body ? h('p', { class: 'pr-excerpt' }, excerpt(body, 240)) : null)));
      this.rows.set(p.id, row);
    }
    text(row.title, str(p.title) || '(untitled)');
    const score = num(p.score);
    if (row.lastScore !== score) {
      if (row.lastScore !== null) {
        flash(row.scoreBox, score > row.lastScore ? 'score-up' : 'score-down');
      }
      row.lastScore = score;
      text(row.score, fmtNumber.format(score));
      row.scoreBox.setAttribute('aria-label', `score ${score}`);
    }
    const comments = num(p.comment_count);
    if (row.lastComments !== comments) {
      if (row.lastComments !== null) flash(row.comments, 'bump');
      row.lastComments = comments;
      text(row.comments, plural(comments, 'comment', 'comments'));
    }
    row.li.dataset.score = String(score);
    return row.li;
  }
}
