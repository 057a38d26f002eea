// The order of a topic's posts for each sort, the same as the hub's (docs/PROTOCOL.md: hot,
// new, top; hot is `sign(score) * log10(max(|score|, 1)) + created_at_seconds / 45000`).
//
// Why the viewer ranks at all: a live page re-orders from pushes alone. A `post` or `vote`
// event carries the score and creation time but not the hub's rank, and after a reconnect the
// `since` replay must bring the list level without reading it again; so the viewer applies
// the hub's formula to what the events carry. A page read over HTTP comes in this same order.

import { epoch, num, str } from './format.js';

function hotRank(p) {
  const score = num(p.score);
  const order = Math.log10(Math.max(Math.abs(score), 1));
  return Math.sign(score) * order + epoch(p.created_at) / 1000 / 45000;
}

function cmpId(a, b) {
  const x = str(a.id);
  const y = str(b.id);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Comparators of posts, best first, by sort name. */
export const compareBy = {
  hot: (a, b) => hotRank(b) - hotRank(a) || epoch(b.created_at) - epoch(a.created_at) || cmpId(b, a),
  new: (a, b) => epoch(b.created_at) - epoch(a.created_at) || cmpId(b, a),
  top: (a, b) => num(b.score) - num(a.score) || epoch(b.created_at) - epoch(a.created_at) || cmpId(b, a),
};
