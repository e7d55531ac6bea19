// Moving connections under fd pressure: a move never needs more free fds than there are, on
// either side, and a connection that cannot move yet stays and moves later; none is closed.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { ChannelListener } from 'handover';
import { Sandbox, fixtures, root } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { ControlSession } = require(path.join(root, 'dist/session.js'));
const { binding } = require(path.join(root, 'dist/native.js'));

const serverScript = path.join(fixtures, 'moves-server.mjs');
let group;
const sandbox = new Sandbox();
let clients = [];
afterEach(async () => {
  for (const client of clients) client.socket.destroy();
  clients = [];
  await sandbox.cleanup();
});

async function startServer(env) {
  group = sandbox.group();
  const dir = path.join(sandbox.dir(), 'ctl');
  group.start([serverScript], { env: { HANDOVER_DIR: dir, KEEPALIVE_TIMEOUT: '120000', ...env } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { dir, pid: Number(pid), port: Number(port) };
}

/** A raw keep-alive HTTP client that records every close and error. */
class Client {
  constructor(port) {
    this.socket = net.connect(port, '127.0.0.1');
    this.closed = false;
    this.errors = [];
    this.buffer = '';
    this.waiter = undefined;
    this.socket.setEncoding('utf8');
    this.socket.on('error', (err) => this.errors.push(err));
    this.socket.on('close', () => {
      this.closed = true;
      this.waiter?.reject(new Error(`connection closed; got ${JSON.stringify(this.buffer)}`));
    });
    this.socket.on('data', (chunk) => {
      this.buffer += chunk;
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(this.buffer)?.[1] ?? 0);
      if (this.buffer.length < end + 4 + length) return;
      const pid = Number(/x-pid: (\d+)/i.exec(this.buffer)?.[1]);
      this.buffer = this.buffer.slice(end + 4 + length);
      const waiter = this.waiter;
      this.waiter = undefined;
      waiter?.resolve(pid);
    });
  }

  connected() {
    return new Promise((resolve, reject) => {
      this.socket.once('connect', resolve);
      this.socket.once('error', reject);
    });
  }

  /** request resolves with the pid that answered. */
  request() {
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
      this.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    });
  }
}

async function openClients(port, count, expectedPid) {
  const opened = [];
  for (let i = 0; i < count; i++) {
    const client = new Client(port);
    clients.push(client);
    opened.push(client);
    await client.connected();
    assert.equal(await client.request(), expectedPid);
  }
  return opened;
}

describe('moving connections under fd pressure', () => {
  test('250 keep-alive connections under an open-file limit of 300, through 3 upgrades: none closed, all moved each time', { timeout: 120_000 }, async () => {
    const first = await startServer({ EXIT_ON_RETIRED: '1', GRACEFUL_TIMEOUT: '20000' });
    // The limit applies to the first generation and, inherited, to every successor.
    execFileSync('prlimit', ['--pid', String(first.pid), '--nofile=300:300']);
    const open = await openClients(first.port, 250, first.pid);
    let pid = first.pid;
    for (let round = 0; round < 3; round++) {
      const since = group.lines.length;
      process.kill(pid, 'SIGHUP');
      const [, next] = await group.waitForLine(/^ready pid=(\d+) .*gen=successor/, { since, timeout: 30_000 });
      const [report] = await group.waitForLine(/^retired .*/, { since, timeout: 40_000 });
      assert.equal(report, 'retired closed=0 moved=250 remaining=0', `round ${round}`);
      pid = Number(next);
      const stale = open.filter((client) => client.buffer !== '');
      assert.equal(stale.length, 0, `round ${round}: unexpected bytes ${JSON.stringify(stale[0]?.buffer)}`);
      const answers = await Promise.all(open.map((client) => client.request()));
      assert.deepEqual(new Set(answers), new Set([pid]), `round ${round}: every connection is served by the new generation\n${group.lines.join("\n")}`);
    }
    assert.deepEqual(open.filter((client) => client.closed).length, 0);
    assert.deepEqual(open.flatMap((client) => client.errors), []);
    assert.equal(group.lines.filter((line) => line.startsWith('warning')).length, 0, group.lines.join('\n'));
  });

  test('a successor with fewer free fds than connections takes what it can; the rest stay, then move as it frees fds', { timeout: 120_000 }, async () => {
    // The predecessor can send all 250 at once; the successor (limit 200) cannot take them all.
    const first = await startServer({ SUCCESSOR_NOFILE: '200', GRACEFUL_TIMEOUT: '60000' });
    const open = await openClients(first.port, 250, first.pid);
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+) .*gen=successor/, { since, timeout: 30_000 });
    // Clients let go of 120 connections (wherever they are now): the successor gets fds back.
    const leaving = open.slice(0, 120);
    const staying = open.slice(120);
    for (const client of leaving) client.socket.destroy();
    const [report] = await group.waitForLine(/^retired .*/, { since, timeout: 90_000 });
    assert.match(report, /remaining=0$/);
    const answers = await Promise.all(staying.map((client) => client.request()));
    assert.deepEqual(new Set(answers), new Set([Number(next)]), 'every remaining connection moved to the successor');
    assert.equal(staying.filter((client) => client.closed).length, 0, report);
    assert.deepEqual(staying.flatMap((client) => client.errors), []);
    assert.ok(!group.lines.some((line) => /^rollback|^warning/.test(line)), group.lines.join('\n'));
  });
});

