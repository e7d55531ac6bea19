// Shared test helpers: real processes, real sockets, every process ended by pid.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as http from 'node:http';
import * as readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const fixtures = path.join(root, 'test', 'fixtures');

/** fdCount returns how many fds a process holds. */
export function fdCount(pid = process.pid) {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

/** fdList returns the targets of a process's fds (for leak diagnostics). */
export function fdList(pid = process.pid) {
  const dir = `/proc/${pid}/fd`;
  return fs.readdirSync(dir).map((fd) => {
    try {
      return `${fd} -> ${fs.readlinkSync(path.join(dir, fd))}`;
    } catch {
      return `${fd} -> ?`;
    }
  });
}

export function tmpDir(prefix = 'handover-test-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** waitUntil polls a condition (for process exits and files; never for the behaviour under test). */
export async function waitUntil(condition, timeout = 10_000, what = 'condition') {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await condition()) return;
    await sleep(20);
  }
  throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
}

/**
 * A group of processes started by one test. Successors spawned by them inherit stdout, so their
 * lines (`ready pid=N ...`) arrive here too; every pid seen is killed by `cleanup()`.
 */
export class ProcessGroup {
  constructor() {
    this.pids = new Set();
    this.lines = [];
    this.waiters = [];
    this.stderr = [];
  }

  start(args, { env = {}, cwd = root } = {}) {
    const child = spawn(process.execPath, args, {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.pids.add(child.pid);
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => this.onLine(line));
    child.stderr.on('data', (chunk) => {
      this.stderr.push(chunk.toString());
      if (process.env.HANDOVER_TEST_VERBOSE) process.stderr.write(chunk);
    });
    child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    return child;
  }

  onLine(line) {
    this.lines.push(line);
    const match = /pid=(\d+)/.exec(line);
    if (match) this.pids.add(Number(match[1]));
    for (const waiter of [...this.waiters]) waiter(line);
  }

  /** waitForLine resolves with the match of the first line (seen from now on, or already seen after `since`) matching `regex`. */
  waitForLine(regex, { timeout = 15_000, since = this.lines.length } = {}) {
    for (const line of this.lines.slice(since)) {
      const match = regex.exec(line);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const waiter = (line) => {
        const match = regex.exec(line);
        if (!match) return;
        clearTimeout(timer);
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        resolve(match);
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`timed out waiting for ${regex}; alive: ${[...this.pids].map((pid) => `${pid}=${isAlive(pid)}`).join(' ')}; stdout:\n${this.lines.join('\n')}\nstderr:\n${this.stderr.join('').slice(-4000)}`));
      }, timeout);
      this.waiters.push(waiter);
    });
  }

  track(pid) {
    this.pids.add(pid);
  }

  async cleanup() {
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await waitUntil(() => [...this.pids].every((pid) => !isAlive(pid)), 5000, 'processes to end').catch(() => undefined);
  }
}

/** get performs one HTTP request; agent false means a fresh connection (Connection: close). */
export function get(port, pathname = '/', { agent = false, host = '127.0.0.1', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: pathname, agent, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body, localPort: req.socket?.localPort }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

export function readPid(dir) {
  try {
    return Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8').trim());
  } catch {
    return undefined;
  }
}

/** Sandbox: the process groups and temp dirs of one test file; cleanup() ends and removes them all. */
export class Sandbox {
  constructor() {
    this.groups = [];
    this.dirs = [];
  }

  group() {
    const group = new ProcessGroup();
    this.groups.push(group);
    return group;
  }

  dir(prefix) {
    const dir = tmpDir(prefix);
    this.dirs.push(dir);
    return dir;
  }

  async cleanup() {
    for (const group of this.groups.splice(0)) await group.cleanup();
    for (const dir of this.dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** reachableByOthers tells whether a user with no rights of its own (uid 65534) can use file with `bits` (o+r 4, o+x 1). */
function reachableByOthers(file, bits) {
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    if ((fs.statSync(dir).mode & 0o001) === 0) return false;
    if (dir === path.dirname(dir)) break;
  }
  return (fs.statSync(file).mode & bits) === bits;
}

/**
 * forOtherUser fills `dir` (made world-readable) with what a child running as another user
 * (uid 65534) needs, because the checkout may not be reachable to it (a clone under a 0700
 * directory, which is what `mktemp -d` makes): a copy of the addon, and a copy of node when this
 * one lives where that user cannot run it (under /root, say). Returns the node to run, the addon
 * path to require, and dir itself as the cwd.
 */
export function forOtherUser(dir) {
  const require = createRequire(import.meta.url);
  fs.chmodSync(dir, 0o755);
  const addon = path.join(dir, 'handover.node');
  fs.copyFileSync(require('node-gyp-build').path(root), addon);
  fs.chmodSync(addon, 0o755);
  let node = fs.realpathSync(process.execPath);
  if (!reachableByOthers(node, 0o001)) {
    const copy = path.join(dir, 'node');
    fs.copyFileSync(node, copy);
    fs.chmodSync(copy, 0o755);
    node = copy;
  }
  return { node, addon, cwd: dir };
}
