// Fuzzing the exchange from the other side: this test process plays a predecessor on control.sock
// (ChannelListener + ControlSession) and a real successor (test/fixtures/server.mjs) starts
// against it. The fake offers fds of the wrong kind where a listening socket belongs (a pipe, a
// regular file, a directory, unix sockets, a connected socket), then, after READY, CONN batches
// whose fds are no TCP connections, WRITEs for unknown ids and garbage. Properties: the
// successor never crashes or hangs, serves HTTP on the port (inherited or bound fresh), every
// warning has a stable code, every wrong fd is refused and closed (its fd count returns to what
// it was once the fake goes away). Each run spawns one process; FUZZ_RUNS scales the count.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import fc from 'fast-check';
import { ChannelListener } from 'handover';
import * as tls from 'node:tls';

// Node 22+ loads the CA certificates on a thread once node:tls is loaded (handover imports
// node:https): let that finish now, or its fd comes and goes while this process counts its fds.
tls.createSecureContext();
import { binding } from '../dist/native.js';
import { ControlSession } from '../dist/session.js';
import { Sandbox, fixtures, get, fdCount, isAlive, waitUntil } from './helpers.mjs';
import { assertProperty, runs } from './fixtures/fuzz-common.mjs';

const native = binding();
const serverScript = path.join(fixtures, 'server.mjs');
const STEP_TIMEOUT = 5000;
const KNOWN_CODE = /^ERR_(HANDOVER_(PROTOCOL|CHANNEL_CLOSED|VERSION|DIR_UNSAFE|INVALID_ARG|INVALID_STATE|UNSUPPORTED_RUNTIME|NOT_MOVABLE|STOPPED)|UPGRADE_(IN_PROGRESS|REFUSED|SUCCESSOR_EXITED|READY_TIMEOUT|SPAWN_FAILED))$/;

const sandbox = new Sandbox();
let spareTcp;
/** The fds of a first generation (no predecessor) once ready: a successor holds these plus its link to the predecessor. */
let referenceFds;
before(async () => {
  const group = sandbox.group();
  group.start([serverScript], { env: { HANDOVER_DIR: path.join(sandbox.dir('handover-fuzz-ref-'), 'ctl'), PORT: '0' } });
  const [, pid] = await group.waitForLine(/^ready pid=(\d+)/);
  referenceFds = fdCount(Number(pid));
  await sandbox.cleanup();
  spareTcp = net.createServer(() => assert.fail('nobody connects here'));
  await new Promise((resolve) => spareTcp.listen(0, '127.0.0.1', resolve));
});
after(async () => {
  await sandbox.cleanup();
  await new Promise((resolve) => spareTcp.close(resolve));
});

/** within fails a step that takes longer than STEP_TIMEOUT: a hang is a failure, never a stuck test. */
function within(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`hang: ${what} did not happen within ${STEP_TIMEOUT} ms`)), STEP_TIMEOUT);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Wrong kinds: everything that is not a listening TCP socket (for LISTENERS) or a connected TCP socket (for CONN). */
const wrongKind = fc.constantFrom('file', 'dir', 'pipe', 'seqpacket', 'seqpacket-listener', 'unix-listener', 'tcp-listener');

/** openKind opens a fresh fd of a kind; the returned close() releases what it needed besides the fd. */
function openKind(kind, scratch) {
  switch (kind) {
    case 'file':
      return fs.openSync(serverScript, 'r');
    case 'dir':
      return fs.openSync(scratch, 'r');
    case 'pipe': {
      const fifo = path.join(scratch, `fifo-${Math.random().toString(36).slice(2)}`);
      execFileSync('mkfifo', [fifo]);
      return fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    }
    case 'seqpacket': {
      const [a, b] = native.seqpacketPair();
      native.close(b);
      return a;
    }
    case 'seqpacket-listener':
      return native.seqpacketListen(path.join(scratch, `sp-${Math.random().toString(36).slice(2)}`), 4);
    case 'unix-listener':
      return native.unixStreamListen(path.join(scratch, `us-${Math.random().toString(36).slice(2)}`), 4);
    case 'tcp-listener':
      // A listening TCP socket nobody connects to, on a port of its own.
      return native.dup(spareTcp._handle.fd);
  }
  throw new Error(`unknown kind ${kind}`);
}

