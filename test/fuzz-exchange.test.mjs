// Fuzzing the exchange black-box: a real predecessor (test/fixtures/server.mjs) and a raw peer
// process (test/fixtures/fuzz-peer.mjs) on its control.sock sending random sequences of valid and
// invalid messages, in and out of order, with stray fds and disconnects. Properties:
//  - the predecessor serves HTTP from the same pid throughout, unless the sequence was a valid
//    upgrade (HELLO, READY acknowledged): then exactly one generation serves (the peer);
//  - every broken rule of the exchange is a `warning code=ERR_HANDOVER_PROTOCOL` and a closed link,
//    and every warning has a stable code;
//  - its fd count returns to the baseline; an in-flight request completes;
//  - the next normal upgrade works.
// The phases the exchange must enforce (connected -> offered -> ready): HELLO first and once,
// READY only after LISTENERS, anything else is a protocol error. Each run spawns processes: the
// number of runs is small (FUZZ_RUNS scales it: npm run fuzz). A failure prints FUZZ_SEED.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as readline from 'node:readline';
import * as path from 'node:path';
import fc from 'fast-check';
import { encode } from '../dist/protocol.js';
import { Sandbox, fixtures, get, fdCount, isAlive, waitUntil } from './helpers.mjs';
import { chunkHeader, chunksOf, assertProperty, messageArb, runs, withFds } from './fixtures/fuzz-common.mjs';

const serverScript = path.join(fixtures, 'server.mjs');
const peerScript = path.join(fixtures, 'fuzz-peer.mjs');
const STEP_TIMEOUT = 5000;
const KNOWN_CODES = new Set([
  'ERR_HANDOVER_PROTOCOL',
  'ERR_HANDOVER_CHANNEL_CLOSED',
  'ERR_HANDOVER_VERSION',
  'ERR_HANDOVER_DIR_UNSAFE',
  'ERR_HANDOVER_INVALID_ARG',
  'ERR_HANDOVER_INVALID_STATE',
  'ERR_HANDOVER_UNSUPPORTED_RUNTIME',
  'ERR_HANDOVER_NOT_MOVABLE',
  'ERR_UPGRADE_IN_PROGRESS',
  'ERR_UPGRADE_REFUSED',
  'ERR_UPGRADE_SUCCESSOR_EXITED',
  'ERR_UPGRADE_READY_TIMEOUT',
  'ERR_UPGRADE_SPAWN_FAILED',
  'ERR_HANDOVER_STOPPED',
]);

const sandbox = new Sandbox();
after(() => sandbox.cleanup());

// ---- the predecessor -------------------------------------------------------------------------

/** The serving generation between runs: its group (successors print there too), pid, port, fd baseline. */
let predecessor;

