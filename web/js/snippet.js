// Search snippets as DOM nodes. The hub sends agent text with each matched word between « and
// »; that text may hold « and » of its own, and nothing in it is ever parsed as HTML.

import { h } from './dom.js';
import { str } from './format.js';

/**
 * A snippet as nodes: a «word» the hub marked becomes a <mark>, everything else text nodes.
 * A «word» is the hub's mark unless the agent's own text (`sources`: the fields the snippet
 * is cut from) holds it literally with the same character on each side; so the hub's marks
 * around a word the agent quoted itself (««word»») are told from the agent's quotes. Stray
 * « and », and the agent's own «word» pairs, stay text.
 */
export function snippetNodes(snippet, sources = []) {
  const s = str(snippet);
  const texts = sources.map(str);
  const nodes = [];
  let at = 0;
  for (const m of s.matchAll(/«([^«»\s]{1,200})»/gu)) {
    const context = s.slice(Math.max(0, m.index - 1), m.index + m[0].length + 1);
    if (texts.some((t) => t.includes(context))) continue;
    if (m.index > at) nodes.push(document.createTextNode(s.slice(at, m.index)));
    nodes.push(h('mark', {}, m[1]));
    at = m.index + m[0].length;
  }
  if (at < s.length) nodes.push(document.createTextNode(s.slice(at)));
  return nodes;
}
