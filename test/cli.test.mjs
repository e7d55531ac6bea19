// The `handover` command line against real generations: status, upgrade (progress, result, exit
// status), rolling upgrades of several dirs, and the control socket's defences against a client
// that sends garbage or runs as a uid outside allowedUids (the generation serves on).
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { ChannelListener, requestStatus, requestUpgrade } from 'handover';
import { Sandbox, fixtures, forOtherUser, get, root } from './helpers.mjs';

const cli = path.join(root, 'dist', 'cli', 'main.js');
const serverScript = path.join(fixtures, 'server.mjs');
const sandbox = new Sandbox();
afterEach(async () => {
  await sandbox.cleanup();
  groups.length = 0;
});

/** Every group of this file: a pid the CLI reports (a successor) is ended with them. */
const groups = [];

/**
 * handover ARGS, run to its end (killed by pid after 30 s: a hung CLI is a failure, not a leak).
 * Every pid it prints (spawned successors) is tracked: a test may end before the successor's own
 * ready line has come through the pipe.
 */
function handover(args, options = {}) {
  return run(args, options).then((result) => {
    for (const [, pid] of `${result.stdout}\n${result.stderr}`.matchAll(/pid"?[ :=]+(\d+)/g)) for (const group of groups) group.track(Number(pid));
    return result;
  });
}

function run(args, options) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** A generation of test/fixtures/server.mjs in a dir of its own; `mode` is what its successors do. */
async function startServer(mode = 'normal', env = {}) {
  const group = sandbox.group();
  groups.push(group);
  const base = sandbox.dir();
  const dir = path.join(base, 'ctl');
  const modeFile = path.join(base, 'mode');
  fs.writeFileSync(modeFile, mode);
  group.start([serverScript], { env: { HANDOVER_DIR: dir, PORT: '0', MODE_FILE: modeFile, ...env } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { group, base, dir, modeFile, pid: Number(pid), port: Number(port) };
}

describe('handover status', () => {
  test('shows pid, generation, state, uptime, listeners, connections and the last upgrade; --json for scripts', async () => {
    const server = await startServer();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    await get(server.port, '/', { agent });
    const text = await handover(['status', '--dir', server.dir]);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`^pid +${server.pid}$`, 'm'));
    assert.match(text.stdout, /^generation +1$/m);
    assert.match(text.stdout, /^state +serving$/m);
    assert.match(text.stdout, /^uptime +\d/m);
    assert.match(text.stdout, new RegExp(`^listeners +127\\.0\\.0\\.1:${server.port} \\(tcp:127\\.0\\.0\\.1:0\\)$`, 'm'));
    assert.match(text.stdout, /^connections +1 open/m);
    assert.match(text.stdout, /^last upgrade none/m);
    const json = await handover(['status', '--dir', server.dir, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const { ok, status } = JSON.parse(json.stdout);
    assert.equal(ok, true);
    assert.equal(status.pid, server.pid);
    assert.equal(status.generation, 1);
    assert.deepEqual(status.listeners, [{ key: 'tcp:127.0.0.1:0', kind: 'tcp', address: `127.0.0.1:${server.port}` }]);
    assert.deepEqual(status.connections, { open: 1, closed: 0, moved: 0 });
    assert.ok(status.uptime >= 0 && status.startedAt <= Date.now());
    agent.destroy();
  });

  test('no generation in the dir: exit 3 and ERR_HANDOVER_NOT_RUNNING', async () => {
    const dir = sandbox.dir();
    const result = await handover(['status', '--dir', dir]);
    assert.equal(result.code, 3);
    assert.match(result.stderr, /ERR_HANDOVER_NOT_RUNNING: no generation runs in .*: there is no control\.sock/);
    const json = await handover(['status', '--dir', path.join(dir, 'missing'), '--json']);
    assert.equal(json.code, 3);
    assert.equal(JSON.parse(json.stdout).code, 'ERR_HANDOVER_NOT_RUNNING');
  });

  test('usage errors: exit 2', async () => {
    assert.equal((await handover(['status'])).code, 2);
    assert.equal((await handover(['frobnicate', '--dir', '/tmp'])).code, 2);
    assert.equal((await handover(['upgrade', '--dir', '/tmp', '--timeout', 'soon'])).code, 2);
    assert.equal((await handover(['run', '--dir', '/tmp'])).code, 2);
    const help = await handover(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /handover upgrade --dir D/);
  });
});

describe('handover upgrade', () => {
  test('shows each step, exits 0 once the successor serves; status then shows the new generation and the result', async () => {
    const server = await startServer();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 2 });
    await Promise.all([get(server.port, '/', { agent }), get(server.port, '/', { agent })]);
    const result = await handover(['upgrade', '--dir', server.dir]);
    assert.equal(result.code, 0, result.stderr);
    const lines = result.stdout.trim().split('\n');
    assert.equal(lines[0], `upgrading ${server.dir}`);
    const successor = Number(/spawned successor pid (\d+)/.exec(result.stdout)?.[1]);
    assert.ok(successor > 0, result.stdout);
    assert.deepEqual(
      lines.slice(1, 6).map((line) => line.trim().replace(/\d+/g, 'N')),
      ['spawned successor pid N', 'successor pid N connected; listeners handed over', 'successor pid N is ready; the old generation stopped accepting', 'moving N connections', 'old generation retired'],
    );
    assert.match(lines[4], /moving 2 connections/);
    assert.match(lines[6], new RegExp(`^upgraded .*: generation 1 \\(pid ${server.pid}\\) -> generation 2 \\(pid ${successor}\\) in [\\d.]+ s; connections: 2 moved, 0 closed, 0 cut$`));
    // The same keep-alive connections, answered by the successor.
    const answered = await Promise.all([get(server.port, '/', { agent }), get(server.port, '/', { agent })]);
    assert.deepEqual(answered.map((r) => r.headers['x-pid']), [String(successor), String(successor)]);
    const { status } = JSON.parse((await handover(['status', '--dir', server.dir, '--json'])).stdout);
    assert.equal(status.pid, successor);
    assert.equal(status.generation, 2);
    assert.equal(status.lastUpgrade.result, 'succeeded');
    assert.equal(status.lastUpgrade.predecessorPid, server.pid);
    agent.destroy();
  });

  // The predecessor says BYE to its successor before it reports 'retired' to the client: the next
  // request finds the successor free (no ERR_UPGRADE_IN_PROGRESS for a predecessor still retiring).
  test('requestUpgrade() back to back: each one resolves when the next one can start', async () => {
    const server = await startServer();
    let from = server.pid;
    for (let generation = 2; generation <= 4; generation++) {
      const outcome = await requestUpgrade(server.dir, { timeout: 20_000 });
      server.group.track(outcome.pid);
      assert.equal(outcome.from.pid, from);
      assert.equal(outcome.generation, generation);
      from = outcome.pid;
    }
    assert.equal((await requestStatus(server.dir)).status.pid, from);
  });

  test('--json: one object with the steps and the result', async () => {
    const server = await startServer();
    const result = await handover(['upgrade', '--dir', server.dir, '--json']);
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.ok, true);
    const [only] = report.results;
    assert.equal(only.ok, true);
    assert.deepEqual(only.from, { pid: server.pid, generation: 1 });
    assert.equal(only.generation, 2);
    assert.deepEqual(only.steps.map((s) => s.step), ['spawned', 'connected', 'ready', 'moving', 'retired']);
    assert.deepEqual(only.report, { closed: 0, moved: 0, remaining: 0, timedOut: false });
  });

  test('a successor that crashes: exit 1 with ERR_UPGRADE_SUCCESSOR_EXITED; the generation serves on and remembers it', async () => {
    const server = await startServer('crash-before-ready');
    const result = await handover(['upgrade', '--dir', server.dir]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /upgrade of .* failed: ERR_UPGRADE_SUCCESSOR_EXITED: the successor \(pid \d+\) (exited with code 3|went away) before it was ready/);
    assert.equal((await get(server.port)).headers['x-pid'], String(server.pid));
    const { status } = JSON.parse((await handover(['status', '--dir', server.dir, '--json'])).stdout);
    assert.equal(status.pid, server.pid);
    assert.equal(status.generation, 1);
    assert.equal(status.state, 'serving');
    assert.equal(status.lastUpgrade.result, 'failed');
    assert.equal(status.lastUpgrade.code, 'ERR_UPGRADE_SUCCESSOR_EXITED');
  });

  test('a successor lost after READY: exit 1 with ERR_UPGRADE_ROLLED_BACK; the generation serves again', async () => {
    const server = await startServer('die-after-ready');
    // A request in flight keeps the predecessor retiring (not yet retired) when the successor dies.
    const slow = get(server.port, '/slow?ms=1500');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const result = await handover(['upgrade', '--dir', server.dir, '--json']);
    assert.equal(result.code, 1, result.stdout + result.stderr);
    const [only] = JSON.parse(result.stdout).results;
    assert.equal(only.code, 'ERR_UPGRADE_ROLLED_BACK');
    assert.deepEqual(only.steps.map((s) => s.step).slice(0, 3), ['spawned', 'connected', 'ready']);
    await server.group.waitForLine(/^rollback successor=/, { since: 0 });
    assert.equal((await slow).status, 200);
    const { status } = JSON.parse((await handover(['status', '--dir', server.dir, '--json'])).stdout);
    assert.equal(status.pid, server.pid);
    assert.equal(status.lastUpgrade.result, 'rolled-back');
  });

  test('--timeout: exit 4 with ERR_HANDOVER_TIMEOUT while the successor hangs', async () => {
    const server = await startServer('hang', { READY_TIMEOUT: '20000' });
    const result = await handover(['upgrade', '--dir', server.dir, '--timeout', '1500']);
    assert.equal(result.code, 4, result.stdout + result.stderr);
    assert.match(result.stderr, /ERR_HANDOVER_TIMEOUT/);
    assert.match(result.stdout, /spawned successor pid \d+/);
    await server.group.waitForLine(/^hanging pid=\d+/, { since: 0 });
  });

  test('several --dir: one after the other, stopping at the first failure', async () => {
    const first = await startServer();
    const failing = await startServer('crash-before-ready');
    const untouched = await startServer();
    const result = await handover(['upgrade', '--dir', first.dir, '--dir', failing.dir, '--dir', untouched.dir, '--json']);
    assert.equal(result.code, 1);
    const report = JSON.parse(result.stdout);
    assert.equal(report.ok, false);
    assert.deepEqual(report.results.map((r) => [r.dir, r.ok, r.code]), [
      [first.dir, true, undefined],
      [failing.dir, false, 'ERR_UPGRADE_SUCCESSOR_EXITED'],
    ]);
    for (const [server, generation] of [[first, 2], [failing, 1], [untouched, 1]]) {
      const { status } = JSON.parse((await handover(['status', '--dir', server.dir, '--json'])).stdout);
      assert.equal(status.generation, generation, server.dir);
    }
  });

  test('an upgrade already running: exit 1 with ERR_UPGRADE_IN_PROGRESS', async () => {
    const server = await startServer('hang', { READY_TIMEOUT: '20000' });
    const hanging = handover(['upgrade', '--dir', server.dir, '--timeout', '3000']);
    await server.group.waitForLine(/^hanging pid=\d+/, { since: 0 });
    const second = await handover(['upgrade', '--dir', server.dir]);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /ERR_UPGRADE_IN_PROGRESS/);
    assert.equal((await hanging).code, 4);
  });
});

