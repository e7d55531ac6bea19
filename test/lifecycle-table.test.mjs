// The pure state machine and the injected process layer: rare branches reached in milliseconds.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Lifecycle, TRANSITIONS, nextState, ChangeQueue, FROM_SUCCESSOR, FROM_PREDECESSOR } from '../dist/lifecycle.js';
import { Upgrader } from '../dist/upgrader.js';
import { systemProcesses } from '../dist/spawner.js';
import { Sandbox } from './helpers.mjs';

const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

const states = ['starting', 'serving', 'upgrading', 'retiring', 'retired', 'stopped'];
const events = ['ready', 'successor-connected', 'successor-ready', 'successor-failed', 'rollback', 'retired', 'stop'];

describe('the transition table', () => {
  test('every state and event: the table decides, illegal transitions throw ERR_HANDOVER_INVALID_STATE', () => {
    for (const state of states) {
      for (const event of events) {
        const lifecycle = new Lifecycle();
        // Walk to `state` along legal events.
        const path = { starting: [], serving: ['ready'], upgrading: ['ready', 'successor-connected'], retiring: ['ready', 'successor-connected', 'successor-ready'], retired: ['ready', 'successor-connected', 'successor-ready', 'retired'], stopped: ['stop'] }[state];
        for (const step of path) lifecycle.apply(step);
        assert.equal(lifecycle.state, state);
        const next = TRANSITIONS[state][event];
        if (next === undefined) {
          assert.throws(() => lifecycle.apply(event), { code: 'ERR_HANDOVER_INVALID_STATE' });
          assert.equal(lifecycle.state, state);
        } else {
          assert.equal(lifecycle.apply(event), next);
        }
      }
    }
  });

  test('stopped is final; stop is possible from every other state', () => {
    for (const event of events) assert.equal(nextState('stopped', event), undefined);
    for (const state of states.filter((s) => s !== 'stopped')) assert.equal(nextState(state, 'stop'), 'stopped');
  });

  test('rollback leads back to serving only from retiring; a failed successor only before READY', () => {
    assert.deepEqual(states.filter((s) => nextState(s, 'rollback')), ['retiring']);
    assert.deepEqual(states.filter((s) => nextState(s, 'successor-failed')), ['upgrading']);
  });

  test('each phase accepts only its messages, and a released link accepts nothing', () => {
    // A control client (handover status / upgrade) starts with STATUS or UPGRADE instead of HELLO.
    assert.deepEqual(FROM_SUCCESSOR.connected, ['HELLO', 'PING', 'STATUS', 'UPGRADE']);
    assert.ok(!FROM_SUCCESSOR.connected.includes('READY'));
    assert.ok(!FROM_SUCCESSOR.offered.includes('HELLO'));
    assert.deepEqual(FROM_SUCCESSOR.released, []);
    assert.deepEqual(FROM_PREDECESSOR.released, []);
    assert.ok(!FROM_PREDECESSOR.offered.includes('CONN'));
  });

  test('ChangeQueue runs a change requested during another one after it', () => {
    const queue = new ChangeQueue();
    const order = [];
    queue.run(() => {
      order.push('a:start');
      queue.run(() => order.push('b'));
      order.push('a:end');
    });
    assert.deepEqual(order, ['a:start', 'a:end', 'b']);
  });
});

/** A process layer whose spawn is scripted; everything else is the system's. */
function fakeProcesses(spawn) {
  const kills = [];
  return { kills, layer: { ...systemProcesses, spawn, kill: (pid, signal) => kills.push([pid, signal]) } };
}

/** A child that never exits unless told. */
function fakeChild(pid) {
  const child = new EventEmitter();
  child.pid = pid;
  child.exitCode = null;
  child.signalCode = null;
  child.unref = () => undefined;
  child.kill = () => true;
  return child;
}

async function servingUpgrader(layer, options = {}) {
  const dir = path.join(sandbox.dir(), 'ctl');
  const upgrader = new Upgrader({ dir, readyTimeout: 200, ...options }, layer);
  await upgrader.ready();
  const failures = [];
  upgrader.on('upgradeFailed', (err) => failures.push(err.code));
  return { upgrader, failures };
}

