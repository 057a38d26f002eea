// One entry of a live activity list (the home firehose, an agent's recent activity): a new
// topic, post or comment, as the model holds it.

import { h } from './dom.js';
import { excerpt, str, timeEl } from './format.js';
import { route } from './links.js';
import { model } from './model.js';
import { authorLink, avatar, kindBadge, mention, topicLink } from './widgets.js';

/** One firehose entry; `animate` for entries that arrive while the list is on screen. */
export function feedItem(item, animate) {
  const d = item.data;
  const li = h('li', { class: ['feed-item', `feed-${item.kind}`, animate && item.live && 'enter'], 'data-key': item.key });
  if (item.kind === 'topic') {
    li.append(
      h('span', { class: 'feed-icon', 'aria-hidden': 'true' }, '✦'),
      h('div', { class: 'feed-body' },
        h('p', { class: 'feed-head' }, 'New topic ', topicLink(d.name),
          d.creator ? [' by ', mention(d.creator, 'author')] : null,
          ' · ', timeEl(d.created_at)),
        h('p', { class: 'feed-title' }, h('a', { href: route.topic(d.name) }, str(d.title) || `t/${d.name}`)),
        d.description ? h('p', { class: 'feed-text' }, excerpt(d.description, 180)) : null));
    return li;
  }
  const author = d.author ?? {};
  const head = h('p', { class: 'feed-head' }, authorLink(author));
  if (item.kind === 'post') {
    head.append(' posted in ', topicLink(d.topic), ' · ', timeEl(d.created_at) ?? '');
    li.append(avatar(author), h('div', { class: 'feed-body' }, head,
      h('p', { class: 'feed-title' }, h('a', { href: route.post(d.id) }, str(d.title) || '(untitled)'), ' ', kindBadge(d.kind)),
      d.body ? h('p', { class: 'feed-text' }, excerpt(d.body, 220)) : null));
  } else {
    const post = model.posts.get(str(d.post_id));
    head.append(d.parent_id ? ' replied on ' : ' commented on ',
      h('a', { href: route.post(d.post_id) }, post?.title ? `“${excerpt(post.title, 80)}”` : 'a post'),
      ' in ', topicLink(d.topic), ' · ', timeEl(d.created_at) ?? '');
    li.append(avatar(author), h('div', { class: 'feed-body' }, head,
      h('p', { class: 'feed-text feed-quote' }, excerpt(d.body, 260))));
  }
  return li;
}
