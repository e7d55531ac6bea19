// Type=notify with NotifyAccess=all, against a real datagram socket that receives every message:
// READY with MAINPID on start; on an upgrade RELOADING=1 with MONOTONIC_USEC from the predecessor,
// then MAINPID=<successor> and READY=1 before the predecessor exits; no STOPPING=1 from a
// predecessor that handed over (it would stop the whole unit), STOPPING=1 from stop(); READY=1
// again after a failed upgrade, MAINPID back after a rollback; abstract NOTIFY_SOCKET names.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import * as path from 'node:path';
import { writeFileSync } from 'node:fs';
import { Sandbox, root, fixtures, get } from './helpers.mjs';
import { NotifyReceiver, gone } from './systemd-helpers.mjs';
import { fdName, keyOfFdName, notifyAddress } from '../dist/systemd.js';
import { createUpgrader } from 'handover';

const example = path.join(root, 'examples', 'http-server.mjs');
const sandbox = new Sandbox();
let receiver;
afterEach(async () => {
  await sandbox.cleanup();
  receiver?.close();
  receiver = undefined;
});

const monotonicUsec = () => process.hrtime.bigint() / 1000n;

test('upgrade under Type=notify: RELOADING, then MAINPID=<successor> and READY=1 before the predecessor exits; STOPPING=1 on SIGTERM', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const group = sandbox.group();
  const first = group.start([example, '--port', '0', '--host', '127.0.0.1', '--dir', path.join(base, 'ctl')], { env: { NOTIFY_SOCKET: receiver.notifySocket } });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { what: 'READY of the first generation' });

  // What systemd would see when the predecessor exits: everything sent before its exit is queued by then.
  const atExit = first.exited.then(() => {
    receiver.drain();
    return receiver.texts();
  });
  const beforeSighup = monotonicUsec();
  const since = group.lines.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  const seen = await atExit;
  const afterExit = monotonicUsec();

  assert.deepEqual(seen.filter((text) => !text.startsWith('RELOADING=1')), [`MAINPID=${firstPid} READY=1`, `MAINPID=${secondPid} READY=1`], 'MAINPID and READY of the successor reached systemd before the predecessor exited, and nothing else (no STOPPING=1)');
  assert.equal(seen.length, 3);
  const reloading = /^RELOADING=1 MONOTONIC_USEC=(\d+)$/.exec(seen[1]);
  assert.ok(reloading, `the second message is RELOADING=1 with MONOTONIC_USEC: ${seen[1]}`);
  const usec = BigInt(reloading[1]);
  assert.ok(usec >= beforeSighup && usec <= afterExit, `MONOTONIC_USEC ${usec} is CLOCK_MONOTONIC between the SIGHUP (${beforeSighup}) and the exit (${afterExit})`);
  assert.equal((await get(Number(port))).headers['x-pid'], secondPid);

  // The successor is the main process now: SIGTERM -> stop() -> STOPPING=1.
  const count = receiver.messages.length;
  process.kill(Number(secondPid), 'SIGTERM');
  await gone(Number(secondPid));
  receiver.drain();
  assert.deepEqual(receiver.texts().slice(count), ['STOPPING=1']);
});

test('the successor says MAINPID before COMMIT: a successor that stalls right after it, still heard before the predecessor exits', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const group = sandbox.group();
  const first = group.start([path.join(fixtures, 'systemd-server.mjs')], { env: { NOTIFY_SOCKET: receiver.notifySocket, HANDOVER_DIR: path.join(base, 'ctl'), STALL_AFTER_READY_MS: '1000' } });
  const [, firstPid] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { what: 'READY of the first generation' });
  const atExit = first.exited.then(() => {
    receiver.drain();
    return receiver.texts();
  });
  process.kill(Number(firstPid), 'SIGHUP');
  const seen = await atExit;
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=successor/, { since: 0 });
  assert.equal(seen.at(-1), `MAINPID=${secondPid} READY=1`, `heard before the predecessor exited: ${JSON.stringify(seen)}`);
});

