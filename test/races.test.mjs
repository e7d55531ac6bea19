// Races around the end of a link: a successor that leaves or dies at each awkward moment, stop()
// at every step, READY under fd pressure. Each states what the promises require, with real processes.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { createUpgrader, ChannelListener, listenerKey } from 'handover';
import { ControlSession } from '../dist/session.js';
import { binding } from '../dist/native.js';
import { setFaultHook } from 'handover/testing';
import { Sandbox, fdList, fixtures, get, sleep } from './helpers.mjs';

const serverScript = path.join(fixtures, 'server.mjs');
const rawSuccessor = path.join(fixtures, 'raw-successor.mjs');
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

function setup() {
  const group = sandbox.group();
  const base = sandbox.dir();
  const dir = path.join(base, 'ctl');
  return { group, dir, env: { HANDOVER_DIR: dir, MODE_FILE: path.join(base, 'mode'), READY_TIMEOUT: '3000', GRACEFUL_TIMEOUT: '5000' } };
}

async function startFirst(group, env) {
  const child = group.start([serverScript], { env });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  return { child, pid: Number(pid), port: Number(port) };
}

describe('nobody serves after a successor that leaves the link and then exits', () => {
  // What a real successor does when READY_ACK comes later than its readyTimeout, or when stop() is
  // called during ready(): PredecessorLink.ready() closes the link (no ABORT), ready() rejects and
  // the application goes away, slower than the predecessor's 1 s wait for it to be gone.
  test('READY acknowledged, link closed without COMMIT, successor exits 1.5 s later: the predecessor must roll back', async () => {
    const { group, dir, env } = setup();
    const first = await startFirst(group, env);
    const peer = group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'ready', 'close', 'linger=1500']);
    await group.waitForLine(/^ready-acked/, { since: 0 });
    await group.waitForLine(/^exiting pid=/, { since: 0 });
    await peer.exited;
    // The successor never took over and is gone: the predecessor must be accepting again.
    const res = await get(first.port).catch((err) => ({ status: 0, body: err.code }));
    assert.equal(res.body, String(first.pid), group.lines.join('\n'));
    assert.ok(group.lines.some((line) => line.startsWith('rollback')), group.lines.join('\n'));
  });

  // Retirement.run() waits for the decision about a link that ended only when COMMIT never came:
  // with COMMIT received, it finishes retiring while the decision (is the successor gone?) is pending.
  test('COMMIT, then the link ends while a slow request keeps the predecessor retiring, successor exits 0.6 s later: the predecessor must roll back', async () => {
    const { group, dir, env } = setup();
    const first = await startFirst(group, env);
    const slow = get(first.port, '/slow?ms=300');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const peer = group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'ready', 'commit', 'close', 'linger=600']);
    await group.waitForLine(/^ready-acked/, { since: 0 });
    assert.equal((await slow).body, String(first.pid));
    await peer.exited;
    const res = await get(first.port).catch((err) => ({ status: 0, body: err.code }));
    assert.equal(res.body, String(first.pid), group.lines.join('\n'));
    assert.ok(group.lines.some((line) => line.startsWith('rollback')), group.lines.join('\n'));
  });
});

describe('stop() before the predecessor answered', () => {
  // Upgrader.start() stores the link and the inherited fds when PredecessorLink.connect resolves,
  // without looking at the state: after stop() they are never closed.
  test('stop() right after createUpgrader(): the link and the inherited listener are closed, and the predecessor can upgrade at once', async () => {
    const { group, dir, env } = setup();
    const first = await startFirst(group, env);
    const before = fdList().filter((fd) => fd.includes('socket:')).length;
    const upgrader = createUpgrader({ dir, readyTimeout: 3000 });
    upgrader.on('warning', () => undefined);
    upgrader.stop();
    assert.equal(upgrader.state, 'stopped');
    await upgrader.inheritListeners().catch(() => undefined);
    await sleep(200);
    const after = fdList().filter((fd) => fd.includes('socket:')).length;
    // The predecessor must not stay 'upgrading' on a link nobody will ever use (until readyTimeout).
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since });
    assert.deepEqual({ socketsLeft: after - before, line: line.replace(/\d+$/, 'N') }, { socketsLeft: 0, line: 'upgraded pid=N' }, group.lines.join('\n'));
  });
});