describe('upgrade() with an injected process layer', () => {
  test('spawn throws: ERR_UPGRADE_SPAWN_FAILED, once, and this generation serves on', async () => {
    const { layer } = fakeProcesses(() => {
      throw Object.assign(new Error('spawn E2BIG'), { code: 'E2BIG' });
    });
    const { upgrader, failures } = await servingUpgrader(layer);
    await assert.rejects(upgrader.upgrade(), { code: 'ERR_UPGRADE_SPAWN_FAILED' });
    assert.deepEqual(failures, ['ERR_UPGRADE_SPAWN_FAILED']);
    assert.equal(upgrader.state, 'serving');
    upgrader.stop();
  });

  test('the child exits before READY: ERR_UPGRADE_SUCCESSOR_EXITED, once', async () => {
    const child = fakeChild(999_999);
    const { layer } = fakeProcesses(() => child);
    const { upgrader, failures } = await servingUpgrader(layer);
    const result = upgrader.upgrade();
    await assert.rejects(upgrader.upgrade(), { code: 'ERR_UPGRADE_IN_PROGRESS' });
    child.emit('exit', 3, null);
    await assert.rejects(result, { code: 'ERR_UPGRADE_SUCCESSOR_EXITED', message: /exited with code 3/ });
    assert.deepEqual(failures, ['ERR_UPGRADE_SUCCESSOR_EXITED']);
    upgrader.stop();
  });

  test('the child misses readyTimeout: ERR_UPGRADE_READY_TIMEOUT, once, and its whole process group is killed', async () => {
    const child = fakeChild(999_998);
    const { layer, kills } = fakeProcesses(() => child);
    const { upgrader, failures } = await servingUpgrader(layer);
    await assert.rejects(upgrader.upgrade(), { code: 'ERR_UPGRADE_READY_TIMEOUT' });
    assert.deepEqual(kills, [[-999_998, 'SIGKILL']]);
    // A late exit of the killed child reports nothing more.
    child.emit('exit', null, 'SIGKILL');
    assert.deepEqual(failures, ['ERR_UPGRADE_READY_TIMEOUT']);
    assert.equal(upgrader.state, 'serving');
    upgrader.stop();
  });

  test('stop() while a spawned successor starts: ERR_HANDOVER_STOPPED, its group killed, and upgrade() is refused from then on', async () => {
    const child = fakeChild(999_997);
    const { layer, kills } = fakeProcesses(() => child);
    const { upgrader, failures } = await servingUpgrader(layer);
    const result = upgrader.upgrade();
    upgrader.stop();
    await assert.rejects(result, { code: 'ERR_HANDOVER_STOPPED' });
    assert.deepEqual(kills, [[-999_997, 'SIGKILL']]);
    assert.deepEqual(failures, ['ERR_HANDOVER_STOPPED']);
    assert.equal(upgrader.state, 'stopped');
    await assert.rejects(upgrader.upgrade(), { code: 'ERR_HANDOVER_INVALID_STATE' });
  });
});

describe('rare syscall failures through an injected binding', () => {
  test('a connecting peer whose credentials cannot be read: a warning, the connection closed, nothing else changes', async () => {
    const { injectBinding } = await import('handover/testing');
    const { binding } = await import('../dist/native.js');
    const dir = path.join(sandbox.dir(), 'ctl');
    const upgrader = new Upgrader({ dir, readyTimeout: 2000 });
    await upgrader.ready();
    const warnings = [];
    upgrader.on('warning', (err) => warnings.push(err.code));
    injectBinding((real) => ({
      ...real,
      peerCredentials: () => {
        throw Object.assign(new Error('getsockopt: ENOBUFS'), { code: 'ENOBUFS', syscall: 'getsockopt' });
      },
    }));
    let fd;
    try {
      fd = binding().seqpacketConnect(path.join(dir, 'control.sock'));
      const deadline = Date.now() + 2000;
      while (warnings.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    } finally {
      injectBinding(undefined);
    }
    assert.deepEqual(warnings, ['ERR_UPGRADE_REFUSED']);
    assert.equal(upgrader.state, 'serving');
    // The predecessor closed its end: the peer reads the end of the stream.
    const buffer = Buffer.alloc(64);
    const deadline = Date.now() + 2000;
    let message = null;
    while (message === null && Date.now() < deadline) {
      message = binding().recvmsg(fd, buffer, 4);
      if (message === null) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.deepEqual(message, { bytes: 0, fds: [] });
    binding().close(fd);
    upgrader.stop();
  });
});