async function startPredecessor() {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir('handover-fuzz-x-'), 'ctl');
  group.start([serverScript], { env: { HANDOVER_DIR: dir, PORT: '0' } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  predecessor = { group, dir, pid: Number(pid), port: Number(port), baseline: fdCount(Number(pid)) };
}

async function resetAll() {
  await sandbox.cleanup();
  predecessor = undefined;
}

/** pidOf asks the serving port who answers (a fresh connection each time). */
async function pidOf(port) {
  const res = await get(port);
  assert.equal(res.status, 200);
  return Number(res.headers['x-pid']);
}

async function stateOf(p) {
  const since = p.group.lines.length;
  process.kill(p.pid, 'SIGUSR2');
  const [, count, state] = await p.group.waitForLine(new RegExp(`^fds count=(\\d+) state=(\\S+)`), { since, timeout: STEP_TIMEOUT });
  return { count: Number(count), state };
}

// ---- the peer --------------------------------------------------------------------------------

/** startPeer spawns a peer with a stdin pipe (ProcessGroup ignores stdin: this spawns by hand). */
async function startPeer(p, scratch) {
  const group = sandbox.group();
  const child = spawn(process.execPath, [peerScript, path.join(p.dir, 'control.sock'), scratch], { stdio: ['pipe', 'pipe', 'pipe'] });
  group.pids.add(child.pid);
  readline.createInterface({ input: child.stdout }).on('line', (line) => group.onLine(line));
  child.stderr.on('data', (chunk) => group.stderr.push(chunk.toString()));
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  await group.waitForLine(/^connected pid=/, { since: 0, timeout: STEP_TIMEOUT });
  const peer = { group, child, pid: child.pid, commands: 0, gone: false };
  return peer;
}

async function command(peer, cmd) {
  peer.commands++;
  const since = peer.group.lines.length;
  peer.child.stdin.write(`${JSON.stringify(cmd)}\n`);
  if (cmd.op === 'exit') {
    await peer.child.exited;
    peer.gone = true;
    // Reaped: its pid may be reused by anyone from now on, so it is no longer ours to kill.
    peer.group.pids.delete(peer.pid);
    return;
  }
  await peer.group.waitForLine(new RegExp(`^ack n=${peer.commands}$`), { since, timeout: STEP_TIMEOUT });
}

// ---- steps -----------------------------------------------------------------------------------

function datagram(message, kinds = []) {
  const { payload } = encode(withFds(message, []));
  const [chunk] = chunksOf(payload, kinds.length, [], []);
  return { hex: chunk.data.toString('hex'), kinds };
}

const fdKind = fc.constantFrom('file', 'pipe', 'dir', 'seqpacket', 'tcp');
const id = fc.oneof(fc.nat({ max: 20 }), fc.constant(2 ** 40));

/** A step and what it is: a valid move in some phase, or garbage in every phase. */
const stepArb = fc.oneof(
  { weight: 5, arbitrary: fc.constant({ op: 'hello' }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 4 }).filter((v) => v !== 1).map((version) => ({ op: 'hello', version })) },
  { weight: 5, arbitrary: fc.constant({ op: 'ready' }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('conn-ack'), acked: fc.array(id, { maxLength: 3 }), refused: fc.array(fc.record({ id, reason: fc.string({ maxLength: 10 }) }), { maxLength: 2 }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('write-ack'), id, seq: fc.nat({ max: 5 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: 'ping' }) },
  { weight: 2, arbitrary: fc.constant({ op: 'commit' }) },
  { weight: 1, arbitrary: fc.constant({ op: 'abort' }) },
  { weight: 1, arbitrary: fc.constant({ op: 'bye' }) },
  // Messages the predecessor sends, never receives (LISTENERS and CONN with fds of any kind).
  {
    weight: 2,
    arbitrary: fc.record({ message: messageArb.filter((m) => !['HELLO', 'READY', 'CONN_ACK', 'WRITE_ACK', 'PING', 'COMMIT', 'ABORT', 'BYE'].includes(m.type)), kind: fdKind }).map(({ message, kind }) => ({
      op: 'message',
      message,
      kinds: new Array('fds' in message ? message.fds : 0).fill(kind),
    })),
  },
  // HELLO or READY with fds where none belong.
  { weight: 1, arbitrary: fc.record({ op: fc.constant('stray-fds'), type: fc.constantFrom('HELLO', 'READY'), kinds: fc.array(fdKind, { minLength: 1, maxLength: 3 }) }) },
  // Bytes that are no frame, or a chunk header with something wrong.
  {
    weight: 2,
    arbitrary: fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 40 }).map((a) => ({ op: 'garbage', hex: Buffer.from(a).toString('hex'), kinds: [] })),
      fc
        .record({ magic: fc.integer({ min: 0, max: 0xffff }), version: fc.integer({ min: 0, max: 3 }), flags: fc.integer({ min: 0, max: 7 }), length: fc.constantFrom(0, 5, 0xffffffff), fdCount: fc.constantFrom(0, 1, 0xffffffff), kinds: fc.array(fdKind, { maxLength: 2 }) })
        .filter((h) => !(h.magic === 0x484f && h.version === 1 && h.flags === 3 && h.length === 0 && h.fdCount === h.kinds.length))
        .map(({ kinds, ...h }) => ({ op: 'garbage', hex: chunkHeader(h).toString('hex'), kinds })),
      // A well-formed chunk whose message type is unknown or whose header is not JSON.
      fc.record({ type: fc.constantFrom(0, 99, 200), body: fc.constantFrom('{}', 'not json', '[]') }).map(({ type, body }) => {
        const json = Buffer.from(body);
        const payload = Buffer.concat([Buffer.from([type, 0, 0, 0, json.length]), json]);
        return { op: 'garbage', hex: chunksOf(payload, 0, [], [])[0].data.toString('hex'), kinds: [] };
      }),
    ),
  },
  { weight: 1, arbitrary: fc.constant({ op: 'disconnect' }) },
);