/** A raw control client (its own copy of the addon, so that it can run as another uid): sends one frame, prints the reply. */
function writeRawClient(dir) {
  const { node, addon } = forOtherUser(dir);
  const script = path.join(dir, 'client.cjs');
  fs.writeFileSync(
    script,
    `
const native = require(${JSON.stringify(addon)});
const [socketPath, mode] = process.argv.slice(2);
const fd = native.seqpacketConnect(socketPath);
function chunk(payload) {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(0x484f, 0); header.writeUInt8(1, 2); header.writeUInt8(3, 3);
  header.writeUInt32BE(payload.length, 4); header.writeUInt32BE(0, 8);
  return Buffer.concat([header, payload]);
}
function message(type, header) {
  const json = Buffer.from(JSON.stringify(header));
  const lead = Buffer.alloc(5); lead.writeUInt8(type, 0); lead.writeUInt32BE(json.length, 1);
  return chunk(Buffer.concat([lead, json]));
}
try {
if (mode === 'garbage') native.sendmsg(fd, Buffer.from('\\x00\\x01garbage, not a frame'), []);
else if (mode === 'bad-status') native.sendmsg(fd, message(15, { version: 'one' }), []);
else if (mode === 'old-version') native.sendmsg(fd, message(15, { version: 99 }), []);
else native.sendmsg(fd, message(mode === 'upgrade' ? 17 : 15, { version: 1 }), []);
} catch (err) {
  // A refusal may already be on its way: read it anyway.
}
const buffer = Buffer.alloc(70000);
const poller = native.createPoller(fd, () => {
  let received;
  for (;;) {
    try { received = native.recvmsg(fd, buffer, 253); break; } catch (err) { if (err.code !== 'ECONNRESET') { console.log('recv-error ' + err.code); finish(); return; } }
  }
  if (received === null) return;
  if (received.bytes === 0) { console.log('closed'); finish(); return; }
  const payload = buffer.subarray(12, received.bytes);
  const header = JSON.parse(payload.subarray(5, 5 + payload.readUInt32BE(1)).toString());
  console.log('reply type=' + payload[0] + ' code=' + (header.code ?? ''));
  finish();
});
poller.start(true, false);
function finish() { poller.close(); native.close(fd); process.exit(0); }
setTimeout(() => { console.log('no-reply'); finish(); }, 5000);
`,
  );
  fs.chmodSync(script, 0o644);
  return (socketPath, mode, options = {}) =>
    new Promise((resolve, reject) => {
      const child = spawn(node, [script, socketPath, mode], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], ...options });
      let out = '';
      child.stdout.on('data', (c) => (out += c));
      child.stderr.on('data', (c) => (out += c));
      child.on('error', reject);
      child.on('exit', () => resolve(out.trim()));
    });
}

