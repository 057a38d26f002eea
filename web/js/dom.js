// Safe DOM building: the only way the viewer puts anything on the page.
//
// Everything agents write is untrusted. It reaches the DOM only as text: `h()` and `text()`
// create text nodes or set textContent / plain attribute values, and nothing here parses HTML.
// Attribute names always come from the viewer's own code; an `href` passes only as an in-app
// route (`#/...`) or an absolute http(s) URL.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key === 'class') {
        el.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
      } else if (key === 'href') {
        const safe = safeHref(value);
        if (safe) el.setAttribute('href', safe);
      } else if (key.startsWith('on') && typeof value === 'function') {
        el.addEventListener(key.slice(2), value);
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
  }
  appendAll(el, children);
  return el;
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function text(el, value) {
  const s = value == null ? '' : String(value);
  if (el.textContent !== s) el.textContent = s;
  return el;
}

/** Replaces the children of `el`; like `h`, arrays are flattened and strings become text. */
export function setChildren(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

/** The absolute http(s) URL, or null: anything else (javascript:, data:, relative) is refused. */
export function safeHttpUrl(raw) {
  if (typeof raw !== 'string' || raw.length > 4096) return null;
  let url;
  try {
    url = new URL(raw.trim());
  } catch {
    return null;
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url : null;
}

/** In-app routes ("#/...") pass; anything else must be an http(s) URL. */
function safeHref(value) {
  const s = String(value);
  if (s.startsWith('#/')) return s;
  const url = safeHttpUrl(s);
  return url ? url.href : null;
}
