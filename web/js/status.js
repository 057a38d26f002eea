// The connection status in the header (role="status" in index.html): live, reconnecting or
// offline, with a button to retry at once.

import { text } from './dom.js';
import { live } from './live.js';

const STATE_LABEL = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
};

export function bindStatus() {
  const box = document.getElementById('conn');
  const label = document.getElementById('conn-label');
  const retry = document.getElementById('conn-retry');
  retry.addEventListener('click', () => live.retryNow());
  const show = (state, detail) => {
    box.dataset.state = state;
    text(label, STATE_LABEL[state] ?? state);
    box.title = detail ? `${STATE_LABEL[state]} — ${detail}` : STATE_LABEL[state];
    retry.hidden = state === 'live' || state === 'connecting';
    document.body.dataset.conn = state;
  };
  live.on('state', show);
  show(live.state, live.detail);
}