describe('READY under fd pressure', () => {
  // ServerSet.stopAccepting() dups each listening fd before closing the handle; when the dup fails
  // (EMFILE) it only logs, and that server keeps accepting while READY_ACK still goes out.
  test('no free fd at READY: either READY is refused, or the predecessor stops accepting', async () => {
    const { group, dir, env } = setup();
    const first = await startFirst(group, env);
    execFileSync('prlimit', ['--pid', String(first.pid), '--nofile=256:256']);
    const peer = group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'sleep=1000', 'ready']);
    await group.waitForLine(/^listeners n=1/, { since: 0 });
    process.kill(first.pid, 'SIGUSR1');
    await group.waitForLine(/^fds exhausted/, { since: 0 });
    const [answer] = await group.waitForLine(/^(ready-acked|refused code=\S+|ready-error code=\S+)/, { since: 0 });
    process.kill(first.pid, 'SIGUSR1');
    await group.waitForLine(/^fds released/, { since: 0 });
    // Deterministic: with the peer stopped (SIGSTOP) only the predecessor could accept a new
    // connection. After READY_ACK it must not: the request waits in the accept queue for the peer.
    process.kill(peer.pid, 'SIGSTOP');
    const pending = get(first.port);
    await sleep(500);
    process.kill(peer.pid, 'SIGCONT');
    const { body } = await pending;
    const expected = answer === 'ready-acked' ? `peer ${peer.pid}` : String(first.pid);
    assert.deepEqual({ answer, body }, { answer, body: expected }, group.lines.join('\n'));
  });
});

describe('stop() while retiring', () => {
  // Successors.stop() -> Retirement.successorLeft() -> ConnectionMover.close() hands back every
  // connection sent and not yet answered, although the successor is alive and may have adopted it
  // (its CONN_ACK unread in the closed channel): two readers of one socket.
  test('a connection the successor acknowledged (ACK not yet read) is not served here after stop()', async () => {
    const group = sandbox.group();
    const dir = path.join(sandbox.dir(), 'ctl');
    const upgrader = createUpgrader({ dir, readyTimeout: 3000, gracefulTimeout: 3000 });
    upgrader.on('warning', () => undefined);
    const server = http.createServer((req, res) => res.end(`here ${process.pid}`));
    await upgrader.listen(server, { port: 0, host: '127.0.0.1' });
    await upgrader.ready();
    const { port } = server.address();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    assert.equal((await get(port, '/', { agent })).body, `here ${process.pid}`);
    const block = new Int32Array(new SharedArrayBuffer(4));
    setFaultHook((point, { role }) => {
      if (role !== 'predecessor' || point !== 'conn-sent') return;
      // Let the successor adopt and acknowledge while this loop cannot read the ACK, then stop.
      Atomics.wait(block, 0, 0, 1500);
      upgrader.stop();
    });
    try {
      const peer = group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'ready', 'adopt']);
      await group.waitForLine(/^adopted n=1/, { since: 0 });
      await sleep(100);
      assert.equal(upgrader.state, 'stopped');
      // Only the successor may read this connection now: with it stopped, nobody answers.
      process.kill(peer.pid, 'SIGSTOP');
      const pending = get(port, '/', { agent });
      await sleep(500);
      process.kill(peer.pid, 'SIGCONT');
      const { body } = await pending;
      assert.equal(body, `peer ${peer.pid}`, group.lines.join('\n'));
    } finally {
      setFaultHook(undefined);
      agent.destroy();
      server.close();
    }
  });
});

describe('a real successor that gives up after READY says ABORT', () => {
  // upgrader.ts now closes the listeners and calls predecessor.abort() when ready() fails, but
  // PredecessorLink.ready() has already closed the session on a timeout or a refusal, so abort()
  // returns at once (session.isClosed) and no ABORT is sent: the predecessor only sees a close.
  test('READY_ACK never comes within readyTimeout: the predecessor receives ABORT before the close', async () => {
    const group = sandbox.group();
    const dir = path.join(sandbox.dir(), 'ctl');
    fs.mkdirSync(dir, { mode: 0o700 });
    const tcp = net.createServer();
    await new Promise((resolve) => tcp.listen({ port: 0, host: '127.0.0.1' }, resolve));
    const { port } = tcp.address();
    const control = new ChannelListener(path.join(dir, 'control.sock'));
    const seen = [];
    const ended = new Promise((resolve) => {
      control.once('channel', (channel) => {
        const session = new ControlSession(channel, 'fake-predecessor');
        session.on('close', () => {
          seen.push('close');
          resolve();
        });
        session.onMessage((message) => {
          seen.push(message.type);
          if (message.type === 'HELLO') {
            const fd = binding().dup(tcp._handle.fd);
            session.send({ type: 'LISTENERS', pid: process.pid, listeners: [{ key: listenerKey({ host: '127.0.0.1', port }).key, kind: 'tcp' }], fds: [fd] }, { closeFdsAfterSend: true }).catch(() => undefined);
          }
          // READY is never acknowledged: this predecessor is stalled.
        });
      });
    });
    try {
      group.start([serverScript], { env: { HANDOVER_DIR: dir, PORT: String(port), READY_TIMEOUT: '1000', GRACEFUL_TIMEOUT: '1000' } });
      await group.waitForLine(/^ready-failed code=/, { since: 0 });
      await ended;
      assert.deepEqual(seen, ['HELLO', 'READY', 'ABORT', 'close'], group.lines.join('\n'));
    } finally {
      control.close();
      tcp.close();
    }
  });
});
