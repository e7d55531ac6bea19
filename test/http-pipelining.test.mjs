// Connections that are never idle (issue 7, defect 8): clients that keep a sliding window of
// pipelined requests never leave the parser between messages. Each retiring generation stops
// reading them, answers what it already parsed, and moves them at a message boundary — through
// several upgrades, with zero failed requests, every connection kept (never reconnected) and
// answered by the new process on the same socket, and no MaxListenersExceededWarning.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { Pool, buildConnector } from 'undici';
import { Sandbox, fixtures, sleep } from './helpers.mjs';

const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

/**
 * A raw keep-alive client with a sliding window of pipelined requests: a new one as each response
 * arrives. With `split`, every write ends in the middle of a request (the tail waits for the next
 * write), so the server's parser holds part of a message whenever it has read everything.
 */
class PipelineClient {
  constructor(port, { window = 4, split = false } = {}) {
    this.window = window;
    this.split = split;
    this.sent = 0;
    this.received = 0;
    this.pids = [];
    this.errors = [];
    this.running = true;
    this.unsent = '';
    this.buffer = '';
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.setNoDelay(true);
    this.socket.setEncoding('latin1');
    this.socket.on('error', (err) => this.errors.push(err));
    this.socket.on('close', () => {
      if (this.running || this.received < this.sent) this.errors.push(new Error(`connection closed with ${this.sent - this.received} requests unanswered`));
      this.closed = true;
      this.wake?.();
    });
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.connected = new Promise((resolve) => this.socket.once('connect', resolve)).then(() => {
      this.localPort = this.socket.localPort;
      for (let i = 0; i < this.window; i++) this.request();
      this.flush();
    });
  }

  request() {
    const n = this.sent++;
    // Every third request carries a body, so that a split can fall inside one.
    const request = n % 3 === 2 ? `POST /?n=${n} HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world` : `GET /?n=${n} HTTP/1.1\r\nHost: x\r\n\r\n`;
    this.unsent += request;
    this.lastLength = request.length;
  }

  flush(all = false) {
    if (this.unsent.length === 0 || this.socket.destroyed) return;
    // Hold back the second half of the last request: the write ends mid-message.
    const cut = this.split && !all ? Math.max(1, this.unsent.length - Math.ceil(this.lastLength / 2)) : this.unsent.length;
    this.socket.write(this.unsent.slice(0, cut), 'latin1');
    this.unsent = this.unsent.slice(cut);
  }

  onData(chunk) {
    this.buffer += chunk;
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buffer.slice(0, end);
      const length = responseLength(head, this.buffer, end + 4);
      if (length === undefined) return;
      this.buffer = this.buffer.slice(end + 4 + length);
      const status = Number(head.slice(9, 12));
      if (status !== 200) this.errors.push(new Error(`status ${status}: ${head}`));
      if (/connection: close/i.test(head)) this.errors.push(new Error('the server ended keep-alive'));
      this.pids.push(Number(/x-pid: (\d+)/i.exec(head)?.[1]));
      this.received++;
      if (this.running) {
        this.request();
        this.flush();
      }
      this.wake?.();
    }
  }

  /** until resolves once `condition` holds (re-checked after each response). */
  until(condition) {
    return new Promise((resolve) => {
      const check = () => {
        if (condition() || this.closed) {
          this.wake = undefined;
          resolve();
        }
      };
      this.wake = check;
      check();
    });
  }

  async stop() {
    this.running = false;
    this.flush(true);
    await this.until(() => this.received === this.sent);
    this.socket.end();
  }
}

/** responseLength: the body's length on the wire (Content-Length or chunked), or undefined if not all here yet. */
function responseLength(head, buffer, start) {
  if (!/transfer-encoding: chunked/i.test(head)) {
    const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
    return buffer.length >= start + length ? length : undefined;
  }
  let offset = start;
  for (;;) {
    const lineEnd = buffer.indexOf('\r\n', offset);
    if (lineEnd < 0) return undefined;
    const size = parseInt(buffer.slice(offset, lineEnd), 16);
    if (size === 0) return buffer.length >= lineEnd + 4 ? lineEnd + 4 - start : undefined;
    offset = lineEnd + 2 + size + 2;
    if (buffer.length < offset) return undefined;
  }
}