/** reachesReady: whether the rules let a sequence (with its reconnects) reach READY acknowledged. */
function reachesReady(steps) {
  let phase = 'connected';
  for (const step of steps) {
    if (phase === 'closed') phase = 'connected';
    phase = expectation(phase, step).next;
    if (phase === 'ready') return true;
  }
  return false;
}

// A request in flight on the predecessor during the whole run (it keeps a retiring predecessor retiring).
const slowRequest = fc.boolean();
/** Sequences that never reach a valid READY: the predecessor must serve on from the same pid. */
const withoutUpgradeArb = fc.record({ steps: fc.array(stepArb, { maxLength: 6 }).filter((steps) => !reachesReady(steps)), slowRequest });
/** A valid upgrade (HELLO, READY), then anything: exactly one generation must serve, the successor. */
const upgradeArb = fc.record({ steps: fc.array(stepArb, { maxLength: 4 }).map((tail) => [{ op: 'hello' }, { op: 'ready' }, ...tail]), slowRequest });

function describeStep(step) {
  switch (step.op) {
    case 'message':
      return `${step.message.type}${step.kinds.length ? ` +${step.kinds.length} ${step.kinds[0]} fds` : ''}`;
    case 'stray-fds':
      return `${step.type} +fds ${step.kinds.join(',')}`;
    case 'hello':
      return step.version === undefined ? 'HELLO' : `HELLO v${step.version}`;
    default:
      return step.op;
  }
}

/** toDatagram: what the peer sends for a step. */
function toDatagram(step, peerPid) {
  switch (step.op) {
    case 'hello':
      return datagram({ type: 'HELLO', version: step.version ?? 1, pid: peerPid });
    case 'ready':
      return datagram({ type: 'READY', pid: peerPid });
    case 'conn-ack':
      return datagram({ type: 'CONN_ACK', acked: step.acked, refused: step.refused });
    case 'write-ack':
      return datagram({ type: 'WRITE_ACK', id: step.id, seq: step.seq });
    case 'ping':
      return datagram({ type: 'PING' });
    case 'commit':
      return datagram({ type: 'COMMIT' });
    case 'abort':
      return datagram({ type: 'ABORT', reason: 'fuzz gives up' });
    case 'bye':
      return datagram({ type: 'BYE', reason: 'fuzz leaves' });
    case 'message':
      return datagram(step.message, step.kinds);
    case 'stray-fds':
      return datagram(step.type === 'HELLO' ? { type: 'HELLO', version: 1, pid: peerPid } : { type: 'READY', pid: peerPid }, step.kinds);
    case 'garbage':
      return { hex: step.hex, kinds: step.kinds };
  }
  throw new Error(`no datagram for ${step.op}`);
}

/**
 * The rules of the exchange, from the predecessor's side, per link (src/lifecycle.ts FROM_SUCCESSOR):
 *   connected: HELLO (v1: LISTENERS; another version: REFUSED, closed), PING (PONG)
 *   offered:   READY (READY_ACK), ABORT (closed, no warning)
 *   ready:     COMMIT, CONN_ACK, WRITE_ACK, ABORT (the successor gave up: rollback), BYE (it left, serving)
 * Anything else is a protocol error: before READY the link closes with a warning; after READY the
 * successor serves on ('left'), the predecessor finishes retiring. Phases of this model: connected,
 * offered, ready, committed (COMMIT seen), left (link ended after READY, the successor serves),
 * closed (no successor: the predecessor serves). `skip`: a step a live, serving successor would not
 * take here (dying or giving up after COMMIT: outages that are not the predecessor's doing).
 */
