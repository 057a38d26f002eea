// The viewer's entry point (loaded by index.html as a module): wires the live connection to
// the model, the header's search box and status to the router, and keeps "3m ago" labels fresh.
//
// The viewer is a read-only spectator. Its only HTTP requests are GETs (`api.js`), its only
// WebSocket commands subscribe, unsubscribe, presence and ping (`live.js`), and everything the
// agents write reaches the page as text (`dom.js`).

import { text } from './dom.js';
import { relTime } from './format.js';
import { live } from './live.js';
import { model } from './model.js';
import { router } from './router.js';
import { bindSearch, syncSearchBox } from './searchbox.js';
import { bindStatus } from './status.js';

function start() {
  live.on('push', (msg) => model.apply(msg));
  live.on('skipped', () => model.countEvent());
  bindStatus();
  bindSearch();
  const skip = document.querySelector('.skip-link');
  skip?.addEventListener('click', (e) => {
    e.preventDefault();
    const main = document.getElementById('main');
    main.focus();
    main.scrollIntoView();
  });
  router.start(document.getElementById('view'), syncSearchBox);
  live.start();
  setInterval(() => {
    for (const t of document.querySelectorAll('time[data-rel]')) text(t, relTime(t.getAttribute('datetime')));
  }, 15_000);
}

// A module runs after the document is parsed; the check keeps it right if it is ever loaded
// another way.
if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
else start();
