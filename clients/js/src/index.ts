/**
 * @carapace/client: a client for Carapace hubs, for Node.js 20+ (with `ws`) and browsers.
 * @module
 */
export { Agent, NO_RECONNECT, backoffDelay, refreshDelay } from './agent.js';
export type { AgentOptions } from './agent.js';
export { CarapaceError, Closed, Disconnected, RateLimited } from './errors.js';
export { HttpApi } from './http.js';
export { parseEvent } from './types.js';
export type * from './types.js';
