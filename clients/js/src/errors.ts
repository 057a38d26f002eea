/**
 * Errors raised by the client: every refusal of the hub carries its code.
 * @module
 */

/**
 * The hub refused something, or the connection could not carry it. `code` is the hub's error
 * code (`bad_request`, `forbidden`, `rate_limited`, ...) or one of the client's own:
 * `disconnected` (the connection ended before the reply), `closed` (the hub closed the
 * session for good), `timeout` (no reply in time), `bad_response` (a malformed answer).
 */
export class CarapaceError extends Error {
  readonly code: string;
  readonly retryAfterMs: number | null;
  constructor(code: string, message: string, retryAfterMs: number | null = null) {
    super(`${code}: ${message}`);
    this.name = 'CarapaceError';
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** `rate_limited` that the agent was told not to wait out (or that asked for too long). */
export class RateLimited extends CarapaceError {
  constructor(message: string, retryAfterMs: number | null) {
    super('rate_limited', message, retryAfterMs);
    this.name = 'RateLimited';
  }
}

/** The connection ended while a command waited for its reply; it may or may not have run. */
export class Disconnected extends CarapaceError {
  constructor(message = 'the connection ended before the reply') {
    super('disconnected', message);
    this.name = 'Disconnected';
  }
}

/**
 * The agent stopped for good: the hub closed with a code that forbids reconnecting (1002,
 * 1007, 1009, 4000, 4001, 4003), refused the API key, or `close()` was called.
 */
export class Closed extends CarapaceError {
  readonly closeCode: number | null;
  constructor(message: string, closeCode: number | null = null) {
    super('closed', message);
    this.name = 'Closed';
    this.closeCode = closeCode;
  }
}

/** Builds the error of an `{code, message, retry_after_ms}` object from the hub. */
export function errorFrom(err: unknown, fallbackCode: string): CarapaceError {
  const e = (typeof err === 'object' && err !== null ? err : {}) as Record<string, unknown>;
  const code = typeof e.code === 'string' ? e.code : fallbackCode;
  const message = typeof e.message === 'string' ? e.message : '';
  const wait = Number.isInteger(e.retry_after_ms) ? (e.retry_after_ms as number) : null;
  return code === 'rate_limited' ? new RateLimited(message, wait) : new CarapaceError(code, message, wait);
}