const extrasArb = fc.array(
  fc.record({ key: fc.oneof(fc.constantFrom('tcp:127.0.0.1:1', 'unix:/nonexistent', 'named:x'), fc.string({ minLength: 1, maxLength: 20 })), kind: fc.constantFrom('tcp', 'unix', 'named'), fd: wrongKind }),
  { maxLength: 3 },
);
const stepsArb = (sameKey) =>
  fc.array(
    fc.oneof(
      fc.record({ op: fc.constant('conn'), fds: fc.array(wrongKind, { minLength: 1, maxLength: 3 }), pending: fc.nat({ max: 20 }), sameKey }),
      fc.record({ op: fc.constant('write'), id: fc.nat({ max: 5 }), bytes: fc.nat({ max: 20 }) }),
      fc.record({ op: fc.constant('garbage'), message: fc.constantFrom('HELLO', 'READY', 'LISTENERS', 'CONN_ACK', 'READY_ACK', 'COMMIT', 'PONG') }),
    ),
    { maxLength: 4 },
  );
const end = fc.constantFrom('bye', 'close');

async function runCase({ main, extras, after: steps, end }) {
  const before = fdCount();
  const scratch = sandbox.dir('handover-fuzz-s-');
  const dir = path.join(scratch, 'ctl');
  fs.mkdirSync(dir, { mode: 0o700 });
  const listener = new ChannelListener(path.join(dir, 'control.sock'));
  const group = sandbox.group();
  const tcp = net.createServer(() => assert.fail('the fake predecessor never accepts'));
  await new Promise((resolve) => tcp.listen(0, '127.0.0.1', resolve));
  const port = tcp.address().port;
  let session;
  try {
    const accepted = once(listener, 'channel');
    group.start([serverScript], { env: { HANDOVER_DIR: dir, PORT: String(port), READY_TIMEOUT: '4000' } });
    const [channel] = await within(accepted, 'the successor connecting');
    session = new ControlSession(channel, 'fake-predecessor');
    const hello = await session.next(['HELLO'], STEP_TIMEOUT, 'HELLO');
    const successorPid = hello.pid;

    const listeners = [];
    const fds = [];
    const mainKey = `tcp:127.0.0.1:${port}`;
    listeners.push({ key: mainKey, kind: 'tcp' });
    fds.push(main === 'real' ? native.dup(tcp._handle.fd) : openKind(main, scratch));
    for (const extra of extras) {
      if (extra.key === mainKey || listeners.some((l) => l.key === extra.key)) continue;
      listeners.push({ key: extra.key, kind: extra.kind });
      fds.push(openKind(extra.fd, scratch));
    }
    // The port stays bound only through what travels (a dup): a wrong kind under the key leaves it free for a fresh bind.
    await new Promise((resolve) => tcp.close(resolve));
    await within(session.send({ type: 'LISTENERS', pid: process.pid, listeners, fds }, { closeFdsAfterSend: true }), 'sending LISTENERS');

    const ready = await session.next(['READY'], STEP_TIMEOUT, 'READY').catch((err) => err);
    const out = () => `stdout:\n${group.lines.join('\n')}\nstderr:\n${group.stderr.join('').slice(-2000)}`;
    assert.ok(!(ready instanceof Error), `the successor says READY whatever fds it was offered (${ready.message})\n${out()}`);
    await within(session.send({ type: 'READY_ACK' }), 'sending READY_ACK');
    // It takes over control.sock and pid, then says so.
    await session.next(['COMMIT'], STEP_TIMEOUT, 'COMMIT');
    const [, readyPid] = await group.waitForLine(/^ready pid=(\d+)/, { since: 0, timeout: STEP_TIMEOUT });
    assert.equal(Number(readyPid), successorPid);
    const readyFds = fdCount(successorPid);
    assert.equal(readyFds, referenceFds + 1, 'once ready, the successor holds what a first generation holds plus its link: every fd it was offered and did not use is closed');

    let nextId = 1;
    for (const step of steps) {
      if (step.op === 'conn') {
        const conns = step.fds.map(() => ({ id: nextId++, key: step.sameKey ? mainKey : 'named:nobody', pendingLength: step.pending, writeLength: 0 }));
        const connFds = step.fds.map((kind) => openKind(kind, scratch));
        const body = Buffer.alloc(step.pending * conns.length, 'x');
        await within(session.send({ type: 'CONN', conns, body, fds: connFds }, { closeFdsAfterSend: true }), 'sending CONN');
        const ack = await session.next(['CONN_ACK'], STEP_TIMEOUT, 'CONN_ACK');
        assert.deepEqual(ack.acked, [], `fds that are no TCP connections (${step.fds.join(', ')}) are refused, none adopted`);
        assert.deepEqual(ack.refused.map((r) => r.id).sort(), conns.map((c) => c.id).sort());
      } else if (step.op === 'write') {
        await within(session.send({ type: 'WRITE', id: step.id, seq: 0, data: Buffer.alloc(step.bytes, 'w') }), 'sending WRITE');
        const ack = await session.next(['WRITE_ACK'], STEP_TIMEOUT, 'WRITE_ACK');
        assert.equal(ack.id, step.id);
      } else {
        // A message a predecessor never sends: the successor closes the link and serves on.
        const messages = {
          HELLO: () => ({ type: 'HELLO', version: 1, pid: process.pid }),
          READY: () => ({ type: 'READY', pid: process.pid }),
          LISTENERS: () => ({ type: 'LISTENERS', pid: process.pid, listeners: [{ key: 'named:late', kind: 'named' }], fds: [openKind('pipe', scratch)] }),
          CONN_ACK: () => ({ type: 'CONN_ACK', acked: [1], refused: [] }),
          READY_ACK: () => ({ type: 'READY_ACK' }),
          COMMIT: () => ({ type: 'COMMIT' }),
          PONG: () => ({ type: 'PONG', pid: process.pid }),
        };
        const closed = once(session, 'close');
        await within(session.send(messages[step.message](), { closeFdsAfterSend: true }).catch(() => undefined), 'sending garbage');
        await within(closed, `the successor closing the link after ${step.message}`);
        break;
      }
      assert.equal(Number((await within(get(port), 'an HTTP answer')).headers['x-pid']), successorPid, 'the successor serves on');
    }
    if (!session.isClosed) {
      if (end === 'bye') await within(session.send({ type: 'BYE', reason: 'fuzz' }), 'sending BYE');
      session.close();
    }

    assert.ok(isAlive(successorPid), `the successor lives\n${out()}`);
    assert.equal(Number((await within(get(port), 'an HTTP answer')).headers['x-pid']), successorPid, 'the successor serves');
    for (const line of group.lines) {
      const warning = /^warning code=(\S+)/.exec(line);
      if (warning) assert.match(warning[1], KNOWN_CODE, 'a warning with a stable code');
    }
    // Its link to us is gone, and every fd it was sent is closed or serving: one fd fewer than at ready.
    await waitUntil(() => fdCount(successorPid) === readyFds - 1, STEP_TIMEOUT, `the successor's fds to return to ${readyFds - 1} (now ${fdCount(successorPid)})`).catch((err) => {
      throw new Error(`${err.message}\n${fs.readdirSync(`/proc/${successorPid}/fd`).map((fd) => { try { return `${fd} -> ${fs.readlinkSync(`/proc/${successorPid}/fd/${fd}`)}`; } catch { return fd; } }).join('\n')}`);
    });
  } finally {
    session?.close();
    listener.close();
    if (tcp.listening) tcp.close();
    await sandbox.cleanup();
  }
  // The child's stdio pipes close on the event loop after its exit.
  await waitUntil(() => fdCount() === before, STEP_TIMEOUT, `the fake predecessor's fds to return to ${before} (now ${fdCount()})`);
}

