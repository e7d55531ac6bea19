// The rare branches of the core (issue 7's defects 1, 2, 5 and 6), each with real processes: who
// serves afterwards, what each side reports, and that the next upgrade still works.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { binding } from '../dist/native.js';
import { createUpgrader } from 'handover';
import { Sandbox, fixtures, get, readPid, sleep, waitUntil } from './helpers.mjs';

const serverScript = path.join(fixtures, 'server.mjs');
const rawSuccessor = path.join(fixtures, 'raw-successor.mjs');
const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

function setup(extraEnv = {}) {
  const group = sandbox.group();
  const base = sandbox.dir();
  const dir = path.join(base, 'ctl');
  const modeFile = path.join(base, 'mode');
  return { group, dir, modeFile, base, env: { HANDOVER_DIR: dir, MODE_FILE: modeFile, READY_TIMEOUT: '3000', GRACEFUL_TIMEOUT: '3000', ...extraEnv } };
}

async function startFirst(group, env) {
  const child = group.start([serverScript], { env });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+) gen=first/, { since: 0 });
  return { child, pid: Number(pid), port: Number(port) };
}

/** Who answers fresh connections: a set of bodies seen over `count` requests. */
async function answeredBy(port, count = 20) {
  const seen = new Set();
  for (let i = 0; i < count; i++) seen.add((await get(port)).body);
  return seen;
}

async function upgradeOnce(group, pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since });
  return line;
}

describe('two generations never serve at once (defect 1)', () => {
  test('a protocol error the predecessor raises after READY: it retires, it does not roll back', async () => {
    const { group, dir, env } = setup();
    const first = await startFirst(group, env);
    // An idle keep-alive connection keeps the predecessor retiring while the peer breaks the rules.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    assert.equal((await get(first.port, '/', { agent })).status, 200);
    const peer = group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'ready', 'conn', 'bad-ack', 'wait']);
    await group.waitForLine(/^conn n=1/, { since: 0 });
    await group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since: 0 });
    // The predecessor retires (no connections left) instead of accepting again beside the peer.
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    assert.ok(!group.lines.some((line) => line.startsWith('rollback')), group.lines.join('\n'));
    assert.deepEqual(await answeredBy(first.port), new Set([`peer ${peer.pid}`]));
    agent.destroy();
  });

  test('a successor that stops its upgrader after ready() serves on; the predecessor retires', async () => {
    const { group, modeFile, env } = setup();
    const first = await startFirst(group, env);
    // A slow request keeps the predecessor retiring while the successor stops its upgrader.
    const slow = get(first.port, '/slow?ms=1500');
    await sleep(100);
    fs.writeFileSync(modeFile, 'stop-after-ready');
    const line = await upgradeOnce(group, first.pid);
    const successorPid = Number(/upgraded pid=(\d+)/.exec(line)?.[1]);
    await group.waitForLine(/^stopped state=stopped/, { since: 0 });
    assert.deepEqual(await answeredBy(first.port), new Set([String(successorPid)]));
    assert.equal((await slow).body, String(first.pid));
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    assert.ok(!group.lines.some((l) => l.startsWith('rollback')), group.lines.join('\n'));
    assert.deepEqual(await answeredBy(first.port), new Set([String(successorPid)]));
  });

  test('a successor that cannot take over the directory after READY_ACK gives up (ABORT): the predecessor rolls back at once', async () => {
    const { group, dir, modeFile, env } = setup({ FAULT_AT: 'successor:ready-acked', FAULT_ACTION: 'rm-temp' });
    const first = await startFirst(group, env);
    fs.writeFileSync(modeFile, 'normal');
    process.kill(first.pid, 'SIGHUP');
    await group.waitForLine(/^ready-failed code=ERR_HANDOVER_DIR_UNSAFE/, { since: 0 });
    await group.waitForLine(/^rollback successor=\d+/, { since: 0 });
    assert.deepEqual(await answeredBy(first.port), new Set([String(first.pid)]));
    assert.equal(readPid(dir), first.pid);
    fs.writeFileSync(modeFile, 'normal');
    fs.rmSync(modeFile);
    const child = group.start([serverScript], { env: { ...env, FAULT_AT: '' } });
    const [, pid] = await group.waitForLine(/^ready pid=(\d+) port=\d+ gen=successor/, { since: 0 });
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    assert.deepEqual(await answeredBy(first.port), new Set([pid]));
    child.kill('SIGKILL');
  });
});

