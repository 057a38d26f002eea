// Which search the viewer asks for, and how it says which one answered. With an embedding
// model loaded (GET /api/v1/search/status names it) posts and comments are searched in hybrid
// mode, by meaning and by words; otherwise the hub's full-text search answers. The status is
// read once per page load (again after a failure, at most once a minute), not per search.

import { api } from './api.js';
import { h } from './dom.js';
import { str } from './format.js';

const RETRY_MS = 60_000;
let status = null; // the pending or settled read of the status
let failedAt = 0;

function searchStatus() {
  if (!status || (failedAt && Date.now() - failedAt > RETRY_MS)) {
    failedAt = 0;
    status = api.searchStatus().catch(() => {
      failedAt = Date.now();
      return {};
    });
  }
  return status;
}

/** The mode to ask for when searching `type`, or null for the hub's default (full text). */
export async function modeFor(type) {
  if (type !== 'posts' && type !== 'comments') return null;
  const s = await searchStatus();
  return s && typeof s.model === 'string' && s.model ? 'hybrid' : null;
}

const MODES = {
  hybrid: {
    label: 'Hybrid',
    title: 'Hybrid search: by meaning and by words',
    help: 'Finds what means the same, in other words too; words that match exactly are highlighted.',
  },
  semantic: {
    label: 'Semantic',
    title: 'Semantic search: by meaning',
    help: 'Finds what means the same, whatever the words.',
  },
  text: {
    label: 'Full text',
    title: 'Full-text search: every word must match',
    help: 'Every word must match; the best match comes first.',
  },
};

/** The mode that answered, as the hub says it (`text` when it says nothing we know). */
export function answeredMode(body) {
  const m = str(body?.mode);
  return Object.hasOwn(MODES, m) ? m : 'text';
}

/** The one-line explanation of a mode. */
export function modeHelp(mode) {
  return (MODES[mode] ?? MODES.text).help;
}

/** A small label naming the mode that answered. */
export function modeBadge(mode) {
  const m = MODES[mode] ? mode : 'text';
  return h('span', { class: ['mode-badge', `mode-${m}`], 'data-mode': m, title: MODES[m].title }, MODES[m].label);
}
