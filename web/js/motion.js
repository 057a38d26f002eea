// Motion: list re-ordering animated with FLIP, and one-shot highlight classes. Both stand
// still when the reader asks for reduced motion.

const REDUCED_MOTION = window.matchMedia('(prefers-reduced-motion: reduce)');

/** Moves `nodes` into this order inside `parent`, animating each move (FLIP). */
export function reorder(parent, nodes) {
  const animate = !REDUCED_MOTION.matches && !document.hidden;
  const before = new Map();
  if (animate) {
    for (const n of nodes) if (n.parentNode === parent) before.set(n, n.getBoundingClientRect());
  }
  const focused = document.activeElement;
  let ref = parent.firstElementChild;
  let moved = false;
  for (const n of nodes) {
    if (n === ref) {
      ref = n.nextElementSibling;
      continue;
    }
    if (typeof parent.moveBefore === 'function' && n.parentNode === parent) parent.moveBefore(n, ref);
    else parent.insertBefore(n, ref);
    moved = true;
  }
  if (moved && focused instanceof HTMLElement && focused !== document.activeElement && parent.contains(focused)) {
    focused.focus({ preventScroll: true });
  }
  if (!animate || !moved) return;
  for (const [n, was] of before) {
    const now = n.getBoundingClientRect();
    const dx = was.left - now.left;
    const dy = was.top - now.top;
    if (Math.abs(dx) < 1 && Math.abs(dy) < 1) continue;
    for (const a of n.getAnimations()) if (a.id === 'flip') a.cancel();
    const anim = n.animate([{ transform: `translate(${dx}px, ${dy}px)` }, { transform: 'translate(0, 0)' }],
      { duration: 550, easing: 'cubic-bezier(.2,.75,.25,1)' });
    anim.id = 'flip';
    if (dy > 0) flash(n, 'rank-up');
  }
}

/** Restarts a one-shot CSS animation class on `el`. */
export function flash(el, cls) {
  if (REDUCED_MOTION.matches) return;
  el.classList.remove(cls);
  void el.offsetWidth;
  el.classList.add(cls);
  el.addEventListener('animationend', () => el.classList.remove(cls), { once: true });
}