function expectation(phase, step) {
  const protocolError = { protocolError: true, next: 'closed' };
  switch (phase) {
    case 'connected':
      if (step.op === 'hello') return step.version === undefined ? { reply: 'LISTENERS', next: 'offered' } : { reply: 'REFUSED', code: 'ERR_HANDOVER_VERSION', next: 'closed' };
      if (step.op === 'ping') return { reply: 'PONG', next: 'connected' };
      if (step.op === 'disconnect') return { next: 'closed' };
      return protocolError;
    case 'offered':
      if (step.op === 'ready') return { reply: 'READY_ACK', next: 'ready' };
      if (step.op === 'abort') return { closes: true, next: 'closed' };
      if (step.op === 'disconnect') return { next: 'closed' };
      return protocolError;
    case 'ready':
    case 'committed': {
      const committed = phase === 'committed';
      if (step.op === 'commit' || step.op === 'write-ack' || (step.op === 'conn-ack' && step.acked.length === 0)) return { next: step.op === 'commit' ? 'committed' : phase };
      // Before COMMIT the predecessor waits for the successor: giving up or dying is a rollback.
      if (step.op === 'abort' || step.op === 'disconnect') return committed ? { skip: true, next: phase } : { closes: step.op === 'abort', rollback: true, next: 'closed' };
      return { next: 'left' };
    }
    case 'left':
      return step.op === 'disconnect' ? { skip: true, next: 'left' } : { next: 'left' };
  }
  throw new Error(`no phase ${phase}`);
}

// ---- the property ----------------------------------------------------------------------------

