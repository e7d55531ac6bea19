// Moving live connections between real processes, and the pitfalls that lose bytes or send FINs.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { Sandbox, fixtures } from './helpers.mjs';

let group;
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

function setup() {
  group = sandbox.group();
  const base = sandbox.dir();
  return path.join(base, 'ctl');
}

/** A client of the frame protocol that streams frames flat out and checks every acknowledgement. */
class FrameClient {
  constructor(port) {
    this.socket = net.connect(port, '127.0.0.1');
    this.sent = 0;
    this.acked = 0;
    this.pids = new Set();
    this.errors = [];
    this.ended = false;
    this.streaming = false;
    this.buffer = Buffer.alloc(0);
    this.socket.on('error', (err) => this.errors.push(err));
    this.socket.on('end', () => (this.ended = true));
    this.socket.on('data', (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 8) {
        const seq = this.buffer.readUInt32BE(0);
        const pid = this.buffer.readUInt32BE(4);
        this.buffer = this.buffer.subarray(8);
        if (seq !== this.acked) this.errors.push(new Error(`ack ${seq} where ${this.acked} was due`));
        this.acked++;
        this.pids.add(pid);
        this.lastPid = pid;
        this.waiter?.();
      }
    });
  }

  ready() {
    return new Promise((resolve) => this.socket.once('connect', resolve));
  }

  frames(count, size = 61) {
    const frames = [];
    for (let i = 0; i < count; i++) {
      const frame = Buffer.alloc(4 + size, i & 0xff);
      frame.writeUInt32BE(size, 0);
      frame.writeUInt32BE(this.sent++, 4);
      frames.push(frame);
    }
    return Buffer.concat(frames);
  }

  /**
   * stream writes frames as fast as the socket takes them until stop(), yielding to the event
   * loop between batches (so acknowledgements are read) and keeping at most ~64k frames unacknowledged.
   */
  stream() {
    this.streaming = true;
    const pump = () => {
      if (!this.streaming) return;
      if (this.sent - this.acked > 65_536) {
        setTimeout(pump, 1);
        return;
      }
      if (this.socket.write(this.frames(512))) setImmediate(pump);
      else this.socket.once('drain', pump);
    };
    pump();
  }

  stop() {
    this.streaming = false;
  }

  /** ackedBy resolves once a frame has been acknowledged by process `pid`. */
  ackedBy(pid, timeout = 15_000) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!this.pids.has(pid)) return false;
        clearTimeout(timer);
        this.socket.off('data', check);
        resolve();
        return true;
      };
      const timer = setTimeout(() => {
        this.socket.off('data', check);
        reject(new Error(`no frame acknowledged by ${pid}; by ${[...this.pids]}`));
      }, timeout);
      if (!check()) this.socket.on('data', check);
    });
  }

  allAcked(timeout = 15_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.acked}/${this.sent} frames acknowledged`)), timeout);
      this.waiter = () => {
        if (this.acked === this.sent) {
          clearTimeout(timer);
          this.waiter = undefined;
          resolve();
        }
      };
      this.waiter();
    });
  }
}

async function upgrade(pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  return Number(next);
}

describe('moving connections', () => {
  test('a connection streaming flat out moves 3 times: every frame acknowledged once, in order', { timeout: 60_000 }, async () => {
    const dir = setup();
    group.start([path.join(fixtures, 'frame-server.mjs')], { env: { HANDOVER_DIR: dir } });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const clients = [new FrameClient(Number(port)), new FrameClient(Number(port))];
    await Promise.all(clients.map((c) => c.ready()));
    const localPorts = clients.map((c) => c.socket.localPort);
    for (const client of clients) client.stream();
    let pid = Number(firstPid);
    const pids = [pid];
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const since = group.lines.length;
      pid = await upgrade(pid);
      pids.push(pid);
      // This generation's predecessor handed both connections over (and not an earlier one).
      await group.waitForLine(/^retired moved=2 closed=0 remaining=0/, { since });
    }
    // Stream on until the last generation has acknowledged frames of its own: a client starved of
    // CPU may have sent nothing since the move when the retired line arrives.
    await Promise.all(clients.map((c) => c.ackedBy(pid)));
    for (const client of clients) client.stop();
    await Promise.all(clients.map((c) => c.allAcked()));
    for (const [index, client] of clients.entries()) {
      assert.deepEqual(client.errors, []);
      assert.equal(client.ended, false, 'no FIN reached the client');
      assert.equal(client.socket.localPort, localPorts[index]);
      assert.ok(client.sent > 10_000, `only ${client.sent} frames sent`);
      assert.equal(client.lastPid, pid, 'the last generation answers');
      assert.ok(client.pids.size >= 3, `acknowledged by ${[...client.pids]} of ${pids}`);
      client.socket.destroy();
    }
    assert.equal(group.lines.filter((l) => l.startsWith('error')).length, 0, group.lines.join('\n'));
  });

  test('bytes the old process never read (in its kernel receive buffer) move with the fd', { timeout: 30_000 }, async () => {
    const dir = setup();
    group.start([path.join(fixtures, 'frame-server.mjs')], { env: { HANDOVER_DIR: dir, PAUSE_AT: '10' } });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const client = new FrameClient(Number(port));
    await client.ready();
    client.socket.write(client.frames(10));
    await client.allAcked();
    // The server reads no more: of these 1.3 MB, Node reads at most one chunk (64 KiB) past its
    // 16 KiB high-water mark; the rest stays in the kernel's buffers of the connection.
    client.socket.write(client.frames(20_000));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(client.acked, 10, 'the old process decodes nothing more');
    const next = await upgrade(Number(firstPid));
    await client.allAcked();
    assert.equal(client.acked, 20_010);
    assert.equal(client.lastPid, next, 'the successor decoded what the old process had left in the kernel');
    assert.deepEqual(client.errors, []);
    client.socket.destroy();
  });

  test('an adopt handler that throws costs that connection, not the successor', { timeout: 30_000 }, async () => {
    const dir = setup();
    group.start([path.join(fixtures, 'frame-server.mjs')], { env: { HANDOVER_DIR: dir, THROW_ADOPT: '1' } });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const client = new FrameClient(Number(port));
    await client.ready();
    client.socket.write(client.frames(5));
    await client.allAcked();
    const since = group.lines.length;
    const next = await upgrade(Number(firstPid));
    await group.waitForLine(/^warning code=ERR_HANDOVER_NOT_MOVABLE/, { since });
    // The successor serves on: a new connection works.
    const fresh = new FrameClient(Number(port));
    await fresh.ready();
    fresh.socket.write(fresh.frames(3));
    await fresh.allAcked();
    assert.equal(fresh.lastPid, next);
    client.socket.destroy();
    fresh.socket.destroy();
  });

  test('a connection the successor refuses stays with the predecessor, which serves it on', { timeout: 30_000 }, async () => {
    const dir = setup();
    group.start([path.join(fixtures, 'frame-server.mjs')], { env: { HANDOVER_DIR: dir, SECOND: '1', SKIP_SECOND: '1' } });
    const [, firstPid, port, second] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) second=(\d+)/);
    const moving = new FrameClient(Number(port));
    const staying = new FrameClient(Number(second));
    await Promise.all([moving.ready(), staying.ready()]);
    moving.socket.write(moving.frames(10));
    staying.socket.write(staying.frames(10));
    await Promise.all([moving.allAcked(), staying.allAcked()]);
    const next = await upgrade(Number(firstPid));
    await group.waitForLine(/^kept code=ERR_HANDOVER_NOT_MOVABLE/, { since: 0 });
    await group.waitForLine(/^moved count=1 kept=1/, { since: 0 });
    moving.socket.write(moving.frames(10));
    staying.socket.write(staying.frames(10));
    await Promise.all([moving.allAcked(), staying.allAcked()]);
    assert.equal(moving.lastPid, next);
    assert.equal(staying.lastPid, Number(firstPid), 'the refused connection is still served by the old process');
    assert.deepEqual([...moving.errors, ...staying.errors], []);
    moving.socket.destroy();
    staying.socket.destroy();
  });
});

describe('moving HTTP keep-alive connections', () => {
  function rawRequest(socket, path = '/') {
    return new Promise((resolve, reject) => {
      let data = '';
      const onData = (chunk) => {
        data += chunk;
        const end = data.indexOf('\r\n\r\n');
        if (end < 0) return;
        const length = Number(/content-length: (\d+)/i.exec(data)?.[1] ?? 0);
        if (data.length < end + 4 + length) return;
        socket.removeListener('data', onData);
        socket.removeListener('end', onEnd);
        resolve({ status: Number(data.slice(9, 12)), pid: Number(/x-pid: (\d+)/i.exec(data)?.[1]) });
      };
      const onEnd = () => reject(new Error(`connection ended; got ${JSON.stringify(data)}`));
      socket.setEncoding('utf8');
      socket.on('data', onData);
      socket.once('end', onEnd);
      socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
    });
  }

  test('an idle keep-alive connection moves: same socket, next request answered by the successor, keep-alive timeout restored', { timeout: 30_000 }, async () => {
    const dir = setup();
    // Idle sockets close after keep-alive 300 ms (+ Node's 1 s buffer); an adopted socket left with
    // the timers of a brand-new connection would get a 408 at the headers timeout (2.5 s) instead.
    const env = { HANDOVER_DIR: dir, KEEPALIVE_TIMEOUT: '300', HEADERS_TIMEOUT: '2500', REQUEST_TIMEOUT: '3000', CONNECTIONS_CHECKING_INTERVAL: '100' };
    group.start([path.join(fixtures, 'server.mjs')], { env });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const connect = async () => {
      const socket = net.connect(Number(port), '127.0.0.1');
      await new Promise((resolve) => socket.once('connect', resolve));
      return socket;
    };
    const active = await connect();
    const idle = await connect();
    const localPort = active.localPort;
    assert.equal((await rawRequest(active)).pid, Number(firstPid));
    assert.equal((await rawRequest(idle)).pid, Number(firstPid));
    let idleBytes = '';
    idle.on('data', (chunk) => (idleBytes += chunk));
    const idleClosed = new Promise((resolve) => idle.once('close', () => resolve(Date.now())));
    const since = group.lines.length;
    process.kill(Number(firstPid), 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
    await group.waitForLine(/^retired closed=0 moved=2 remaining=0/, { since });
    const movedAt = Date.now();
    const second = await rawRequest(active);
    assert.equal(second.status, 200);
    assert.equal(second.pid, Number(next));
    assert.equal(active.localPort, localPort);
    const elapsed = (await idleClosed) - movedAt;
    assert.equal(idleBytes, '', 'nothing (no 408) was sent on the idle connection');
    assert.ok(elapsed < 2300, `the idle connection closed ${elapsed} ms after the move (keep-alive 300 ms + 1 s)`);
    active.destroy();
  });

  test('an adopted idle connection gets no 408 even when the headers timeout is shorter than keep-alive', { timeout: 30_000 }, async () => {
    const dir = setup();
    const env = { HANDOVER_DIR: dir, KEEPALIVE_TIMEOUT: '5000', HEADERS_TIMEOUT: '600', REQUEST_TIMEOUT: '800', CONNECTIONS_CHECKING_INTERVAL: '100' };
    group.start([path.join(fixtures, 'server.mjs')], { env });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const socket = net.connect(Number(port), '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    assert.equal((await rawRequest(socket)).pid, Number(firstPid));
    let bytes = '';
    const onData = (chunk) => (bytes += chunk);
    socket.on('data', onData);
    let closed = false;
    socket.once('close', () => (closed = true));
    const since = group.lines.length;
    process.kill(Number(firstPid), 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
    await group.waitForLine(/^retired closed=0 moved=1 remaining=0/, { since });
    // Three times the headers timeout, idle, on the successor.
    await new Promise((resolve) => setTimeout(resolve, 1800));
    assert.equal(bytes, '', 'no 408 on an idle keep-alive connection');
    assert.equal(closed, false);
    socket.removeListener('data', onData);
    assert.equal((await rawRequest(socket)).pid, Number(next));
    socket.destroy();
  });

  test('a connection with a request in flight moves right after its response', { timeout: 30_000 }, async () => {
    const dir = setup();
    group.start([path.join(fixtures, 'server.mjs')], { env: { HANDOVER_DIR: dir } });
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const socket = net.connect(Number(port), '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    const slow = rawRequest(socket, '/slow?ms=800');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const since = group.lines.length;
    process.kill(Number(firstPid), 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
    assert.equal((await slow).pid, Number(firstPid), 'the request in flight is answered by the old process');
    await group.waitForLine(/^retired closed=0 moved=1 remaining=0/, { since });
    assert.equal((await rawRequest(socket)).pid, Number(next));
    socket.destroy();
  });
});
