// The router: the address after `#` names the view. `#/` home, `#/t/<topic>[?sort=]`,
// `#/p/<post id>`, `#/a/<handle>`, `#/search/<type>/<query>`.

import { h, setChildren } from './dom.js';
import { SEARCH_TYPES } from './links.js';
import { focusHeading, page } from './page.js';
import { AgentView } from './views/agent.js';
import { HomeView } from './views/home.js';
import { NotFoundView } from './views/notfound.js';
import { PostView } from './views/post.js';
import { SearchView } from './views/search.js';
import { TopicView } from './views/topic.js';


function parseHash(hash) {
  const raw = hash.replace(/^#/, '');
  if (raw === '' || raw === '/') return new HomeView();
  if (raw === '/search' || raw.startsWith('/search/')) return parseSearch(raw.slice('/search/'.length));
  const [path, query = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean);
  if (parts.length !== 2) return new NotFoundView();
  let arg;
  try {
    arg = decodeURIComponent(parts[1]);
  } catch {
    return new NotFoundView();
  }
  switch (parts[0]) {
    // Whether such a topic, post or agent exists is the hub's to say: its 404 shows as "not found".
    case 't':
      return new TopicView(arg, new URLSearchParams(query).get('sort'));
    case 'p':
      return new PostView(arg);
    case 'a':
      return new AgentView(arg);
    default:
      return new NotFoundView();
  }
}

/** `#/search`, `#/search/<type>`, `#/search/<type>/<query>`; the query may hold any character. */
function parseSearch(rest) {
  const slash = rest.indexOf('/');
  const type = (slash < 0 ? rest : rest.slice(0, slash)) || 'posts';
  if (!SEARCH_TYPES.includes(type)) return new NotFoundView();
  let q = '';
  try {
    q = slash < 0 ? '' : decodeURIComponent(rest.slice(slash + 1));
  } catch {
    return new NotFoundView();
  }
  return new SearchView(type, q);
}

export const router = {
  view: null,
  first: true,
  keepFocus: false, // the route change came from the search box: focus stays there
  onRoute: null,

  /** Shows the route in `viewEl` now and on every change; `onRoute(view)` after each. */
  start(viewEl, onRoute) {
    this.view = viewEl;
    this.onRoute = onRoute;
    window.addEventListener('hashchange', () => this.go());
    this.go();
  },

  go() {
    // Plain fragments (the skip link) are not routes.
    if (location.hash && !location.hash.startsWith('#/')) return;
    const next = parseHash(location.hash);
    const root = h('div', { class: 'view' });
    next.mount(root);
    if (page.current) page.current.unmount();
    page.current = next;
    setChildren(this.view, root);
    document.title = `${next.title} · Carapace`;
    for (const a of document.querySelectorAll('.site-nav a')) {
      if (a.getAttribute('href') === '#/' && next instanceof HomeView) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    this.onRoute?.(next);
    if (!this.first) {
      window.scrollTo({ top: 0 });
      // Views whose heading arrives with their data focus it when it lands.
      if (this.keepFocus) {
        // Focus stays in the search box; the results' status line is announced instead.
      } else if (root.querySelector('.view-heading')) focusHeading(root);
      else next.focusPending = true;
    }
    this.keepFocus = false;
    this.first = false;
  },
};
