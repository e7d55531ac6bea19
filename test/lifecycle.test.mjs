// The upgrade lifecycle with real processes: triggers, rollback, safety, takeover, no leaks.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { Sandbox, fixtures, get, isAlive, waitUntil, readPid, root } from './helpers.mjs';

const serverScript = path.join(fixtures, 'server.mjs');
let group;
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

function setup(extraEnv = {}) {
  group = sandbox.group();
  const base = sandbox.dir();
  const dir = path.join(base, 'ctl');
  const modeFile = path.join(base, 'mode');
  const env = { HANDOVER_DIR: dir, MODE_FILE: modeFile, ...extraEnv };
  return { dir, modeFile, env, base };
}

async function startFirst(env) {
  const child = group.start([serverScript], { env });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/);
  return { child, pid: Number(pid), port: Number(port) };
}

async function upgradeOnce(pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since });
  return line;
}

describe('lifecycle', () => {
  test('a fresh start creates dir 0700, control.sock 0600 and pid', async () => {
    const { dir, env } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(path.join(dir, 'control.sock')).mode & 0o777, 0o600);
    assert.equal(readPid(dir), first.pid);
    const res = await get(first.port);
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-pid'], String(first.pid));
  });

  test('upgrade() on SIGHUP: a new pid serves on the same port and the old one exits 0', async () => {
    const { dir, env } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    const since = group.lines.length;
    const line = await upgradeOnce(first.pid);
    const newPid = Number(/upgraded pid=(\d+)/.exec(line)?.[1]);
    assert.ok(newPid > 0 && newPid !== first.pid, line);
    // inheritListeners() in the successor: the listening socket, described by the kernel.
    const [inherited] = await group.waitForLine(/^inherited .*/, { since });
    assert.equal(inherited, `inherited tcp:127.0.0.1:0@inet/127.0.0.1:${first.port}:true`);
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    const res = await get(first.port);
    assert.equal(res.headers['x-pid'], String(newPid));
    assert.equal(readPid(dir), newPid);
    // The control socket is the new generation's: it can upgrade again.
    const again = await upgradeOnce(newPid);
    assert.match(again, /upgraded pid=\d+/);
  });

  test('an external successor started by hand with the same dir takes over', async () => {
    const { env } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    group.start([serverScript], { env: { ...env, PORT: String(first.port) } });
    const [, pid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=successor/);
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    const res = await get(first.port);
    assert.equal(res.headers['x-pid'], pid);
  });

  for (const [mode, code] of [
    ['crash-before-ready', 'ERR_UPGRADE_SUCCESSOR_EXITED'],
    ['kill-before-ready', 'ERR_UPGRADE_SUCCESSOR_EXITED'],
    ['hang', 'ERR_UPGRADE_READY_TIMEOUT'],
    ['bind-fail', 'ERR_UPGRADE_SUCCESSOR_EXITED'],
  ]) {
    test(`rollback before READY: a successor that does "${mode}" leaves the predecessor serving`, async () => {
      const blocker = net.createServer();
      await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve));
      try {
        const { dir, env, modeFile } = setup();
        // Only "hang" is about the ready timeout; the others must fail by exiting, however long a
        // loaded machine takes to start them (a short timeout would end them first). For "hang" it
        // also bounds the start of the normal successor after it: a few seconds, not 1.5.
        const readyTimeout = mode === 'hang' ? 5000 : 60_000;
        const first = await startFirst({ ...env, PORT: '0', READY_TIMEOUT: String(readyTimeout), EXTRA_PORT: mode === 'bind-fail' ? String(blocker.address().port) : '' });
        fs.writeFileSync(modeFile, mode);
        const line = await upgradeOnce(first.pid);
        assert.equal(line, `upgrade-failed code=${code}`);
        assert.ok(isAlive(first.pid));
        assert.equal((await get(first.port)).headers['x-pid'], String(first.pid));
        assert.equal(readPid(dir), first.pid);
        // Nothing changed: the next upgrade works.
        fs.writeFileSync(modeFile, 'normal');
        assert.match(await upgradeOnce(first.pid), /upgraded pid=\d+/);
      } finally {
        blocker.close();
      }
    });
  }

  test('a successor started through a wrapper that hangs is killed with its whole process group', async () => {
    const { dir, env, modeFile } = setup();
    const first = await startFirst({ ...env, PORT: '0', READY_TIMEOUT: '1500', WRAP: '1' });
    fs.writeFileSync(modeFile, 'hang');
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    const [, hanging] = await group.waitForLine(/^hanging pid=(\d+)/, { since });
    await group.waitForLine(/^upgrade-failed code=ERR_UPGRADE_READY_TIMEOUT/, { since });
    await waitUntil(() => !isAlive(Number(hanging)), 5000, 'the hanging grandchild to be killed');
    assert.equal(readPid(dir), first.pid);
    fs.writeFileSync(modeFile, 'normal');
    assert.match(await upgradeOnce(first.pid), /upgraded pid=\d+/);
  });

  test('a server the application closed is not offered, and does not break the upgrade', async () => {
    const { env } = setup();
    const first = await startFirst({ ...env, PORT: '0', CLOSE_EXTRA: '1' });
    const since = group.lines.length;
    const line = await upgradeOnce(first.pid);
    assert.match(line, /^upgraded pid=\d+/);
    const [inherited] = await group.waitForLine(/^inherited .*/, { since });
    assert.equal(inherited, `inherited tcp:127.0.0.1:0@inet/127.0.0.1:${first.port}:true`);
  });

  test('a successor the predecessor gave up on (readyTimeout) never serves beside it', async () => {
    const { dir, env, modeFile } = setup();
    const first = await startFirst({ ...env, PORT: '0', READY_TIMEOUT: '1000' });
    fs.writeFileSync(modeFile, 'slow-ready');
    // An external successor, slow to start: the predecessor drops it after 1 s, before its READY.
    const late = group.start([serverScript], { env: { ...env, PORT: '0' } });
    await group.waitForLine(/^ready-failed code=ERR_UPGRADE_REFUSED/);
    assert.deepEqual(await late.exited, { code: 1, signal: null });
    assert.equal(readPid(dir), first.pid);
    assert.equal((await get(first.port)).headers['x-pid'], String(first.pid));
    fs.writeFileSync(modeFile, 'normal');
    assert.match(await upgradeOnce(first.pid), /upgraded pid=\d+/);
  });

  test('a successor that dies after READY: the predecessor accepts again and owns the directory', async () => {
    const { dir, env, modeFile } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    // A request in flight keeps the predecessor retiring (not yet retired) when the successor dies.
    const slow = get(first.port, '/slow?ms=1500');
    await new Promise((resolve) => setTimeout(resolve, 100));
    fs.writeFileSync(modeFile, 'die-after-ready');
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    const [, successor] = await group.waitForLine(/^ready pid=(\d+) .*gen=successor/, { since });
    await group.waitForLine(new RegExp(`^rollback successor=${successor}`), { since });
    assert.equal((await slow).status, 200);
    assert.equal((await get(first.port)).headers['x-pid'], String(first.pid));
    assert.equal(readPid(dir), first.pid);
    fs.writeFileSync(modeFile, 'normal');
    assert.match(await upgradeOnce(first.pid), /upgraded pid=\d+/);
  });

  test('a second upgrade() while one runs rejects with ERR_UPGRADE_IN_PROGRESS', async () => {
    const { env, modeFile } = setup();
    const first = await startFirst({ ...env, PORT: '0', READY_TIMEOUT: '3000' });
    fs.writeFileSync(modeFile, 'hang');
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    await new Promise((resolve) => setTimeout(resolve, 300));
    process.kill(first.pid, 'SIGHUP');
    const [line] = await group.waitForLine(/^upgrade-failed code=\S+/, { since });
    assert.equal(line, 'upgrade-failed code=ERR_UPGRADE_IN_PROGRESS');
    await group.waitForLine(/^upgrade-failed code=ERR_UPGRADE_READY_TIMEOUT/, { since });
  });

  test('a stale control.sock left by a killed process is replaced', async () => {
    const { dir, env } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    process.kill(first.pid, 'SIGKILL');
    await first.child.exited;
    assert.ok(fs.existsSync(path.join(dir, 'control.sock')));
    const child = group.start([serverScript], { env: { ...env, PORT: String(first.port) } });
    const [, pid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=first/);
    assert.equal(child.pid, Number(pid));
    assert.equal((await get(first.port)).headers['x-pid'], pid);
    assert.match(await upgradeOnce(Number(pid)), /upgraded pid=\d+/);
  });

  test('dir that is a symlink or writable by others is refused with ERR_HANDOVER_DIR_UNSAFE', async () => {
    const { base } = setup();
    const { createUpgrader } = await import('handover');
    const real = path.join(base, 'real');
    fs.mkdirSync(real, { mode: 0o700 });
    const link = path.join(base, 'link');
    fs.symlinkSync(real, link);
    assert.throws(() => createUpgrader({ dir: link }), { code: 'ERR_HANDOVER_DIR_UNSAFE' });
    const open = path.join(base, 'open');
    fs.mkdirSync(open);
    fs.chmodSync(open, 0o777);
    assert.throws(() => createUpgrader({ dir: open }), { code: 'ERR_HANDOVER_DIR_UNSAFE' });
    assert.throws(() => createUpgrader({ dir: '' }), { code: 'ERR_HANDOVER_INVALID_ARG' });
    assert.throws(() => createUpgrader({ dir: real, readyTimeout: -1 }), { code: 'ERR_HANDOVER_INVALID_ARG' });
  });

  test('a unix socket listener is inherited and its path is never unlinked', async () => {
    const { env, base } = setup();
    const unixPath = path.join(base, 'http.sock');
    const first = await startFirst({ ...env, PORT: '0', UNIX_PATH: unixPath });
    const viaUnix = () =>
      new Promise((resolve, reject) => {
        const req = http.get({ socketPath: unixPath, path: '/', agent: false }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve(body));
        });
        req.on('error', reject);
      });
    assert.equal(await viaUnix(), `unix ${first.pid}`);
    const line = await upgradeOnce(first.pid);
    const newPid = /upgraded pid=(\d+)/.exec(line)[1];
    await first.child.exited;
    assert.ok(fs.existsSync(unixPath), 'the unix socket path survives the old generation');
    assert.equal(await viaUnix(), `unix ${newPid}`);
  });
});


