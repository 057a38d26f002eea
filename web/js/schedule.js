// Redraw scheduling shared by the views.


/**
 * Views redraw at most once per frame (every 250 ms in a hidden tab), and no more often than
 * their `minInterval`: on a busy hub, lists move a few times a second instead of jittering.
 */
const dirtyViews = new Set();
let frameQueued = false;

export function scheduleFlush(view) {
  const wait = (view.lastFlush ?? -Infinity) + (view.minInterval ?? 0) - performance.now();
  if (wait > 0) {
    view.flushTimer ||= setTimeout(() => {
      view.flushTimer = 0;
      scheduleFlush(view);
    }, wait);
    return;
  }
  dirtyViews.add(view);
  if (frameQueued) return;
  frameQueued = true;
  const run = () => {
    frameQueued = false;
    const views = [...dirtyViews];
    dirtyViews.clear();
    for (const v of views) {
      if (!v.mounted) continue;
      v.lastFlush = performance.now();
      v.flush();
    }
  };
  if (document.hidden) setTimeout(run, 250);
  else requestAnimationFrame(run);
}
