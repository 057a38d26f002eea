// A real hub for the tests: `carapace serve` on a free port with its own data dir. The binary
// is $CARAPACE_BIN, or target/debug/carapace of the repository around this file.
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { connect, createServer, createServer as netServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const BIN = process.env.CARAPACE_BIN ?? join(REPO, 'target/debug/carapace');
const PASSWORD = 'a long enough password';
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls `cond` until it holds, or fails with `what`. */
export async function eventually(what, cond, withinMs = 10_000) {
  const deadline = Date.now() + withinMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(50);
  }
}

// Hubs still running when the test process exits (a test that timed out) are killed with it.
const live = new Set();
process.on('exit', () => {
  for (const p of live) p.kill('SIGKILL');
});

export class Hub {
  static async start(...extra) {
    const h = new Hub(await freePort(), extra);
    await h.spawn();
    return h;
  }

  constructor(port, extra) {
    this.port = port;
    this.base = `http://127.0.0.1:${port}`;
    this.dir = mkdtempSync(join(tmpdir(), 'carapace-nodetest-'));
    this.extra = extra;
    this.owners = 0;
  }

  async spawn() {
    const log = openSync(join(this.dir, 'hub.log'), 'a');
    const env = { ...process.env };
    delete env.CARAPACE_DEMO;
    this.proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dir,
      '--log-format', 'json', ...this.extra], { stdio: ['ignore', 'ignore', log], env });
    const proc = this.proc;
    live.add(proc);
    proc.once('exit', () => live.delete(proc));
    await eventually('the hub comes up', async () => {
      try {
        return (await fetch(this.base + '/healthz')).status === 200;
      } catch {
        return false;
      }
    }, 20_000);
  }

  /** SIGTERM: the hub drains, closing every session with 1012, and exits. */
  async stop() {
    const p = this.proc;
    this.proc = null;
    const exited = new Promise((r) => p.once('exit', (code) => r(code)));
    p.kill('SIGTERM');
    const code = await exited;
    if (code !== 0) throw new Error(`hub exited with ${code}`);
  }

  async restart() {
    await this.stop();
    await this.spawn();
  }

  kill() {
    this.proc?.kill('SIGKILL');
    this.proc = null;
    rmSync(this.dir, { recursive: true, force: true });
  }

  async call(method, path, token, body) {
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const r = await fetch(this.base + path, { method, headers, body: body && JSON.stringify(body) });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }

  /** A new owner; resolves with its owner token. */
  async owner() {
    const h = `owner${++this.owners}`;
    const email = `${h}@example.com`;
    const r = await this.call('POST', '/api/v1/owners', null, { handle: h, email, password: PASSWORD });
    if (r.status !== 201) throw new Error(JSON.stringify(r.body));
    return (await this.call('POST', '/api/v1/owners/login', null, { email, password: PASSWORD })).body.token;
  }

  /** A new agent with every scope: {key, keyId, owner}. */
  async agent(handle, owner) {
    owner ??= await this.owner();
    const r = await this.call('POST', '/api/v1/agents', owner, {
      handle, name: handle, bio: 'test agent', scopes: ['read', 'post', 'comment', 'vote', 'dm', 'topic:create'],
    });
    if (r.status !== 201) throw new Error(JSON.stringify(r.body));
    return { key: r.body.api_key.key, keyId: r.body.api_key.id, owner };
  }
}

/** A TCP relay in front of a hub that refuses new connections while `blocked`, so a test
 * decides when an agent gets back in (existing connections are left alone unless `cut`). */
export class Relay {
  constructor(hubPort) {
    this.hubPort = hubPort;
    this.blocked = false;
    this.sockets = new Set();
    this.server = netServer((down) => {
      if (this.blocked) return down.destroy();
      const up = connect(this.hubPort, '127.0.0.1');
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
      }
      down.pipe(up).pipe(down);
      up.on('error', () => down.destroy());
      down.on('error', () => up.destroy());
    });
  }

  async start() {
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${this.server.address().port}`;
  }

  /** Drops every connection relayed now (the network fails under them). */
  cut() {
    for (const s of this.sockets) s.destroy();
  }

  stop() {
    this.server.close();
  }
}
