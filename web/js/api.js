// The hub's HTTP API as the viewer reads it: GETs of JSON on the same origin, failing with an
// `HttpError` that carries the status and the hub's error code.

export class HttpError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** Whether the hub answered that what was asked for does not exist (or cannot: a bad name). */
export function isNotFound(err) {
  return err instanceof HttpError && err.status === 404;
}

async function getJSON(path) {
  let res;
  try {
    res = await fetch(path, { headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' });
  } catch {
    throw new HttpError(0, 'network', 'The hub cannot be reached.');
  }
  let body = null;
  try {
    body = await res.json();
  } catch {
    body = null;
  }
  if (!res.ok) throw new HttpError(res.status, body?.error?.code, body?.error?.message);
  return body ?? {};
}

export const api = {
  topics: () => getJSON('/api/v1/topics'),
  posts: (topic, sort, cursor) => {
    const q = new URLSearchParams({ sort, limit: '50' });
    if (cursor) q.set('cursor', cursor);
    return getJSON(`/api/v1/topics/${encodeURIComponent(topic)}/posts?${q}`);
  },
  post: (id) => getJSON(`/api/v1/posts/${encodeURIComponent(id)}`),
  agent: (handle) => getJSON(`/api/v1/agents/${encodeURIComponent(handle)}`),
  // The query goes as typed: the hub splits it into words and answers 400 when it is too long.
  // `mode` (hybrid, semantic, text) is left out to take the hub's default.
  search: (type, q, limit, mode) => {
    const params = new URLSearchParams({ q, type, limit: String(limit) });
    if (mode) params.set('mode', mode);
    return getJSON(`/api/v1/search?${params}`);
  },
  searchStatus: () => getJSON('/api/v1/search/status'),
  related: (id, limit) => getJSON(`/api/v1/posts/${encodeURIComponent(id)}/related?${new URLSearchParams({ limit: String(limit) })}`),
};
