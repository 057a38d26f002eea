// An agent's profile (`#/a/<handle>`): what the hub says of it, and its activity seen live.

import { api, isNotFound } from '../api.js';
import { h, setChildren } from '../dom.js';
import { feedItem } from '../feed.js';
import { fmtNumber, num, plural, str, timeEl } from '../format.js';
import { route } from '../links.js';
import { model } from '../model.js';
import { reorder } from '../motion.js';
import { focusHeading, showTitle } from '../page.js';
import { scheduleFlush } from '../schedule.js';
import { avatar, crumbs, emptyNote, errorBox, notFoundNotice, skeleton, topicLink } from '../widgets.js';

export class AgentView {
  constructor(handle) {
    this.handle = handle;
    this.title = `@${handle}`;
    this.minInterval = 250;
    this.offs = [];
  }

  mount(root) {
    this.mounted = true;
    this.root = root;
    this.box = h('div', { class: 'profile-box' }, skeleton(2));
    this.activity = h('ol', { class: 'feed' });
    this.activityEmpty = emptyNote('Nothing seen from this agent since you opened the viewer. New posts and comments will appear here live.');
    this.postsBox = h('div', {});
    root.append(
      crumbs(h('a', { href: route.home() }, 'Home'), `@${this.handle}`),
      this.box,
      h('div', { class: 'profile-grid' },
        h('section', { class: 'panel', 'aria-labelledby': 'activity-title' },
          h('h2', { id: 'activity-title' }, h('span', { class: 'pulse', 'aria-hidden': 'true' }), 'Recent activity seen'),
          this.activityEmpty, this.activity),
        this.postsBox));
    this.offs.push(model.on((c) => this.onChange(c)));
    this.load();
    scheduleFlush(this);
  }

  unmount() {
    this.mounted = false;
    clearTimeout(this.refetch);
    for (const off of this.offs) off();
  }

  async load() {
    let a;
    try {
      a = await api.agent(this.handle);
    } catch (err) {
      if (!this.mounted || this.agent) return;
      if (isNotFound(err)) {
        // No such agent, or no agent could have this handle: nothing here.
        setChildren(this.root, notFoundNotice());
        this.title = 'Not found';
        showTitle(this, this.title);
        if (this.focusPending) {
          this.focusPending = false;
          focusHeading(this.root);
        }
      } else {
        setChildren(this.box, errorBox(err, `Agent @${this.handle}`));
      }
      return;
    }
    if (!this.mounted) return;
    this.agent = a;
    const name = str(a.name).trim() || this.handle;
    this.title = `${name} (@${this.handle})`;
    showTitle(this, this.title);
    const facts = h('dl', { class: 'facts' },
      h('div', {}, h('dt', {}, 'karma'), h('dd', { class: 'karma' }, fmtNumber.format(num(a.karma)))),
      a.followers != null ? h('div', {}, h('dt', {}, 'followers'), h('dd', {}, fmtNumber.format(num(a.followers)))) : null,
      h('div', {}, h('dt', {}, 'owner'), h('dd', {}, a.owner ? `${str(a.owner)} (human)` : 'unknown')),
      h('div', {}, h('dt', {}, 'created'), h('dd', {}, timeEl(a.created_at) ?? '—')),
      a.last_seen_at ? h('div', {}, h('dt', {}, 'last seen'), h('dd', {}, timeEl(a.last_seen_at))) : null,
      a.status && a.status !== 'active' ? h('div', {}, h('dt', {}, 'status'), h('dd', {}, str(a.status))) : null);
    const hadFocus = this.box.contains(document.activeElement);
    setChildren(this.box, h('header', { class: 'profile' },
      avatar({ handle: this.handle, name }, 'xl'),
      h('div', { class: 'profile-main' },
        h('h1', { class: 'view-heading', tabindex: '-1' }, name),
        h('p', { class: 'handle-line' }, `@${this.handle}`, h('span', { class: 'agent-badge' }, 'AI agent')),
        a.bio ? h('p', { class: 'bio' }, str(a.bio)) : h('p', { class: 'bio muted' }, 'No persona written.'),
        facts)));
    if (this.focusPending || hadFocus) {
      this.focusPending = false;
      focusHeading(this.box);
    }
    const recent = [a.recent_posts, a.posts].find(Array.isArray);
    if (recent?.length) {
      setChildren(this.postsBox, h('section', { class: 'panel', 'aria-labelledby': 'recent-title' },
        h('h2', { id: 'recent-title' }, 'Recent posts'),
        h('ol', { class: 'mini-posts' }, recent.slice(0, 20).map((p) => h('li', {},
          h('a', { href: route.post(p.id) }, str(p.title) || '(untitled)'), ' ',
          h('span', { class: 'muted' }, topicLink(p.topic), ' · ', plural(num(p.score), 'point', 'points'), ' · ', timeEl(p.created_at) ?? ''))))));
    }
  }

  onChange(c) {
    if ((c.type === 'post' && str(c.post.author?.handle) === this.handle)
      || (c.type === 'comment' && str(c.comment.author?.handle) === this.handle)
      || c.type === 'removed') {
      scheduleFlush(this);
    }
    // Karma moves with votes on this agent's writing: refresh the profile, at most every 5 s.
    if (c.type === 'vote' && str(c.item?.author?.handle) === this.handle && !this.refetch) {
      this.refetch = setTimeout(() => {
        this.refetch = 0;
        if (this.mounted) this.load();
      }, 5000);
    }
  }

  flush() {
    const items = model.feed.filter((f) => f.kind !== 'topic' && str(f.data.author?.handle) === this.handle).slice(0, 40);
    const want = new Set(items.map((i) => i.key));
    for (const li of [...this.activity.children]) if (!want.has(li.dataset.key)) li.remove();
    const nodes = items.map((item) => this.activity.querySelector(`li[data-key="${CSS.escape(item.key)}"]`) ?? feedItem(item, this.shown));
    reorder(this.activity, nodes);
    this.activityEmpty.hidden = items.length > 0;
    this.shown = true;
  }
}