const shrink = { endOnFailure: process.env.FUZZ_SHRINK === undefined };

test('fuzz: a successor offered fds of the wrong kind (not listening sockets) and extra listeners, then WRITEs, CONNs for unknown keys and garbage: it serves, closes every wrong fd, warns with stable codes', { timeout: 30 * 60_000 }, async () => {
  // What travels under the key the successor listens on: the real listener, or something that is no listening socket.
  const main = fc.oneof({ weight: 2, arbitrary: fc.constant('real') }, { weight: 1, arbitrary: fc.constantFrom('file', 'dir', 'pipe', 'seqpacket') });
  const property = fc.asyncProperty(fc.record({ main, extras: extrasArb, after: stepsArb(fc.constant(false)), end }), (run) => runCase(run));
  await assertProperty(property, runs(8, 0.001), shrink);
});

test('fuzz: a listening socket of another address or family (TCP on another port, unix stream, unix seqpacket) offered under the key of this one is not taken for it: the successor serves on its own port', { timeout: 30 * 60_000 }, async () => {
  const property = fc.asyncProperty(fc.record({ main: fc.constantFrom('tcp-listener', 'unix-listener', 'seqpacket-listener'), extras: extrasArb, after: fc.constant([]), end }), (run) => runCase(run));
  await assertProperty(property, runs(3, 0.00025), shrink);
});

test('fuzz: CONN batches whose fds are no TCP connections (pipes, files, listening sockets, ...) for a served key: every one refused and closed, the successor serves on', { timeout: 30 * 60_000 }, async () => {
  const property = fc.asyncProperty(fc.record({ main: fc.constant('real'), extras: fc.constant([]), after: stepsArb(fc.constant(true)), end }), (run) => runCase(run));
  await assertProperty(property, runs(4, 0.0005), shrink);
});
