// `handover run` under systemd, played by a real datagram socket (NotifyReceiver) and real
// socket activation (systemd-socket-activate): the supervisor stays the unit's main process. It
// alone notifies (MAINPID=<its pid> + READY=1 once its first generation serves, RELOADING=1 and
// READY=1 around an upgrade on SIGHUP, STOPPING=1 on SIGTERM); no generation sends MAINPID. The
// socket systemd passed to the supervisor reaches its first generation (LISTEN_PID rewritten as
// HANDOVER_LISTEN_PARENT_PID), and a grandchild does not take it.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { Sandbox, fixtures, get, root, waitUntil } from './helpers.mjs';
import { NotifyReceiver, startCommand, startWithListenFds } from './systemd-helpers.mjs';

const cli = path.join(root, 'dist', 'cli', 'main.js');
const fixture = path.join(fixtures, 'systemd-server.mjs');
const sandbox = new Sandbox();
let receiver;
afterEach(async () => {
  await sandbox.cleanup();
  receiver?.close();
  receiver = undefined;
});

/** A port nobody listens on right now (systemd-socket-activate needs a number). */
async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** The supervisor's own lines (stderr): `[handover run PID] ...`. */
const supervisorLines = (group) => group.stderr.join('').split('\n').filter((line) => line.startsWith('[handover run '));

test('socket-activated, Type=notify: the supervisor is the main process; its first generation gets the socket; SIGHUP reloads; SIGTERM stops', async () => {
  const base = sandbox.dir();
  const ctl = path.join(base, 'ctl');
  const port = await freePort();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const group = sandbox.group();
  const env = { NOTIFY_SOCKET: receiver.notifySocket, FDSTORE: '4', HANDOVER_DIR: ctl, PORT: String(port), KEY: 'api' };
  const setenv = Object.entries(env).map(([name, value]) => `--setenv=${name}=${value}`);
  const activator = startCommand(group, 'systemd-socket-activate', ['-l', `127.0.0.1:${port}`, '--fdname=api', ...setenv, process.execPath, cli, 'run', '--dir', ctl, '--', process.execPath, fixture]);
  await waitUntil(() => group.stderr.join('').includes(`Listening on 127.0.0.1:${port} as 3.`), 10_000, 'systemd-socket-activate to listen');
  // This request starts the service and waits in the activated socket's backlog.
  const waking = get(port).then((res) => res, (err) => err);
  const [, firstPid, , before, after] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=(\S+) listen-fds-after=(\S+)/, { since: 0 });
  assert.deepEqual([before, after], ['1', 'none'], 'the first generation got the one activated socket and unset LISTEN_FDS');
  assert.equal((await waking).body, firstPid, 'the connection that started the service is served by the first generation');
  // systemd-socket-activate execs the command: the supervisor keeps its pid.
  const supervisor = activator.pid;
  assert.notEqual(Number(firstPid), supervisor);
  await receiver.waitFor((m) => m.fields.get('READY') === '1', { what: 'READY=1' });
  assert.deepEqual(receiver.texts(), [`MAINPID=${supervisor} READY=1`], 'the supervisor alone says READY, naming itself');
  assert.deepEqual(receiver.store, [], 'no generation used the fd store (it has no NOTIFY_SOCKET)');

  // An upgrade on SIGHUP (ExecReload=kill -HUP $MAINPID, or Type=notify-reload).
  const since = group.lines.length;
  const sinceMessage = receiver.messages.length;
  process.kill(supervisor, 'SIGHUP');
  const reloading = await receiver.waitFor((m) => m.fields.get('RELOADING') === '1', { since: sinceMessage, what: 'RELOADING=1' });
  assert.match(receiver.messages[reloading].fields.get('MONOTONIC_USEC'), /^\d+$/);
  const [, secondPid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=successor listen-fds-before=none/, { since });
  await receiver.waitFor((m) => m.text === 'READY=1', { since: reloading, what: 'READY=1 after the upgrade' });
  await waitUntil(() => supervisorLines(group).some((l) => l.endsWith(`pid ${secondPid} serves now`)), 10_000, 'the supervisor to adopt the successor');
  assert.equal((await get(port)).body, secondPid);
  assert.ok(receiver.messages.every((m) => !m.fields.has('MAINPID') || m.fields.get('MAINPID') === String(supervisor)), `only the supervisor is ever named main: ${JSON.stringify(receiver.texts())}`);

  // systemctl stop: SIGTERM to the main process.
  const beforeStop = receiver.messages.length;
  process.kill(supervisor, 'SIGTERM');
  assert.deepEqual(await activator.exited, { code: 0, signal: null }, 'the supervisor exits with the status of the last generation');
  receiver.drain();
  assert.deepEqual(receiver.texts().slice(beforeStop), ['STOPPING=1']);
  assert.deepEqual(receiver.texts().slice(0, 3).map((t) => t.replace(/MONOTONIC_USEC=\d+/, 'MONOTONIC_USEC=T')), [`MAINPID=${supervisor} READY=1`, 'RELOADING=1 MONOTONIC_USEC=T', 'READY=1']);
  assert.deepEqual(group.lines.filter((l) => l.startsWith('warning')), [], 'no LISTEN_FDS mismatch, no notify failure');
});