describe('moving connections with almost no free fd in the predecessor', () => {
  test('a predecessor with one fd to spare dups what fits and waits for each answer: all 250 move, none closed', { timeout: 120_000 }, async () => {
    const first = await startServer({ GRACEFUL_TIMEOUT: '20000', EXIT_ON_RETIRED: '1' });
    const open = await openClients(first.port, 250, first.pid);
    // Two free fds: the control connection and a listener dup take them; one is left to dup.
    const limit = fs.readdirSync(`/proc/${first.pid}/fd`).length + 2;
    execFileSync('prlimit', ['--pid', String(first.pid), `--nofile=${limit}:4096`]);
    const since = group.lines.length;
    // An external successor (started here, with this test's limits), so the predecessor spawns nothing.
    group.start([serverScript], { env: { HANDOVER_DIR: first.dir, KEEPALIVE_TIMEOUT: '120000' } });
    const [, next] = await group.waitForLine(/^ready pid=(\d+) .*gen=successor/, { since, timeout: 30_000 });
    const [report] = await group.waitForLine(/^retired .*/, { since, timeout: 90_000 });
    assert.equal(report, 'retired closed=0 moved=250 remaining=0');
    const answers = await Promise.all(open.map((client) => client.request()));
    assert.deepEqual(new Set(answers), new Set([Number(next)]));
    assert.equal(open.filter((client) => client.closed).length, 0);
    assert.deepEqual(open.flatMap((client) => client.errors), []);
  });
});

describe('fds in flight against the sender\'s limit (ETOOMANYREFS)', () => {
  test('a channel that may not put more fds in flight waits for the peer to take them, and loses none', { timeout: 30_000 }, async () => {
    // Unprivileged (the kernel exempts CAP_SYS_RESOURCE), with a limit of 64: 200 fds in 10 frames.
    const asNobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    const child = spawn('prlimit', ['--nofile=64:64', process.execPath, path.join(fixtures, 'inflight-sender.mjs')], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...asNobody,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    // A sender stuck for good is ended here, by its pid, and fails the test.
    const stuck = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const exit = await new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    clearTimeout(stuck);
    assert.deepEqual(exit, { code: 0, signal: null }, `${stdout}\n${stderr}`);
    assert.match(stdout, /^sent frames=10$/m);
    assert.match(stdout, /^received frames=10 fds=200$/m);
  });
});

describe('a predecessor without a single free fd', () => {
  test('the connection travels with its own fd (no dup possible) and is closed there once acknowledged', { timeout: 30_000 }, async () => {
    group = sandbox.group();
    const dir = sandbox.dir();
    const listener = new ChannelListener(path.join(dir, 'control.sock'));
    const accepted = new Promise((resolve) => listener.once('channel', resolve));
    const child = spawn('prlimit', ['--nofile=128:128', process.execPath, path.join(fixtures, 'lend-mover.mjs'), path.join(dir, 'control.sock')], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
    group.track(child.pid);
    const lines = [];
    child.stdout.setEncoding('utf8').on('data', (chunk) => lines.push(...chunk.split('\n').filter(Boolean)));
    const session = new ControlSession(await accepted, 'test');
    const conn = await session.next(['CONN'], 10_000, 'CONN');
    assert.equal(conn.fds.length, 1);
    const port = Number(/^filled free=0 port=(\d+)$/.exec(lines[0] ?? '')?.[1]);
    // What arrived is the moving connection itself: a connected stream socket on its server's port.
    const info = binding().socketInfo(conn.fds[0]);
    assert.deepEqual([info.type, info.listening, info.port], ['stream', false, port]);
    await session.send({ type: 'CONN_ACK', acked: conn.conns.map(({ id }) => id), refused: [] });
    const exit = await new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    assert.equal(exit, 0);
    assert.deepEqual(lines, [`filled free=0 port=${port}`, 'moved']);
    fs.closeSync(conn.fds[0]);
    session.close();
    listener.close();
  });
});