test('abstract NOTIFY_SOCKET: a failed upgrade says READY=1 again; a rollback takes MAINPID back', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(`\0handover-test-${process.pid}-${Date.now()}`);
  const modeFile = path.join(base, 'mode');
  const env = { NOTIFY_SOCKET: receiver.notifySocket, HANDOVER_DIR: path.join(base, 'ctl'), MODE_FILE: modeFile, READY_TIMEOUT: '5000', GRACEFUL_TIMEOUT: '3000' };
  const group = sandbox.group();
  group.start([path.join(fixtures, 'server.mjs')], { env });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { what: 'READY on the abstract socket' });

  // A successor that crashes before it is ready.
  writeFileSync(modeFile, 'crash-before-ready');
  let since = group.lines.length;
  let count = receiver.messages.length;
  process.kill(Number(firstPid), 'SIGHUP');
  await group.waitForLine(/^upgrade-failed code=ERR_UPGRADE_SUCCESSOR_EXITED/, { since });
  await receiver.waitFor((m) => m.text === 'READY=1', { since: count, what: 'READY=1 after the failed upgrade' });
  assert.deepEqual(receiver.texts().slice(count).map((t) => t.replace(/MONOTONIC_USEC=\d+/, 'MONOTONIC_USEC=N')), ['RELOADING=1 MONOTONIC_USEC=N', 'READY=1']);

  // A successor that dies right after READY: the predecessor rolls back and is the main process
  // again. A slow request keeps the predecessor retiring (not yet retired) meanwhile: it is sent on
  // a connection the predecessor already served, long before the successor can start.
  writeFileSync(modeFile, 'die-after-ready');
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  assert.equal((await get(Number(port), '/', { agent })).status, 200);
  const slow = get(Number(port), '/slow?ms=2000', { agent });
  since = group.lines.length;
  count = receiver.messages.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=successor/, { since });
  await group.waitForLine(new RegExp(`^rollback successor=${secondPid}`), { since });
  await receiver.waitFor((m) => m.text === `MAINPID=${firstPid}\nREADY=1`, { since: count, what: 'MAINPID back after the rollback' });
  assert.deepEqual(receiver.texts().slice(count).map((t) => t.replace(/MONOTONIC_USEC=\d+/, 'MONOTONIC_USEC=N')), ['RELOADING=1 MONOTONIC_USEC=N', `MAINPID=${secondPid} READY=1`, `MAINPID=${firstPid} READY=1`]);
  assert.equal((await slow).status, 200);
  agent.destroy();

  // And the next upgrade hands over for good.
  writeFileSync(modeFile, 'normal');
  since = group.lines.length;
  count = receiver.messages.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, thirdPid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=successor/, { since });
  await receiver.waitFor((m) => m.text === `MAINPID=${thirdPid}\nREADY=1`, { since: count, what: 'MAINPID of the third generation' });
  await gone(Number(firstPid));
  receiver.drain();
  assert.ok(!receiver.texts().includes('STOPPING=1'), `no STOPPING=1 from the retired predecessor: ${JSON.stringify(receiver.texts())}`);
});

test('NOTIFY_SOCKET addresses, and listener keys as FDNAMEs (printable ASCII without ":", at most 255) and back', () => {
  assert.equal(notifyAddress('/run/systemd/notify'), '/run/systemd/notify');
  assert.equal(notifyAddress('@/org/freedesktop/systemd1/notify/123'), '\0/org/freedesktop/systemd1/notify/123');
  assert.equal(notifyAddress('vsock:2:1234'), undefined);
  assert.equal(notifyAddress(''), undefined);
  assert.equal(notifyAddress(undefined), undefined);
  const keys = ['tcp:127.0.0.1:8080', 'tcp:[::1]:443', 'tcp:*:80', 'unix:/run/app/admin.sock', 'web', '100%:ok', 'café:☕'];
  for (const key of keys) {
    const name = fdName(key);
    assert.match(name, /^[\x20-\x7e]*$/, `${key} -> ${name}`);
    assert.ok(!name.includes(':'), name);
    assert.equal(keyOfFdName(name), key);
  }
  assert.equal(fdName('tcp:127.0.0.1:8080'), 'tcp%3A127.0.0.1%3A8080');
  assert.equal(fdName('web'), 'web', 'a name without special characters is itself');
  assert.equal(keyOfFdName('my-server.socket'), 'my-server.socket');
  assert.equal(keyOfFdName('50%off'), '50%off', 'a name that is not percent-encoding stays as it is');
  assert.equal(fdName('x'.repeat(255)).length, 255);
  assert.equal(fdName('x'.repeat(254) + ':'), undefined, 'too long once encoded');
});

test('options.systemd false: nothing is said to NOTIFY_SOCKET and LISTEN_* stay for the application', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const group = sandbox.group();
  group.start([path.join(fixtures, 'systemd-server.mjs')], { env: { NOTIFY_SOCKET: receiver.notifySocket, FDSTORE: '4', LISTEN_FDS: '0', LISTEN_PID: '1', HANDOVER_DIR: path.join(base, 'ctl'), HANDOVER_SYSTEMD: '0' } });
  await group.waitForLine(/^ready pid=\d+ port=\d+ gen=first listen-fds-before=0 listen-fds-after=0$/, { since: 0 });
  // READY=1 would have been queued before the ready line was printed.
  receiver.drain();
  assert.deepEqual(receiver.texts(), []);
  assert.throws(() => createUpgrader({ dir: path.join(base, 'other'), systemd: 'yes' }), { code: 'ERR_HANDOVER_INVALID_ARG', message: 'options.systemd must be a boolean, got yes' });
});