async function runCase({ steps, slowRequest }) {
  if (!predecessor) await startPredecessor();
  const p = predecessor;
  const scratch = sandbox.dir('handover-fuzz-peer-');
  const runStart = p.group.lines.length;
  const slow = slowRequest ? get(p.port, '/slow?ms=1500').catch((error) => ({ status: `${error.code} ${error.message}` })) : undefined;
  let peer = await startPeer(p, scratch);
  let phase = 'connected';
  let protocolErrors = 0;
  const trail = [];
  const where = () => `after ${trail.join(' -> ') || 'connecting'}`;

  let rollbacks = 0;
  let readySince = runStart;
  const serving = (phase) => phase === 'connected' || phase === 'offered' || phase === 'closed';
  for (const step of steps) {
    trail.push(describeStep(step));
    if (phase === 'closed') {
      // The link is gone (refused, broken, given up or disconnected): the next step comes from a new successor.
      if (!peer.gone) await command(peer, { op: 'exit' });
      await waitUntil(async () => (await stateOf(p)).state === 'serving', STEP_TIMEOUT, `the predecessor to serve alone again ${where()}`);
      peer = await startPeer(p, scratch);
      phase = 'connected';
    }
    const expected = expectation(phase, step);
    if (expected.skip) {
      trail[trail.length - 1] += ' (skipped)';
      continue;
    }
    const since = peer.group.lines.length;
    const linesSince = p.group.lines.length;
    if (expected.reply === 'READY_ACK') readySince = linesSince;
    if (step.op === 'disconnect') await command(peer, { op: 'exit' });
    else await command(peer, { op: 'send', ...toDatagram(step, peer.pid) });
    const peerSaw = () => peer.group.waitForLine(/^(recv type=\S+ fds=\d+ code=\S*|closed)$/, { since, timeout: STEP_TIMEOUT }).then(([line]) => line, () => `nothing within ${STEP_TIMEOUT} ms`);
    if (expected.reply) {
      const line = await peerSaw();
      assert.match(line, new RegExp(`^recv type=${expected.reply} `), `${where()}: the predecessor answers ${expected.reply} (the peer saw: ${line})`);
      if (expected.code) assert.match(line, new RegExp(`code=${expected.code}$`));
      if (expected.reply === 'LISTENERS') assert.doesNotMatch(line, /fds=0 /, 'LISTENERS carries the listening sockets');
    }
    if (expected.protocolError) {
      protocolErrors++;
      const line = await peerSaw();
      assert.equal(line, 'closed', `${where()}: a protocol error closes the link (the peer saw: ${line})`);
      await p.group.waitForLine(/^warning code=ERR_HANDOVER_PROTOCOL/, { since: linesSince, timeout: STEP_TIMEOUT });
    }
    if (expected.closes) assert.equal(await peerSaw(), 'closed', `${where()}: the predecessor closes the link`);
    if (expected.rollback) {
      rollbacks++;
      const [line] = await p.group.waitForLine(/^(rollback|retired)/, { since: readySince, timeout: 15_000 });
      assert.match(line, /^rollback/, `${where()}: a successor that ${step.op === 'abort' ? 'gave up' : 'died'} before COMMIT: the predecessor serves again`);
    }
    phase = expected.next;
    if (serving(phase)) assert.equal(await pidOf(p.port), p.pid, `${where()}: the predecessor serves on, same pid`);
  }

  for (const line of p.group.lines.slice(runStart)) {
    const warning = /^warning code=(\S+)/.exec(line);
    if (warning) assert.ok(KNOWN_CODES.has(warning[1]), `a warning with a stable code, got ${line}`);
  }
  const protocolWarnings = p.group.lines.slice(runStart).filter((line) => line.startsWith('warning code=ERR_HANDOVER_PROTOCOL')).length;

  if (!serving(phase)) {
    // A valid upgrade: the peer serves (as a successor does: COMMIT once it owns the directory),
    // the predecessor retires and exits; never both.
    if (phase === 'ready') await command(peer, { op: 'send', ...toDatagram({ op: 'commit' }, peer.pid) });
    await command(peer, { op: 'serve' });
    const [outcome] = await p.group.waitForLine(/^(retired|rollback)/, { since: readySince, timeout: 15_000 });
    assert.match(outcome, /^retired/, `${where()}: the predecessor rolled back (${outcome}) while its successor (pid ${peer.pid}) lives and serves: two generations serve`);
    await waitUntil(() => !isAlive(p.pid), STEP_TIMEOUT, 'the retired predecessor to exit');
    p.group.pids.delete(p.pid);
    if (slow) assert.equal((await slow).status, 200, 'the request in flight completes');
    for (let i = 0; i < 3; i++) assert.equal(await pidOf(p.port), peer.pid, 'exactly one generation serves: the successor');
    await resetAll();
    return;
  }

  if (!peer.gone) await command(peer, { op: 'exit' });
  if (slow) assert.equal((await slow).status, 200, 'the request in flight completes');
  assert.equal(await pidOf(p.port), p.pid, `${where()}: the predecessor serves on, same pid`);
  assert.equal(p.group.lines.slice(runStart).filter((line) => line.startsWith('rollback')).length, rollbacks, 'a rollback only where a successor gave up or died before COMMIT');
  assert.ok(protocolWarnings >= protocolErrors, `every broken rule is a warning (${protocolWarnings} for ${protocolErrors})`);
  await waitUntil(async () => (await stateOf(p)).state === 'serving', STEP_TIMEOUT, 'the predecessor to serve alone');
  await waitUntil(() => fdCount(p.pid) === p.baseline, STEP_TIMEOUT, `the predecessor's fds to return to ${p.baseline} (now ${fdCount(p.pid)}) ${where()}`);

  // The next normal upgrade works; its successor is the predecessor of the next run.
  const since = p.group.lines.length;
  process.kill(p.pid, 'SIGHUP');
  const [line, next] = await p.group.waitForLine(/^(?:upgraded pid=(\d+)|upgrade-failed code=\S+)/, { since, timeout: 15_000 });
  assert.ok(next, `${where()}: the next upgrade works, got ${line}`);
  await waitUntil(() => !isAlive(p.pid), 15_000, 'the old generation to retire');
  p.group.pids.delete(p.pid);
  const nextPid = Number(next);
  assert.equal(await pidOf(p.port), nextPid, 'the new generation serves');
  // Its predecessor's link is closed once the old one exited: count its fds from now on.
  await waitUntil(async () => (await stateOf({ ...p, pid: nextPid })).state === 'serving', STEP_TIMEOUT, 'the new generation to serve');
  predecessor = { ...p, pid: nextPid, baseline: fdCount(nextPid) };
}

function exchangeProperty(arbitrary) {
  return fc.asyncProperty(arbitrary, async (run) => {
    try {
      await runCase(run);
    } catch (err) {
      // Whatever state the failure left: start over from a fresh predecessor.
      await resetAll();
      throw err;
    }
  });
}

// Shrinking re-runs processes: only on request (FUZZ_SHRINK=1); the sequences are short anyway.
const shrink = { endOnFailure: process.env.FUZZ_SHRINK === undefined };

test('fuzz: random exchanges without a valid upgrade: the predecessor serves on from the same pid, each broken rule is a warning, no fd leaked, the next upgrade works', { timeout: 30 * 60_000 }, async () => {
  await assertProperty(exchangeProperty(withoutUpgradeArb), runs(8, 0.001), shrink);
});

test('fuzz: a valid upgrade followed by random messages: exactly one generation serves, the successor', { timeout: 30 * 60_000 }, async () => {
  await assertProperty(exchangeProperty(upgradeArb), runs(4, 0.0005), shrink);
});
