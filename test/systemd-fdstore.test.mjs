// Surviving a crash through systemd's fd store, with a test helper that plays the fd store with
// real fds: the server hands its listening socket over (FDSTORE=1, FDNAME=<key>), is killed with
// SIGKILL under load, and is started again with the stored fd in LISTEN_FDS. No connection is
// refused: the ones made while nothing ran wait in the kept socket's backlog and are served; only
// the requests in flight in the killed process are lost. Across an upgrade the store keeps the
// same sockets and drops the ones the successor no longer listens on.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Sandbox, fixtures, get, waitUntil } from './helpers.mjs';
import { NotifyReceiver, startWithListenFds, gone } from './systemd-helpers.mjs';

const fixture = path.join(fixtures, 'systemd-server.mjs');
const CLIENTS = 8;
const sandbox = new Sandbox();
let receiver;
afterEach(async () => {
  await sandbox.cleanup();
  receiver?.close();
  receiver = undefined;
});

test('SIGKILL under load, restarted with the stored fd: zero refused, only the requests in flight lost', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const env = { NOTIFY_SOCKET: receiver.notifySocket, FDSTORE: '16', HANDOVER_DIR: path.join(base, 'ctl') };
  const group = sandbox.group();
  const first = group.start([fixture], { env });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { what: 'READY' });
  assert.deepEqual(receiver.store.map((e) => e.name), ['tcp%3A127.0.0.1%3A0'], 'the listening socket is in the store under its key');
  const storedInode = receiver.store[0].inode;

  // Clients that each open a fresh connection per request, flat out; phase says when a request started.
  let phase = 'running';
  let stopped = false;
  const results = [];
  const client = async () => {
    while (!stopped) {
      const record = { phase };
      results.push(record);
      try {
        record.body = (await get(Number(port))).body;
      } catch (err) {
        record.error = err.code ?? err.message;
      }
    }
  };
  const clients = Array.from({ length: CLIENTS }, client);
  await waitUntil(() => results.filter((r) => r.body).length >= 200, 20_000, '200 answers before the crash');

  process.kill(Number(firstPid), 'SIGKILL');
  assert.deepEqual(await first.exited, { code: null, signal: 'SIGKILL' });
  phase = 'down';
  // Connections made while no process runs: they can only be served from the stored socket's backlog.
  const whileDown = Array.from({ length: 5 }, () => get(Number(port)).then((res) => res.body, (err) => `error ${err.code}`));

  const since = group.lines.length;
  startWithListenFds(group, [fixture], { fds: receiver.store.map((e) => e.fd), names: receiver.store.map((e) => e.name), env });
  const [, secondPid, secondPort, before, after] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=(\S+) listen-fds-after=(\S+)/, { since });
  assert.equal(secondPort, port);
  assert.deepEqual([before, after], ['1', 'none']);
  phase = 'restarted';
  assert.deepEqual(await Promise.all(whileDown), Array(5).fill(secondPid), 'every connection made while the service was down is served by the restarted one');
  await waitUntil(() => results.filter((r) => r.phase === 'restarted' && r.body).length >= 100, 20_000, '100 answers after the restart');
  stopped = true;
  await Promise.all(clients);

  const failed = results.filter((r) => r.error !== undefined);
  if (process.env.HANDOVER_TEST_VERBOSE) console.log(`${results.length} requests, ${failed.length} failed: ${JSON.stringify(failed)}`);
  assert.equal(results.filter((r) => r.error === 'ECONNREFUSED').length, 0, 'no connection refused');
  assert.ok(failed.every((r) => r.phase === 'running'), `only requests started before the crash failed: ${JSON.stringify(failed)}`);
  assert.ok(failed.length <= CLIENTS, `at most one request in flight per client was lost: ${failed.length}`);
  assert.ok(results.filter((r) => r.phase !== 'running').every((r) => r.body === secondPid), 'everything started after the crash was served by the restarted process');
  // It stored the same socket again: systemd (and this stand-in) keep one copy.
  await receiver.waitFor((m) => m.text === `MAINPID=${secondPid}\nREADY=1`, { what: 'READY of the restarted process' });
  assert.deepEqual(receiver.store.map((e) => [e.name, e.inode]), [['tcp%3A127.0.0.1%3A0', storedInode]]);
  assert.equal(receiver.messages.filter((m) => m.fields.get('FDSTORE') === '1').length, 2);
  assert.ok(!group.lines.some((l) => l.startsWith('warning')), group.lines.join('\n'));
});

test('across an upgrade the store keeps the same socket and drops a listener the successor does not take', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const env = { NOTIFY_SOCKET: receiver.notifySocket, FDSTORE: '16', HANDOVER_DIR: path.join(base, 'ctl'), EXTRA_KEY: 'admin:api' };
  const group = sandbox.group();
  group.start([fixture], { env });
  const [, firstPid] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { what: 'READY' });
  assert.deepEqual(receiver.store.map((e) => e.name).sort(), ['admin%3Aapi', 'tcp%3A127.0.0.1%3A0']);
  const mainInode = receiver.store.find((e) => e.name === 'tcp%3A127.0.0.1%3A0').inode;

  const count = receiver.messages.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=successor/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${secondPid}\nREADY=1`, { since: count, what: 'READY of the successor' });
  await gone(Number(firstPid));
  assert.deepEqual(receiver.texts().slice(count).map((t) => t.replace(/MONOTONIC_USEC=\d+/, 'MONOTONIC_USEC=N')), [
    'RELOADING=1 MONOTONIC_USEC=N',
    'FDSTOREREMOVE=1 FDNAME=admin%3Aapi',
    'FDSTORE=1 FDNAME=tcp%3A127.0.0.1%3A0',
    `MAINPID=${secondPid} READY=1`,
  ]);
  assert.deepEqual(receiver.store.map((e) => [e.name, e.inode]), [['tcp%3A127.0.0.1%3A0', mainInode]]);
});
