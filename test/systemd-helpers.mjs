// Playing systemd in tests: a real datagram socket that receives every sd_notify message (and the
// fds of FDSTORE=1, kept as systemd's fd store keeps them), and starting a service the way systemd
// starts it: its stored fds at 3, 4, ... with LISTEN_FDS, LISTEN_PID (the service's own pid) and
// LISTEN_FDNAMES.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { binding } from '../dist/native.js';
import { isAlive } from './helpers.mjs';

/** socketInode names the kernel socket behind an fd (systemd's same_fd() for sockets). */
function socketInode(fd) {
  return fs.readlinkSync(`/proc/self/fd/${fd}`);
}

/**
 * NotifyReceiver binds a datagram socket at `address` (a path, or '\0name' for an abstract name)
 * and receives every message. `messages` holds them in order as { text, fields, fds }.
 * FDSTORE=1 / FDSTOREREMOVE=1 update `store` as systemd would (duplicates of a socket already
 * stored are closed; removal is by name); other fds are closed.
 */
export class NotifyReceiver {
  constructor(address) {
    this.address = address;
    this.native = binding();
    this.fd = this.native.unixDatagramBind(address);
    this.messages = [];
    this.store = [];
    this.waiters = new Set();
    this.buffer = Buffer.alloc(64 * 1024);
    this.poller = this.native.createPoller(this.fd, () => this.drain());
    this.poller.start(true, false);
  }

  /** The value of $NOTIFY_SOCKET that names this receiver. */
  get notifySocket() {
    return this.address.startsWith('\0') ? `@${this.address.slice(1)}` : this.address;
  }

  /** drain receives every message already queued, synchronously (the queue as it is right now). */
  drain() {
    for (;;) {
      const message = this.native.recvmsg(this.fd, this.buffer, 253);
      if (message === null) break;
      const text = this.buffer.toString('utf8', 0, message.bytes);
      const fields = new Map(text.split('\n').filter(Boolean).map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
      this.messages.push({ text, fields, fds: message.fds.length });
      this.keep(fields, message.fds);
    }
    for (const waiter of [...this.waiters]) waiter();
  }

  keep(fields, fds) {
    if (fields.get('FDSTOREREMOVE') === '1') {
      for (const entry of this.store.filter((e) => e.name === fields.get('FDNAME'))) this.native.close(entry.fd);
      this.store = this.store.filter((e) => e.name !== fields.get('FDNAME'));
    } else if (fields.get('FDSTORE') === '1') {
      for (const fd of fds) {
        const inode = socketInode(fd);
        if (this.store.some((e) => e.inode === inode)) this.native.close(fd);
        else this.store.push({ name: fields.get('FDNAME') ?? 'stored', fd, inode });
      }
      return;
    }
    for (const fd of fds) this.native.close(fd);
  }

  /** texts: the messages so far, each with its lines joined by spaces. */
  texts() {
    return this.messages.map((m) => m.text.trim().replace(/\n/g, ' '));
  }

  /** waitFor resolves with the index of the first message from `since` on that satisfies `predicate`. */
  waitFor(predicate, { since = 0, timeout = 15_000, what = 'a notify message' } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const index = this.messages.findIndex((m, i) => i >= since && predicate(m));
        if (index < 0) return false;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(index);
        return true;
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out waiting for ${what}; received: ${JSON.stringify(this.texts())}`));
      }, timeout);
      this.waiters.add(check);
      this.drain();
    });
  }

  close() {
    this.poller.close();
    this.native.close(this.fd);
    for (const entry of this.store.splice(0)) this.native.close(entry.fd);
    if (!this.address.startsWith('\0')) fs.rmSync(this.address, { force: true });
  }
}

/**
 * startWithListenFds starts `node args...` as systemd starts a service with fds: `fds` at 3, 4, ...
 * and LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID set (a shell sets LISTEN_PID to its own pid, then
 * execs node, which keeps that pid). The process joins `group` (its lines, its cleanup).
 */
export function startWithListenFds(group, args, { fds, names, env = {} }) {
  return startCommand(group, '/bin/sh', ['-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"', process.execPath, ...args], {
    env: { ...env, LISTEN_FDS: String(fds.length), LISTEN_FDNAMES: names.join(':') },
    fds,
  });
}

/** startCommand runs any command in `group` (its stdout lines, its cleanup by pid), with `fds` at 3, 4, ... */
export function startCommand(group, file, args, { env = {}, fds = [] } = {}) {
  const child = spawn(file, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe', ...fds] });
  group.track(child.pid);
  readline.createInterface({ input: child.stdout }).on('line', (line) => group.onLine(line));
  child.stderr.on('data', (chunk) => {
    group.stderr.push(chunk.toString());
    if (process.env.HANDOVER_TEST_VERBOSE) process.stderr.write(chunk);
  });
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

/** gone resolves once `pid` no longer runs. */
export async function gone(pid, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (isAlive(pid)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} still runs after ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
