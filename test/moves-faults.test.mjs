// Moves at their rare branches, against successors and predecessors that speak the exchange by
// hand: a late CONN_ACK, a refusal, fds that are not connections.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { ChannelListener } from 'handover';
import * as tls from 'node:tls';

// Node 22+ loads the CA certificates on a thread once node:tls is loaded (handover imports
// node:https): let that finish now, or its fd comes and goes while this process counts its fds.
tls.createSecureContext();
import { Sandbox, fixtures, isAlive, root, waitUntil } from './helpers.mjs';

const require = createRequire(import.meta.url);
const { ControlSession } = require(path.join(root, 'dist/session.js'));

const serverScript = path.join(fixtures, 'moves-server.mjs');
const rawSuccessor = path.join(fixtures, 'raw-conn-successor.mjs');
let group;
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

async function startServer(env) {
  group = sandbox.group();
  const dir = path.join(sandbox.dir(), 'ctl');
  group.start([serverScript], { env: { HANDOVER_DIR: dir, ...env } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { dir, pid: Number(pid), port: Number(port) };
}

async function connect(port) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return socket;
}

/** One HTTP request on a raw keep-alive socket; resolves with the pid that answered. */
function request(socket) {
  return new Promise((resolve, reject) => {
    let data = '';
    const onData = (chunk) => {
      data += chunk;
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) return;
      const length = Number(/content-length: (\d+)/i.exec(data)?.[1] ?? 0);
      if (data.length < end + 4 + length) return;
      cleanup();
      resolve(Number(/x-pid: (\d+)/i.exec(data)?.[1]));
    };
    const onClose = () => {
      cleanup();
      reject(new Error(`connection closed; got ${JSON.stringify(data)}`));
    };
    const cleanup = () => {
      socket.removeListener('data', onData);
      socket.removeListener('close', onClose);
    };
    socket.setEncoding('utf8');
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  });
}

describe('a successor that answers late or refuses', () => {
  test('a connection unanswered at the settle timeout is closed in the predecessor, never read there again; the late successor serves it', { timeout: 30_000 }, async () => {
    // Settle waits READY_TIMEOUT for answers after GRACEFUL_TIMEOUT; the raw successor answers later.
    const first = await startServer({ READY_TIMEOUT: '500', GRACEFUL_TIMEOUT: '300', STAY_ALIVE: '1' });
    const socket = await connect(first.port);
    assert.equal(await request(socket), first.pid);
    const since = group.lines.length;
    const peer = group.start([rawSuccessor, first.dir, 'late']);
    const [, peerPid] = await group.waitForLine(/^raw ready pid=(\d+)/, { since });
    await group.waitForLine(/^conn count=1/, { since });
    // Retired: settle timed out with the connection sent and unanswered. The predecessor stays alive.
    await group.waitForLine(/^retired /, { since });
    let closed = false;
    socket.once('close', () => (closed = true));
    const answer = request(socket);
    // Give a predecessor that (wrongly) reads the socket again every chance to answer first.
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(isAlive(first.pid), 'the predecessor still runs: it could read the connection, and must not');
    process.kill(Number(peerPid), 'SIGUSR2');
    await group.waitForLine(/^acked count=1/, { since });
    assert.equal(await answer, Number(peerPid), 'the successor that adopted the connection answers; the predecessor never reads it again');
    assert.equal(closed, false);
    socket.destroy();
    peer.kill('SIGKILL');
  });

  test('a refused keep-alive connection gets its keep-alive timeout back in the predecessor', { timeout: 30_000 }, async () => {
    // Keep-alive 300 ms (+ Node's 1 s); the graceful timeout (20 s) is far beyond it.
    const first = await startServer({ KEEPALIVE_TIMEOUT: '300', GRACEFUL_TIMEOUT: '20000' });
    const socket = await connect(first.port);
    assert.equal(await request(socket), first.pid);
    let bytes = '';
    socket.on('data', (chunk) => (bytes += chunk));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    const since = group.lines.length;
    group.start([rawSuccessor, first.dir, 'nack']);
    await group.waitForLine(/^nacked count=1/, { since });
    const refusedAt = Date.now();
    await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the handed-back connection never timed out')), 10_000))]);
    assert.equal(bytes, '', 'closed idle, as keep-alive does: no bytes');
    assert.ok(Date.now() - refusedAt < 10_000);
    // Its last connection gone, the predecessor retires long before its graceful timeout.
    await group.waitForLine(/^retired closed=1 moved=0 remaining=0/, { since });
  });
});