test('the activated fds are for the first generation itself: a grandchild (a wrapper that forks) ignores them, with a warning', async () => {
  const base = sandbox.dir();
  const ctl = path.join(base, 'ctl');
  // What fd 3 is does not matter: the parent check comes first.
  const file = fs.openSync(path.join(base, 'fd3'), 'w');
  try {
    const group = sandbox.group();
    // sh runs node as a child (it has more to do afterwards), not by exec.
    const supervisor = startWithListenFds(group, [cli, 'run', '--dir', ctl, '--', 'sh', '-c', '"$0" "$@"; exit $?', process.execPath, fixture], { fds: [file], names: ['api'], env: { HANDOVER_DIR: ctl, KEY: 'api' } });
    const [, pid, port, before, after] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=(\S+) listen-fds-after=(\S+)/, { since: 0 });
    assert.deepEqual([before, after], ['1', 'none']);
    assert.ok(group.lines.some((l) => new RegExp(`^warning code=ERR_HANDOVER_SYSTEMD LISTEN_FDS=1 is for a child of pid ${supervisor.pid}, not this process \\(its parent is \\d+\\); ignored$`).test(l)), group.lines.join('\n'));
    assert.equal((await get(Number(port))).body, pid, 'it bound a socket of its own');
    // sh dies of the forwarded SIGTERM; the supervisor (a subreaper) adopts node, which answers
    // on the control socket, and passes SIGTERM on to it.
    process.kill(supervisor.pid, 'SIGTERM');
    assert.deepEqual(await supervisor.exited, { code: 0, signal: null }, supervisorLines(group).join('\n'));
  } finally {
    fs.closeSync(file);
  }
});

test('under systemd without --dir: refused, status 2, nothing started', async () => {
  const base = sandbox.dir();
  receiver = new NotifyReceiver(path.join(base, 'notify.sock'));
  const group = sandbox.group();
  const marker = path.join(base, 'started');
  const supervisor = group.start([cli, 'run', '--', 'sh', '-c', 'touch "$0"', marker], { env: { NOTIFY_SOCKET: receiver.notifySocket } });
  assert.deepEqual(await supervisor.exited, { code: 2, signal: null });
  assert.match(group.stderr.join(''), /under systemd \(NOTIFY_SOCKET is set\) handover run needs --dir/);
  assert.equal(fs.existsSync(marker), false);
  receiver.drain();
  assert.deepEqual(receiver.texts(), []);
});

test('the sample units for handover run parse (systemd-analyze verify)', () => {
  const dir = sandbox.dir();
  for (const name of ['my-server-run.service', 'my-server-run.socket']) {
    fs.writeFileSync(path.join(dir, name), fs.readFileSync(path.join(root, 'examples', 'systemd', name), 'utf8').replaceAll('/usr/bin/node', process.execPath));
  }
  const verify = (unit) => execFileSync('sh', ['-c', 'systemd-analyze verify --man=no "$0" 2>&1', path.join(dir, unit)], { encoding: 'utf8' });
  for (const unit of ['my-server-run.service', 'my-server-run.socket']) assert.equal(verify(unit), '', unit);
  fs.writeFileSync(path.join(dir, 'broken.service'), '[Service]\nType=notify\nKillMode=mixd\nExecStart=/bin/true\n');
  assert.match(verify('broken.service'), /Failed to parse kill mode/);
});
