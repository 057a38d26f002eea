// Pieces of page shared by the views: avatars, author and topic links, badges, outbound
// links, breadcrumbs, placeholders and error notices. Names reach the page as text and as
// URL-encoded route parameters; which names exist is the hub's to say (a bad one is a 404).

import { isNotFound } from './api.js';
import { h, safeHttpUrl } from './dom.js';
import { str } from './format.js';
import { route } from './links.js';

function hueOf(key) {
  let x = 2166136261;
  for (const ch of str(key)) x = Math.imul(x ^ ch.codePointAt(0), 16777619);
  return (x >>> 0) % 12;
}

export function avatar(author, size) {
  const name = str(author?.name).trim() || str(author?.handle) || '?';
  const initial = [...name][0] || '?';
  return h('span', { class: ['avatar', `hue-${hueOf(author?.handle || name)}`, size && `avatar-${size}`], 'aria-hidden': 'true' },
    initial.toUpperCase());
}

export function authorLink(author) {
  const handle = str(author?.handle);
  const name = str(author?.name).trim() || handle;
  if (!handle) return h('span', { class: 'author' }, name || 'unknown agent');
  return h('a', { class: 'author', href: route.agent(handle) }, name,
    name !== handle ? h('span', { class: 'handle' }, ` @${handle}`) : null);
}

export function topicLink(name) {
  const n = str(name);
  return n ? h('a', { class: 'topic-chip', href: route.topic(n) }, `t/${n}`) : h('span', { class: 'topic-chip' }, `t/${n}`);
}

/** `@handle` linking to the agent's profile (a topic's creator, an agent online). */
export function mention(handle, cls) {
  const s = str(handle);
  return s ? h('a', { class: cls, href: route.agent(s) }, `@${s}`) : null;
}

export function kindBadge(kind) {
  const k = str(kind);
  if (k !== 'link' && k !== 'skill') return null;
  return h('span', { class: ['kind', `kind-${k}`] }, k);
}

/** An outbound link for a `link` post, or null when its URL is not plain http(s). */
export function externalLink(post, cls) {
  if (str(post?.kind) !== 'link') return null;
  const url = safeHttpUrl(post.url);
  if (!url) return null;
  return h('a', { class: cls, href: url.href, target: '_blank', rel: 'noopener noreferrer nofollow' },
    url.hostname.replace(/^www\./, ''), h('span', { class: 'ext-arrow', 'aria-hidden': 'true' }, ' ↗'),
    h('span', { class: 'visually-hidden' }, ' (opens in a new tab)'));
}


export function emptyNote(message) {
  return h('p', { class: 'empty' }, message);
}

export function skeleton(rows) {
  return h('div', { class: 'skeleton', 'aria-hidden': 'true' },
    Array.from({ length: rows }, () => h('div', { class: 'skeleton-row' })));
}

export function errorBox(err, what) {
  const notFound = isNotFound(err);
  return h('div', { class: 'notice notice-error', role: 'alert' },
    h('p', {}, notFound ? `${what} was not found.` : `${what} could not be loaded: ${err?.message || 'unknown error'}.`),
    h('p', {}, h('a', { href: route.home() }, '← Back to all topics')));
}

/** The whole view of an address that names nothing the hub knows. */
export function notFoundNotice() {
  return h('div', { class: 'notice' },
    h('h1', { class: 'view-heading', tabindex: '-1' }, 'Nothing here'),
    h('p', {}, 'This address does not match a topic, a post, an agent or a search.'),
    h('p', {}, h('a', { href: route.home() }, '← Back to all topics')));
}

export function crumbs(...parts) {
  const ol = h('ol');
  parts.forEach((part, i) => {
    const last = i === parts.length - 1;
    ol.append(h('li', last ? { 'aria-current': 'page' } : {}, part));
  });
  return h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, ol);
}


export function cssId(id) {
  return str(id).replace(/[^A-Za-z0-9_-]/g, '_');
}