describe('many upgrades', () => {
  async function fdsOf(pid) {
    const since = group.lines.length;
    process.kill(pid, 'SIGUSR2');
    const [, count] = await group.waitForLine(/^fds count=(\d+)/, { since });
    return Number(count);
  }

  test('50 upgrades in a row; the serving process holds as many fds after 50 as after 1', { timeout: 120_000 }, async () => {
    const { dir, env } = setup();
    const first = await startFirst({ ...env, PORT: '0' });
    let current = first.pid;
    let afterFirst;
    for (let i = 1; i <= 50; i++) {
      const since = group.lines.length;
      process.kill(current, 'SIGHUP');
      const [, next] = await group.waitForLine(/^ready pid=(\d+) .*gen=successor/, { since });
      const previous = current;
      current = Number(next);
      // The next upgrade is possible once the predecessor has retired and exited.
      await waitUntil(() => !isAlive(previous), 10_000, `pid ${previous} to exit`);
      if (i === 1) afterFirst = await fdsOf(current);
    }
    assert.equal(readPid(dir), current);
    assert.equal((await get(first.port)).headers['x-pid'], String(current));
    assert.equal(await fdsOf(current), afterFirst);
  });

  test('the predecessor holds as many fds after 10 failed upgrades as before', { timeout: 60_000 }, async () => {
    const { env, modeFile } = setup();
    // The ready timeout is what ends "hang", and also the time every other successor has to start
    // (die-after-ready must reach READY): a few seconds, so that a loaded machine's slow start is
    // not taken for a hang. One hang then costs that long: it comes once, the others cycle.
    const first = await startFirst({ ...env, PORT: '0', READY_TIMEOUT: '5000' });
    const before = await fdsOf(first.pid);
    const modes = ['crash-before-ready', 'kill-before-ready', 'die-after-ready'];
    for (let i = 0; i < 10; i++) {
      const mode = i === 2 ? 'hang' : modes[i % modes.length];
      fs.writeFileSync(modeFile, mode);
      const since = group.lines.length;
      if (mode === 'die-after-ready') {
        // A request in flight keeps this process retiring until the successor dies: it is answered
        // at the rollback, so it is in flight however long the successor takes to start.
        const held = get(first.port, '/until-rollback');
        await group.waitForLine(new RegExp(`^held pid=${first.pid}$`), { since });
        process.kill(first.pid, 'SIGHUP');
        await group.waitForLine(/^rollback successor=\d+/, { since });
        assert.equal((await held).headers['x-pid'], String(first.pid));
      } else {
        process.kill(first.pid, 'SIGHUP');
        await group.waitForLine(/^upgrade-failed code=/, { since });
      }
    }
    // Let the kernel finish closing what the successors held.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(await fdsOf(first.pid), before);
    assert.equal((await get(first.port)).headers['x-pid'], String(first.pid));
  });
});

describe('the example HTTP server', () => {
  test('SIGTERM: the request in flight is answered, the process exits 0 and removes its control files', { timeout: 30_000 }, async () => {
    group = sandbox.group();
    const dir = path.join(sandbox.dir(), 'ctl');
    const child = group.start([path.join(root, 'examples', 'http-server.mjs'), '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
    const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const slow = get(Number(port), '/slow?ms=500');
    await new Promise((resolve) => setTimeout(resolve, 100));
    process.kill(Number(pid), 'SIGTERM');
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-pid'], pid);
    assert.deepEqual(await child.exited, { code: 0, signal: null });
    assert.equal(fs.existsSync(path.join(dir, 'control.sock')), false);
    assert.equal(fs.existsSync(path.join(dir, 'pid')), false);
  });
});