describe('the state machine refuses what is out of turn (defect 2)', () => {
  test('stop() while a successor is connected ends in stopped, and upgrade() then rejects', async () => {
    const { group, dir } = setup();
    const upgrader = createUpgrader({ dir, readyTimeout: 3000 });
    await upgrader.ready();
    const upgrading = new Promise((resolve) => upgrader.once('upgrading', resolve));
    const failed = [];
    upgrader.on('upgradeFailed', (err) => failed.push(err.code));
    group.start([rawSuccessor, path.join(dir, 'control.sock'), 'hello', 'wait']);
    await upgrading;
    assert.equal(upgrader.state, 'upgrading');
    upgrader.stop();
    assert.equal(upgrader.state, 'stopped');
    await assert.rejects(upgrader.upgrade(), { code: 'ERR_HANDOVER_INVALID_STATE' });
    await group.waitForLine(/^closed/, { since: 0 });
    await sleep(50);
    assert.equal(upgrader.state, 'stopped');
    assert.deepEqual(failed, []);
    assert.equal(fs.existsSync(path.join(dir, 'control.sock')), false);
  });

  test('a spawned successor that misses readyTimeout: one upgradeFailed, with ERR_UPGRADE_READY_TIMEOUT', async () => {
    const { group, modeFile, env } = setup({ READY_TIMEOUT: '1500' });
    const first = await startFirst(group, env);
    fs.writeFileSync(modeFile, 'hang');
    const line = await upgradeOnce(group, first.pid);
    assert.equal(line, 'upgrade-failed code=ERR_UPGRADE_READY_TIMEOUT');
    await sleep(1000);
    const events = group.lines.filter((l) => l.startsWith('upgrade-failed-event'));
    assert.deepEqual(events, ['upgrade-failed-event code=ERR_UPGRADE_READY_TIMEOUT']);
    assert.deepEqual(await answeredBy(first.port, 5), new Set([String(first.pid)]));
  });

  for (const [name, steps] of [
    ['READY before HELLO', ['ready', 'wait']],
    ['a second HELLO', ['hello-quiet', 'hello2', 'wait']],
  ]) {
    test(`${name} is a protocol error; nothing changes and the next upgrade works`, async () => {
      const { group, dir, modeFile, env } = setup();
      const first = await startFirst(group, env);
      group.start([rawSuccessor, path.join(dir, 'control.sock'), ...steps]);
      await group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since: 0 });
      await group.waitForLine(/^closed/, { since: 0 });
      assert.ok(!group.lines.some((l) => l.startsWith('ready-acked') || l.startsWith('retiring')), group.lines.join('\n'));
      assert.equal(group.lines.filter((l) => l.startsWith('listeners')).length, steps[0] === 'hello-quiet' ? 1 : 0);
      assert.deepEqual(await answeredBy(first.port, 5), new Set([String(first.pid)]));
      fs.writeFileSync(modeFile, 'normal');
      assert.match(await upgradeOnce(group, first.pid), /^upgraded pid=\d+/);
    });
  }
});

describe('nothing changes before the point of no return (defect 5)', () => {
  test('a successor that cannot prepare the control socket fails before READY: the predecessor never stops accepting', async () => {
    const { group, modeFile, env } = setup({ FAULT_AT: 'successor:servers-built', FAULT_ACTION: 'rm-dir' });
    const first = await startFirst(group, env);
    fs.writeFileSync(modeFile, 'normal');
    const line = await upgradeOnce(group, first.pid);
    // The successor says why (ABORT) and is ended with its process group; either way it never got READY_ACK.
    assert.match(line, /^upgrade-failed code=ERR_UPGRADE_SUCCESSOR_EXITED/);
    assert.ok(!group.lines.some((l) => l.startsWith('retiring') || l.startsWith('rollback')), group.lines.join('\n'));
    assert.deepEqual(await answeredBy(first.port, 5), new Set([String(first.pid)]));
  });
});

describe('the event loop never hangs on the control socket (defect 6)', () => {
  test('a stalled predecessor with a full backlog: the successor fails with ERR_UPGRADE_READY_TIMEOUT instead of freezing', async () => {
    const { group, dir, env } = setup({ READY_TIMEOUT: '1000' });
    fs.mkdirSync(dir, { mode: 0o700 });
    const native = binding();
    const listener = native.seqpacketListen(path.join(dir, 'control.sock'), 0);
    const queued = [];
    try {
      // Fill the backlog of a listener that never accepts.
      for (;;) queued.push(native.seqpacketConnect(path.join(dir, 'control.sock')));
    } catch (err) {
      assert.equal(err.code, 'EAGAIN');
    }
    try {
      const child = group.start([serverScript], { env });
      await group.waitForLine(/^start-failed code=ERR_UPGRADE_READY_TIMEOUT/, { timeout: 8000 });
      assert.deepEqual(await child.exited, { code: 1, signal: null });
    } finally {
      for (const fd of [listener, ...queued]) native.close(fd);
    }
  });

  test('accept failing with EMFILE: a warning, no busy loop, and the next upgrade works once fds are free', async () => {
    const { group, dir, modeFile, env } = setup();
    const first = await startFirst(group, env);
    process.kill(first.pid, 'SIGUSR1');
    await group.waitForLine(/^fds exhausted code=EMFILE/, { since: 0 });
    const cpuBefore = cpuTime(first.pid);
    const native = binding();
    const fd = native.seqpacketConnect(path.join(dir, 'control.sock'));
    try {
      await group.waitForLine(/^warning code=ERR_HANDOVER_CHANNEL_CLOSED/, { since: 0 });
      await sleep(1000);
      const used = cpuTime(first.pid) - cpuBefore;
      // A level-triggered poll on a connection that cannot be accepted spins a whole core.
      assert.ok(used < 500, `the server used ${used} ms of CPU in ~1 s`);
    } finally {
      native.close(fd);
    }
    process.kill(first.pid, 'SIGUSR1');
    await group.waitForLine(/^fds released/, { since: 0 });
    fs.writeFileSync(modeFile, 'normal');
    assert.match(await upgradeOnce(group, first.pid), /^upgraded pid=\d+/);
  });
});

/** cpuTime: user+system CPU of a process in ms (Linux /proc, clock ticks of 10 ms). */
function cpuTime(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

void waitUntil;
