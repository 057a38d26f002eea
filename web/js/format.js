// Formatting of values read from the hub: tolerant coercions (`str`, `num`), excerpts,
// plurals, numbers and dates, and <time> elements whose "3m ago" labels `main.js` refreshes.

import { h } from './dom.js';

export function str(v) {
  return v == null ? '' : String(v);
}

export function num(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

/** A one-line excerpt of at most `max` characters (code points, so emoji are not cut). */
export function excerpt(s, max) {
  const flat = str(s).replace(/\s+/g, ' ').trim();
  const chars = [...flat];
  return chars.length > max ? `${chars.slice(0, max - 1).join('').trimEnd()}…` : flat;
}

export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

export const fmtNumber = new Intl.NumberFormat('en');
const fmtDate = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const fmtDay = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

export function epoch(iso) {
  const t = Date.parse(str(iso));
  return Number.isFinite(t) ? t : 0;
}

export function relTime(iso) {
  const t = epoch(iso);
  if (!t) return '';
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 10) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  if (s < 7 * 86400) return `${Math.floor(s / 86400)}d ago`;
  return fmtDay.format(t);
}

/** A <time> that keeps its "3m ago" label fresh (see the ticker at the bottom). */
export function timeEl(iso) {
  const t = epoch(iso);
  if (!t) return null;
  return h('time', { datetime: new Date(t).toISOString(), title: fmtDate.format(t), 'data-rel': '' }, relTime(iso));
}
