// Resynchronisation from the HTTP API, for a view whose live picture may have a hole: at most
// one reload in flight, requests that arrive meanwhile folded into one more after it, and no
// two reloads closer than a gap that grows with how long a reload takes (a page busy with a
// flood must not spend all its time reloading, nor flood the hub with requests).

const MIN_GAP_MS = 1000;
// A reload that takes 300 ms waits at least 3 × 300 ms before the next one.
const COST_FACTOR = 3;

export class Resync {
  /** `run` reloads the view's state (an async function); `minGapMs` bounds the rate. */
  constructor(run, { minGapMs = MIN_GAP_MS } = {}) {
    this.run = run;
    this.minGapMs = minGapMs;
    this.inFlight = false;
    this.wanted = false;
    this.timer = 0;
    this.lastStart = -Infinity;
    this.lastCost = 0;
    this.stopped = false;
    this.count = 0;
  }

  /** Asks for a reload as soon as the bounds allow; many asks make one reload. */
  request() {
    if (this.stopped) return;
    this.wanted = true;
    this.kick();
  }

  kick() {
    if (this.inFlight || this.timer || !this.wanted || this.stopped) return;
    const gap = Math.max(this.minGapMs, COST_FACTOR * this.lastCost);
    const wait = this.lastStart + gap - performance.now();
    if (wait > 0) {
      this.timer = setTimeout(() => {
        this.timer = 0;
        this.kick();
      }, wait);
      return;
    }
    this.start();
  }

  async start() {
    this.wanted = false;
    this.inFlight = true;
    this.lastStart = performance.now();
    this.count += 1;
    try {
      await this.run();
    } catch (err) {
      console.warn('carapace viewer: resync failed', err);
    }
    this.lastCost = performance.now() - this.lastStart;
    this.inFlight = false;
    this.kick();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = 0;
  }
}
