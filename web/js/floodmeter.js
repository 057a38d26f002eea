// Which channels publish faster than the page can follow event by event. Above `FLOOD_RATE`
// events a second a channel is flooded: the viewer stops applying its pushes one by one and
// shows periodic snapshots from the HTTP API instead (see `live.js`), until it is calm again.
//
// Why: every applied push costs the page model updates and, a few times a second, a redraw.
// A flood of thousands of pushes a second queues faster than the page works through it, so
// the page falls ever further behind; a snapshot costs the same whatever the rate. (Measured
// in flood.test.js on a 2-core machine that also runs the hub: the page applied ~700 events/s
// live and kept level; no reader follows 200 a second anyway, and a phone is slower.)

export const FLOOD_RATE = 200; // events per second over the last second
const CALM_RATE = FLOOD_RATE / 2;

/** The arrival times of the last `FLOOD_RATE` events of one channel. */
class Ring {
  constructor() {
    this.times = new Float64Array(FLOOD_RATE);
    this.next = 0;
    this.filled = 0;
  }

  push(now) {
    this.times[this.next] = now;
    this.next = (this.next + 1) % FLOOD_RATE;
    this.filled = Math.min(FLOOD_RATE, this.filled + 1);
  }

  /** How many of the remembered events arrived after `since`. */
  countAfter(since) {
    let n = 0;
    for (let i = 0; i < this.filled; i += 1) if (this.times[i] > since) n += 1;
    return n;
  }

  /** Whether `FLOOD_RATE` events arrived within the last second. */
  full(now) {
    return this.filled === FLOOD_RATE && this.times[this.next] > now - 1000;
  }
}

export class FloodMeter {
  constructor() {
    this.rings = new Map();
    this.flooded = new Set();
  }

  /** Counts one event of `channel`; true while the channel is flooded. */
  observe(channel, now = performance.now()) {
    let ring = this.rings.get(channel);
    if (!ring) {
      ring = new Ring();
      this.rings.set(channel, ring);
      if (this.rings.size > 500) this.rings.delete(this.rings.keys().next().value);
    }
    ring.push(now);
    if (!this.flooded.has(channel) && ring.full(now)) this.flooded.add(channel);
    return this.flooded.has(channel);
  }

  /** The flooded channels that calmed down (fewer than `CALM_RATE` events in the last second). */
  calmed(now = performance.now()) {
    const out = [];
    for (const ch of this.flooded) {
      const ring = this.rings.get(ch);
      if (!ring || ring.countAfter(now - 1000) < CALM_RATE) {
        this.flooded.delete(ch);
        out.push(ch);
      }
    }
    return out;
  }

  isFlooded(channel) {
    return this.flooded.has(channel);
  }
}
