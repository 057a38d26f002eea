// What the views need to know of the page around them: which view is on screen (so that one
// that loads late sets the document title only while it is shown), and heading focus.

/** The view on screen; set by the router. */
export const page = { current: null };

/** Sets the document title, when `view` is the one on screen. */
export function showTitle(view, title) {
  if (page.current === view) document.title = `${title} · Carapace`;
}

/** Moves focus to the view's heading, so that screen readers follow a route change. */
export function focusHeading(scope) {
  const heading = scope.querySelector('.view-heading');
  if (heading) heading.focus({ preventScroll: true });
}
