// Socket activation on the first start, with real LISTEN_FDS from systemd-socket-activate: the
// listeners are matched to listen() targets by name and by address, the connection that woke the
// service up is served, and LISTEN_* are gone from the environment so a successor takes the
// listeners from its predecessor (not, wrongly, from fds 3, 4, ... of its own).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as http from 'node:http';
import * as path from 'node:path';
import { Sandbox, root, fixtures, get, waitUntil } from './helpers.mjs';
import * as fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { binding } from '../dist/native.js';
import { startCommand, startWithListenFds } from './systemd-helpers.mjs';

const fixture = path.join(fixtures, 'systemd-server.mjs');
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

/** A port nobody listens on right now (systemd-socket-activate needs a number). */
async function freePort() {
  const probe = net.createServer();
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

function getUnix(socketPath) {
  return new Promise((resolve, reject) => {
    http.get({ socketPath, path: '/', agent: false }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

test('systemd-socket-activate: listeners by name and by address, the waking connection served, nothing left for the successor to misinherit', async () => {
  const base = sandbox.dir();
  const port = await freePort();
  const unixPath = path.join(base, 'web.sock');
  const group = sandbox.group();
  // --fdname: the TCP socket is "api" (the fixture's key), the unix one "other" (no key of that name: matched by its path).
  // It passes no environment of its own but what -E names (and LISTEN_*).
  const env = { HANDOVER_DIR: path.join(base, 'ctl'), PORT: String(port), KEY: 'api', UNIX_PATH: unixPath, ...(process.env.DEBUG ? { DEBUG: process.env.DEBUG } : {}) };
  const setenv = Object.entries(env).map(([name, value]) => `--setenv=${name}=${value}`);
  startCommand(group, 'systemd-socket-activate', ['-l', `127.0.0.1:${port}`, '-l', unixPath, '--fdname=api:other', ...setenv, process.execPath, fixture]);
  await waitUntil(() => group.stderr.join('').includes(`Listening on ${unixPath} as 4.`), 10_000, 'systemd-socket-activate to listen');
  // Nothing runs until the first connection: this request wakes the service and waits in the backlog.
  const waking = get(port).then((res) => res, (err) => err);
  const [, firstPid,, before, after] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=(\S+) listen-fds-after=(\S+)/, { since: 0 });
  assert.equal(before, '2', 'systemd-socket-activate passed two fds');
  assert.equal(after, 'none', 'LISTEN_FDS is unset once taken');
  assert.equal((await waking).body, firstPid, 'the connection that started the service is served');
  assert.equal(await getUnix(unixPath), firstPid);
  assert.deepEqual(group.lines.filter((l) => l.startsWith('warning')), []);

  const since = group.lines.length;
  process.kill(Number(firstPid), 'SIGHUP');
  const [, secondPid, , successorBefore] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=successor listen-fds-before=(\S+)/, { since });
  assert.equal(successorBefore, 'none', 'the successor was started without LISTEN_FDS');
  await group.waitForLine(/^retired/, { since });
  assert.equal((await get(port)).body, secondPid);
  assert.equal(await getUnix(unixPath), secondPid);
  assert.deepEqual(group.lines.filter((l) => l.startsWith('warning')), [], 'no LISTEN_PID mismatch, no protocol warning');
});

test('LISTEN_FDS meant for another pid is ignored, with a warning, and unset', async () => {
  const base = sandbox.dir();
  const group = sandbox.group();
  group.start([fixture], { env: { HANDOVER_DIR: path.join(base, 'ctl'), LISTEN_FDS: '1', LISTEN_PID: '1', LISTEN_FDNAMES: 'api' } });
  const [, pid, port, , after] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=(\S+) listen-fds-after=(\S+)/, { since: 0 });
  assert.equal(after, 'none');
  assert.ok(group.lines.some((l) => /^warning code=ERR_HANDOVER_SYSTEMD LISTEN_FDS=1 is for pid 1, not this process/.test(l)), group.lines.join('\n'));
  assert.equal((await get(Number(port))).body, pid, 'it bound a socket of its own');
});

test('LISTEN_FDS that cannot serve listen(): a file is closed with a warning, a datagram socket named like the key is left unclaimed and closed at ready()', async () => {
  const base = sandbox.dir();
  const file = fs.openSync(path.join(base, 'not-a-socket'), 'w');
  const datagram = binding().unixDatagramBind(path.join(base, 'dgram.sock'));
  try {
    const group = sandbox.group();
    startWithListenFds(group, [fixture], { fds: [file, datagram], names: ['stray', 'api'], env: { HANDOVER_DIR: path.join(base, 'ctl'), KEY: 'api' } });
    const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first listen-fds-before=2 listen-fds-after=none/, { since: 0 });
    assert.ok(group.lines.some((l) => /^warning code=ERR_HANDOVER_SYSTEMD fd 3 \(stray\) of LISTEN_FDS is not a socket/.test(l)), group.lines.join('\n'));
    assert.equal((await get(Number(port))).body, pid, 'it bound a socket of its own for "api"');
    const held = fs.readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
    assert.ok(!held.includes(path.join(base, 'not-a-socket')), 'the file is closed');
    const datagramInode = fs.readlinkSync(`/proc/self/fd/${datagram}`);
    assert.ok(!held.includes(datagramInode), `the datagram socket (${datagramInode}) is closed: ${held.join(' ')}`);
  } finally {
    fs.closeSync(file);
    binding().close(datagram);
  }
});

test('the sample units of examples/systemd parse (systemd-analyze verify)', () => {
  const dir = sandbox.dir();
  // Copies whose ExecStart= names this machine's node (verify checks that the command exists).
  for (const name of fs.readdirSync(path.join(root, 'examples', 'systemd'))) {
    fs.writeFileSync(path.join(dir, name), fs.readFileSync(path.join(root, 'examples', 'systemd', name), 'utf8').replaceAll('/usr/bin/node', process.execPath));
  }
  fs.copyFileSync(path.join(dir, 'my-worker@.service'), path.join(dir, 'my-worker@1.service'));
  const verify = (unit) => execFileSync('sh', ['-c', 'systemd-analyze verify --man=no "$0" 2>&1', path.join(dir, unit)], { encoding: 'utf8' });
  for (const unit of ['my-server.service', 'my-worker.socket', 'my-worker@1.service']) assert.equal(verify(unit), '', unit);
  // A unit with a mistake is caught, so silence means something.
  fs.writeFileSync(path.join(dir, 'broken.service'), '[Service]\nType=notfy\nExecStart=/bin/true\n');
  assert.match(verify('broken.service'), /Failed to parse service type/);
});