async function upgrade(group, current) {
  const since = group.lines.length;
  process.kill(current, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout: 20_000 });
  const [, closed, moved, remaining] = await group.waitForLine(/^retired closed=(\d+) moved=(\d+) remaining=(\d+)/, { since, timeout: 20_000 });
  return { next: Number(next), closed: Number(closed), moved: Number(moved), remaining: Number(remaining) };
}

function startServer() {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir(), 'ctl');
  // A short graceful timeout: a connection that never moves is cut within the test's time.
  group.start([path.join(fixtures, 'server.mjs')], { env: { HANDOVER_DIR: dir, GRACEFUL_TIMEOUT: '4000' } });
  return group;
}

function warningsOf(group) {
  return group.lines.filter((line) => line.startsWith('process-warning') || line.startsWith('warning'));
}

test('raw sliding-window pipelining clients move at every upgrade, even when every write ends mid-request', { timeout: 120_000 }, async () => {
  const group = startServer();
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const clients = [];
  for (let i = 0; i < 16; i++) clients.push(new PipelineClient(Number(port), { window: 4 }));
  for (let i = 0; i < 8; i++) clients.push(new PipelineClient(Number(port), { window: 3, split: true }));
  await Promise.all(clients.map((client) => client.connected));
  await Promise.all(clients.map((client) => client.until(() => client.received >= 20)));
  let current = Number(firstPid);
  const retirements = [];
  for (let i = 0; i < 4; i++) {
    const result = await upgrade(group, current);
    retirements.push(result);
    current = result.next;
    // Every connection is answered by the new process, on the same socket.
    await Promise.all(clients.map((client) => client.until(() => client.pids.at(-1) === current)));
  }
  await Promise.all(clients.map((client) => client.stop()));
  const errors = clients.flatMap((client) => client.errors.map((err) => err.message));
  assert.deepEqual(errors, []);
  for (const client of clients) {
    assert.equal(client.received, client.sent);
    assert.equal(client.socket.localPort ?? client.localPort, client.localPort);
    assert.equal(client.pids.at(-1), current);
  }
  assert.deepEqual(
    retirements.map(({ closed, moved, remaining }) => [closed, moved, remaining]),
    Array(4).fill([0, clients.length, 0]),
  );
  assert.deepEqual(warningsOf(group), []);
  console.log(`requests answered: ${clients.reduce((sum, client) => sum + client.received, 0)}`);
});

test('undici with pipelining 4 over 100 connections, more requests than slots: zero failed requests through upgrades, no connection reconnected', { timeout: 120_000 }, async () => {
  const group = startServer();
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const connector = buildConnector({});
  const sockets = [];
  let socketsClosed = 0;
  const pool = new Pool(`http://127.0.0.1:${port}`, {
    connections: 100,
    pipelining: 4,
    connect: (options, callback) =>
      connector(options, (err, socket) => {
        if (socket) {
          sockets.push(socket);
          socket.once('close', () => socketsClosed++);
        }
        callback(err, socket);
      }),
  });
  let running = true;
  let answered = 0;
  let lastPid = 0;
  const failures = [];
  const worker = async () => {
    while (running) {
      try {
        // blocking: false, or undici waits for each response's headers before it sends the next
        // request on the connection (no pipelining at all). Answered after a few ms, so that the
        // next pipelined requests are already parsed whenever a response ends.
        const { statusCode, headers, body } = await pool.request({ path: '/slow?ms=2', method: 'GET', blocking: false });
        await body.text();
        if (statusCode !== 200) failures.push(`status ${statusCode}`);
        lastPid = Number(headers['x-pid']);
        answered++;
      } catch (err) {
        failures.push(`${err.code ?? ''} ${err.message}`);
      }
    }
  };
  // More requests than the pool has slots (100 x 4): undici queues the rest, so every connection
  // always has its window full.
  const workers = Array.from({ length: 600 }, worker);
  const untilAnswered = async (count) => {
    while (answered < count && failures.length === 0) await new Promise((resolve) => setTimeout(resolve, 20));
  };
  await untilAnswered(1000);
  let current = Number(firstPid);
  const retirements = [];
  for (let i = 0; i < 4; i++) {
    const result = await upgrade(group, current);
    retirements.push(result);
    current = result.next;
    await untilAnswered(answered + 1000);
  }
  running = false;
  await Promise.all(workers);
  const socketsOpened = sockets.length;
  const closedDuringRun = socketsClosed;
  await pool.close();
  console.log(`undici: ${answered} requests over ${socketsOpened} connections; retirements ${JSON.stringify(retirements)}`);
  assert.deepEqual(failures, []);
  assert.equal(lastPid, current);
  assert.equal(closedDuringRun, 0, 'no connection closed before the client closed them');
  for (const { closed, remaining, moved } of retirements) {
    assert.equal(closed, 0, 'no connection was closed by a retiring process');
    assert.equal(remaining, 0, 'no connection was left to the graceful timeout');
    assert.equal(moved, socketsOpened, 'every connection moved');
  }
  assert.deepEqual(warningsOf(group), []);
});