describe('a successor lost while a connection travels', () => {
  test('a keep-alive connection handed back by a rollback gets its keep-alive timeout back', { timeout: 30_000 }, async () => {
    const first = await startServer({ KEEPALIVE_TIMEOUT: '300', GRACEFUL_TIMEOUT: '20000' });
    const socket = await connect(first.port);
    assert.equal(await request(socket), first.pid);
    let bytes = '';
    socket.on('data', (chunk) => (bytes += chunk));
    const closed = new Promise((resolve) => socket.once('close', resolve));
    const since = group.lines.length;
    const peer = group.start([rawSuccessor, first.dir, 'late']);
    await group.waitForLine(/^conn count=1/, { since });
    // The successor dies holding the connection unanswered: the predecessor rolls back and keeps it.
    peer.kill('SIGKILL');
    await group.waitForLine(/^rollback successor=\d+/, { since });
    await Promise.race([closed, new Promise((_, reject) => setTimeout(() => reject(new Error('the handed-back connection never timed out')), 10_000))]);
    assert.equal(bytes, '', 'closed idle, as keep-alive does: no bytes');
    // The predecessor serves as before: a new connection is answered by it.
    const again = await connect(first.port);
    assert.equal(await request(again), first.pid);
    again.destroy();
  });
});

describe('a predecessor that sends fds that are not connections', () => {
  test('a pipe, a regular file and a listening socket are refused and closed; a real connection is adopted', { timeout: 30_000 }, async () => {
    group = sandbox.group();
    const base = sandbox.dir();
    const dir = path.join(base, 'ctl');
    fs.mkdirSync(dir, { mode: 0o700 });
    const listener = new ChannelListener(path.join(dir, 'control.sock'));
    const accepted = new Promise((resolve) => listener.once('channel', resolve));
    group.start([serverScript], { env: { HANDOVER_DIR: dir } });
    const channel = await accepted;
    const session = new ControlSession(channel, 'raw-predecessor');
    const hello = await session.next(['HELLO'], 10_000, 'HELLO');
    await session.send({ type: 'LISTENERS', pid: process.pid, listeners: [], fds: [] });
    await session.next(['READY'], 10_000, 'READY');
    await session.send({ type: 'READY_ACK' });
    // The successor says COMMIT once it owns control.sock and pid; then it serves.
    await session.next(['COMMIT'], 10_000, 'COMMIT');
    await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=successor/, { since: 0 });

    const [readEnd, writeEnd] = pipePair();
    const filePath = path.join(base, 'regular-file');
    fs.writeFileSync(filePath, 'not a socket');
    const fileFd = fs.openSync(filePath, 'r');
    const listening = net.createServer();
    await new Promise((resolve) => listening.listen(0, '127.0.0.1', resolve));
    // A real connection (accepted here), to check that a good fd is still adopted beside them.
    let client;
    const serverSide = await new Promise((resolve) => {
      listening.once('connection', resolve);
      client = net.connect(listening.address().port, '127.0.0.1');
    });
    const key = 'tcp:127.0.0.1:0';
    const conns = [1, 2, 3, 4].map((id) => ({ id, key, pendingLength: 0, writeLength: 0 }));
    await session.send({ type: 'CONN', conns, body: Buffer.alloc(0), fds: [readEnd, fileFd, listening._handle.fd, serverSide._handle.fd] });
    const ack = await session.next(['CONN_ACK'], 10_000, 'CONN_ACK');
    assert.deepEqual(ack.acked, [4]);
    assert.deepEqual(ack.refused.map(({ id }) => id), [1, 2, 3]);
    for (const { reason } of ack.refused) assert.match(reason, /not a socket|listening|not a stream/);
    // The successor closed the refused fds: none of them is open there.
    const successorPid = hello.pid;
    const targets = () => fs.readdirSync(`/proc/${successorPid}/fd`).map((fd) => {
      try {
        return fs.readlinkSync(`/proc/${successorPid}/fd/${fd}`);
      } catch {
        return '';
      }
    });
    const pipeInode = fs.readlinkSync(`/proc/self/fd/${readEnd}`);
    await waitUntil(() => !targets().includes(pipeInode) && !targets().includes(filePath), 5000, 'the refused fds to be closed');
    fs.closeSync(fileFd);
    fs.closeSync(readEnd);
    fs.closeSync(writeEnd);
    listening.close();
    serverSide.destroy();
    // The successor holds the adopted connection: it answers a request on it.
    assert.equal(await request(client), hello.pid);
    client.destroy();
    session.close();
    listener.close();
  });
});

/** A pipe made without a child process: the read and write ends of a FIFO in a private directory. */
function pipePair() {
  const fifo = path.join(sandbox.dir(), 'fifo');
  execFileSync('mkfifo', [fifo]);
  const readEnd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writeEnd = fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
  return [readEnd, writeEnd];
}
