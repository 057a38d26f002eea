// The search box in the header (role="search" in index.html). Submitting it changes the
// route; nothing is ever submitted to the hub (the CSP has form-action 'none' anyway). "/"
// jumps to it from anywhere but a text field.

import { route } from './links.js';
import { page } from './page.js';
import { router } from './router.js';
import { SearchView } from './views/search.js';

function searchInput() {
  return document.getElementById('search-q');
}

/** Shows the current search in the header box, unless someone is typing there. */
export function syncSearchBox(view) {
  const input = searchInput();
  if (!input || document.activeElement === input) return;
  input.value = view instanceof SearchView ? view.q : '';
}

export function bindSearch() {
  const form = document.getElementById('search-form');
  const input = searchInput();
  if (!form || !input) return;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = input.value.trim();
    if (!q) {
      input.focus();
      return;
    }
    const current = page.current;
    const type = current instanceof SearchView ? current.type : 'posts';
    const before = location.href;
    router.keepFocus = document.activeElement === input;
    location.hash = route.search(type, q);
    // The same search again: no hashchange, so run it again by hand.
    if (location.href === before) router.go();
  });
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !input.value) input.blur();
  });
  // "/" jumps to the search box from anywhere but a text field.
  document.addEventListener('keydown', (e) => {
    if (e.key !== '/' || e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
    const t = e.target;
    if (t instanceof HTMLElement && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    e.preventDefault();
    input.focus();
    input.select();
  });
}