test('a read that holds the end of one request and the start of the next is split at the boundary: the rest moves with the connection', { timeout: 60_000 }, async () => {
  const group = startServer();
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const socket = net.connect(Number(port), '127.0.0.1');
  socket.setNoDelay(true);
  socket.setEncoding('latin1');
  await new Promise((resolve) => socket.once('connect', resolve));
  const responses = [];
  let buffer = '';
  let waiter;
  socket.on('data', (chunk) => {
    buffer += chunk;
    for (;;) {
      const end = buffer.indexOf('\r\n\r\n');
      if (end < 0) break;
      const head = buffer.slice(0, end);
      const length = responseLength(head, buffer, end + 4);
      if (length === undefined) break;
      buffer = buffer.slice(end + 4 + length);
      responses.push({ status: Number(head.slice(9, 12)), pid: Number(/x-pid: (\d+)/i.exec(head)?.[1]) });
    }
    waiter?.();
  });
  const responsesArrived = (count) =>
    new Promise((resolve) => {
      waiter = () => responses.length >= count && resolve();
      waiter();
    });
  // A slow request in flight, and the start of the next one, which the parser holds.
  socket.write('GET /slow?ms=1000 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHo');
  const since = group.lines.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, next] = await group.waitForLine(/^retiring successor=(\d+)/, { since });
  // One write, so one read: the end of request 2, all of request 3, the start of request 4.
  socket.write('st: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\nGET /4 HTTP/1.1\r\nHo');
  await responsesArrived(3);
  socket.write('st: x\r\n\r\nGET /5 HTTP/1.1\r\nHost: x\r\n\r\n');
  await responsesArrived(5);
  await group.waitForLine(/^retired closed=(\d+) moved=(\d+) remaining=(\d+)/, { since });
  socket.destroy();
  const old = Number(firstPid);
  const successor = Number(next);
  // 1 and 2 were begun here; 3 and the start of 4 travelled with the connection.
  assert.deepEqual(responses, [old, old, successor, successor, successor].map((pid) => ({ status: 200, pid })));
  assert.ok(group.lines.some((line) => line === 'retired closed=0 moved=1 remaining=0'), group.lines.join('\n'));
});

test('a server saturated by a flood of pipelined requests still answers the control socket: the upgrade succeeds', { timeout: 90_000 }, async () => {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir(), 'ctl');
  // The flood makes every turn of the predecessor's event loop long (each connection parses a full
  // read of pipelined requests per turn); the handshake needs several turns if the control socket
  // waits for its own poll.
  // Each request costs 40 µs of CPU: one read of pipelined requests (64 KiB, ~2,400 of them) about
  // 0.1 s, one turn with 32 flooding connections about 3 s, a handshake of several turns far more
  // than the readyTimeout — unless the control socket is looked at between reads.
  group.start([path.join(fixtures, 'server.mjs')], { env: { HANDOVER_DIR: dir, READY_TIMEOUT: '6000', GRACEFUL_TIMEOUT: '6000', BUSY_US: '40' } });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const burst = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(2000));
  const flood = [];
  let answered = 0;
  for (let i = 0; i < 32; i++) {
    const socket = net.connect(Number(port), '127.0.0.1');
    const pump = () => {
      while (!socket.destroyed && socket.write(burst));
    };
    socket.on('connect', pump);
    socket.on('drain', pump);
    socket.on('data', (chunk) => (answered += chunk.length));
    socket.on('error', () => undefined); // the flood is cut at the end of the test
    flood.push(socket);
  }
  try {
    while (answered < 2_000_000) await sleep(50);
    const since = group.lines.length;
    process.kill(Number(firstPid), 'SIGHUP');
    const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since, timeout: 30_000 });
    assert.match(line, /^upgraded pid=\d+/, group.lines.join('\n'));
  } finally {
    for (const socket of flood) socket.destroy();
  }
});
