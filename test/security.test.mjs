// Nobody else gets in: uid checks, garbage on the control socket, stale files. The serving process
// keeps serving through all of it, and the next upgrade works.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Sandbox, fixtures, forOtherUser, get } from './helpers.mjs';

const serverScript = path.join(fixtures, 'server.mjs');
let group;
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

/**
 * A raw peer of the control socket, written to a world-readable temp dir with its own copy of the
 * addon (and of node, if need be) so that it can run as another user. It sends one message and
 * prints what came back.
 *   modes: hello (a valid HELLO), garbage (bytes that are no frame), hello-fds (HELLO with fds attached)
 */
function writePeer(dir) {
  const { node, addon } = forOtherUser(dir);
  const script = path.join(dir, 'peer.cjs');
  fs.writeFileSync(
    script,
    `
const native = require(${JSON.stringify(addon)});
const [socketPath, mode] = process.argv.slice(2);
let fd;
try { fd = native.seqpacketConnect(socketPath); } catch (err) { console.log('connect-error ' + err.code); process.exit(0); }
function chunk(payload) {
  const header = Buffer.alloc(12);
  header.writeUInt16BE(0x484f, 0); header.writeUInt8(1, 2); header.writeUInt8(3, 3);
  header.writeUInt32BE(payload.length, 4); header.writeUInt32BE(0, 8);
  return Buffer.concat([header, payload]);
}
const json = Buffer.from(JSON.stringify({ version: 1, pid: process.pid }));
const hello = Buffer.concat([Buffer.from([1, 0, 0, 0, json.length]), json]);
try {
  if (mode === 'garbage') native.sendmsg(fd, Buffer.from('GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'), []);
  else if (mode === 'hello-fds') native.sendmsg(fd, chunk(hello), [0, 1]);
  else native.sendmsg(fd, chunk(hello), []);
} catch (err) {
  // A refusal may already be on its way: read it anyway.
}
const buffer = Buffer.alloc(70000);
const poller = native.createPoller(fd, () => {
  let message;
  // Linux reports ECONNRESET once when the peer closed with our message unread, then what it had sent.
  for (;;) {
    try { message = native.recvmsg(fd, buffer, 253); break; } catch (err) {
      if (err.code === 'ECONNRESET') continue;
      console.log('recv-error ' + err.code); finish(); return;
    }
  }
  if (message === null) return;
  if (message.bytes === 0) { console.log('closed'); finish(); return; }
  for (const received of message.fds) native.close(received);
  const payload = buffer.subarray(12, message.bytes);
  const type = payload[0];
  const header = JSON.parse(payload.subarray(5, 5 + payload.readUInt32BE(1)).toString());
  console.log('reply type=' + type + ' code=' + (header.code ?? '') + ' fds=' + message.fds.length);
  finish();
});
poller.start(true, false);
function finish() { poller.close(); native.close(fd); process.exit(0); }
setTimeout(() => { console.log('no-reply'); finish(); }, 5000);
`,
  );
  fs.chmodSync(script, 0o644);
  return { node, script, cwd: dir };
}

function runPeer(peer, socketPath, mode, options = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(peer.node, [peer.script, socketPath, mode], { cwd: peer.cwd, stdio: ['ignore', 'pipe', 'pipe'], ...options });
    group.track(child.pid);
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    child.on('error', reject);
    child.on('exit', () => resolve((out + err).trim()));
  });
}

async function startServer(env = {}) {
  group = sandbox.group();
  const base = sandbox.dir();
  const dir = path.join(base, 'ctl');
  const peerDir = sandbox.dir('handover-peer-');
  const peer = writePeer(peerDir);
  group.start([serverScript], { env: { HANDOVER_DIR: dir, PORT: '0', ...env } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { dir, base, peer, pid: Number(pid), port: Number(port), socketPath: path.join(dir, 'control.sock') };
}

async function upgradeOnce(pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since });
  return line;
}

describe('who may take over', () => {
  test('a peer running as another uid is refused before it gets a single fd', { skip: process.getuid?.() !== 0 && 'switching uid needs root' }, async () => {
    const server = await startServer();
    // Simulate a misconfigured directory: the socket is reachable by anyone. The uid check must still hold.
    fs.chmodSync(server.base, 0o755);
    fs.chmodSync(server.dir, 0o755);
    fs.chmodSync(server.socketPath, 0o777);
    const reply = await runPeer(server.peer, server.socketPath, 'hello', { uid: 65534, gid: 65534 });
    assert.equal(reply, 'reply type=3 code=ERR_UPGRADE_REFUSED fds=0');
    await group.waitForLine(/^warning code=ERR_UPGRADE_REFUSED/, { since: 0 });
    assert.equal((await get(server.port)).headers['x-pid'], String(server.pid));
    fs.chmodSync(server.dir, 0o700);
    assert.match(await upgradeOnce(server.pid), /^upgraded pid=\d+/);
  });

  test('a uid outside allowedUids is refused, even our own', async () => {
    const server = await startServer({ ALLOWED_UIDS: '4242' });
    const reply = await runPeer(server.peer, server.socketPath, 'hello');
    assert.equal(reply, 'reply type=3 code=ERR_UPGRADE_REFUSED fds=0');
    assert.equal((await get(server.port)).headers['x-pid'], String(server.pid));
  });

  test('the same uid gets the listeners (the check is not a blanket refusal)', async () => {
    const server = await startServer();
    const reply = await runPeer(server.peer, server.socketPath, 'hello');
    assert.equal(reply, 'reply type=2 code= fds=1');
    // That peer went away without READY: the server serves on and upgrades as usual.
    assert.equal((await get(server.port)).headers['x-pid'], String(server.pid));
    assert.match(await upgradeOnce(server.pid), /^upgraded pid=\d+/);
  });
});

describe('garbage on the control socket', () => {
  for (const mode of ['garbage', 'hello-fds']) {
    test(`${mode}: a clear protocol error, the server serves on, the next upgrade works`, async () => {
      const server = await startServer();
      const reply = await runPeer(server.peer, server.socketPath, mode);
      assert.equal(reply, 'closed');
      await group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since: 0 });
      assert.equal((await get(server.port)).headers['x-pid'], String(server.pid));
      assert.match(await upgradeOnce(server.pid), /^upgraded pid=\d+/);
    });
  }
});