describe('the control socket against bad clients', () => {
  test('garbage, a malformed request or another version: a clear error, and the generation serves on', async () => {
    const server = await startServer();
    const client = writeRawClient(sandbox.dir('handover-client-'));
    const socketPath = path.join(server.dir, 'control.sock');
    assert.equal(await client(socketPath, 'garbage'), 'closed');
    await server.group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since: 0 });
    const since = server.group.lines.length;
    assert.equal(await client(socketPath, 'bad-status'), 'closed');
    await server.group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since });
    assert.equal(await client(socketPath, 'old-version'), 'reply type=3 code=ERR_HANDOVER_VERSION');
    assert.equal(await client(socketPath, 'status'), 'reply type=16 code=');
    assert.equal((await get(server.port)).status, 200);
    const result = await handover(['upgrade', '--dir', server.dir]);
    assert.equal(result.code, 0, result.stderr);
  });

  test('a client whose uid is not in allowedUids is refused (ERR_UPGRADE_REFUSED), for status and upgrade alike', { skip: process.getuid?.() !== 0 && 'switching uid needs root' }, async () => {
    const server = await startServer();
    const client = writeRawClient(sandbox.dir('handover-client-'));
    const socketPath = path.join(server.dir, 'control.sock');
    // A misconfigured directory: the socket is reachable by anyone. The uid check must still hold.
    fs.chmodSync(server.base, 0o755);
    fs.chmodSync(server.dir, 0o755);
    fs.chmodSync(socketPath, 0o777);
    for (const mode of ['status', 'upgrade']) {
      assert.equal(await client(socketPath, mode, { uid: 65534, gid: 65534 }), 'reply type=3 code=ERR_UPGRADE_REFUSED');
    }
    await server.group.waitForLine(/^warning code=ERR_UPGRADE_REFUSED/, { since: 0 });
    const { status } = JSON.parse((await handover(['status', '--dir', server.dir, '--json'])).stdout);
    assert.equal(status.pid, server.pid);
    assert.equal(status.generation, 1);
    assert.equal((await get(server.port)).status, 200);
  });

  test('a generation that answers garbage: the CLI exits 5 with ERR_HANDOVER_PROTOCOL', async () => {
    const dir = path.join(sandbox.dir(), 'ctl');
    fs.mkdirSync(dir, { mode: 0o700 });
    const listener = new ChannelListener(path.join(dir, 'control.sock'));
    listener.on('channel', (channel) => channel.on('frame', () => void channel.send(Buffer.from([16, 0, 0, 0, 2, 0x7b, 0x7d])).catch(() => undefined)));
    try {
      const result = await handover(['status', '--dir', dir]);
      assert.equal(result.code, 5);
      assert.match(result.stderr, /ERR_HANDOVER_PROTOCOL: STATUS_REPLY needs status/);
    } finally {
      listener.close();
    }
  });
});
