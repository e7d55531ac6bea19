// The fault matrix, with real processes: the successor, and separately the predecessor, is killed
// (SIGKILL) right after each step of the exchange (the test-only fault points of handover/testing,
// armed by test/fixtures/fault-server.mjs). Every cell checks from outside who serves afterwards
// (exactly one generation, which owns pid and control.sock), which connections survive (and that
// their clients see no error where the promises say so), that nothing hangs, that no fd leaked in
// the surviving process, and that the next upgrade works. Then races and a damaged directory.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connectChannel } from 'handover';
import { Sandbox, fixtures, get, waitUntil, readPid } from './helpers.mjs';
import { HttpConn, LineConn, fdKinds, openHttp, openLine, outcome, running, tally } from './fixtures/fault-clients.mjs';

const script = path.join(fixtures, 'fault-server.mjs');
/** Most connections per CONN frame (the kernel's limit of fds per message). */
const BATCH = 253;
const FEW = 40;
/**
 * With the line connection: four full CONN batches (all of them are decided in one turn of the
 * loop, so today's batching fills each to BATCH), and "half the batches" is two.
 */
const MANY = 4 * BATCH - 1;
let group;
const sandbox = new Sandbox();
afterEach(async () => {
  if (!group) return sandbox.cleanup();
  if (process.env.HANDOVER_TEST_TRACE) process.stderr.write(`${group.lines.map((line) => `#   ${line}`).join('\n')}\n`);
  // A zombie (killed, not yet reaped by whoever adopted it) is dead: nothing to kill or wait for.
  for (const pid of group.pids) {
    if (!running(pid)) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  await waitUntil(() => [...group.pids].every((pid) => !running(pid)), 5000, 'processes to end').catch(() => undefined);
  for (const pid of [...group.pids]) if (!running(pid)) group.pids.delete(pid);
  await sandbox.cleanup();
});

function setup(extraEnv = {}) {
  group = sandbox.group();
  const base = sandbox.dir('handover-faults-');
  const dir = path.join(base, 'ctl');
  const faultFile = path.join(base, 'fault');
  const env = {
    HANDOVER_DIR: dir,
    PORT_FILE: path.join(base, 'ports'),
    READY_TIMEOUT: '3000',
    GRACEFUL_TIMEOUT: '3000',
    FAULT_FILE: faultFile,
    ...extraEnv,
  };
  return { base, dir, faultFile, env };
}

const READY = /^ready pid=(\d+) port=(\d+) line=(\d+) gen=(first|successor)/;

async function start(env, { since = group.lines.length, gen = 'first' } = {}) {
  const child = group.start([script], { env });
  const [, port, linePort, started] = await group.waitForLine(new RegExp(`^ready pid=${child.pid} port=(\\d+) line=(\\d+) gen=(\\S+)`), { since });
  assert.equal(started, gen);
  return { child, pid: child.pid, port: Number(port), linePort: Number(linePort) };
}

/** transcript: what the processes said, without the repeated status lines (for failure messages). */
function transcript() {
  const lines = group.lines.filter((line, i, all) => !line.startsWith('status ') || all[i + 1]?.startsWith('status ') !== true);
  return `stdout:\n${lines.slice(-40).join('\n')}\nstderr:\n${group.stderr.join('').slice(-2000)}`;
}

/**
 * quiescentFds: the fd count of a fresh generation at rest, after it served one request of each
 * kind (what the first request opens for good counts; what start-up still had open does not).
 */
async function quiescentFds(generation) {
  const warm = new LineConn(generation.linePort);
  await warm.connected();
  assert.equal((await warm.send(0, 'now')).pid, generation.pid);
  warm.socket.destroy();
  assert.equal(Number((await get(generation.port)).headers['x-pid']), generation.pid);
  let previous;
  let current;
  await waitUntil(
    async () => {
      previous = current;
      current = await status(generation.pid);
      return current.conns === 0 && previous?.conns === 0 && previous.fds === current.fds;
    },
    5000,
    'a fresh generation at rest',
  );
  return current.fds;
}

/** status asks a generation for its state, connection count, predecessor link and fd count. */
async function status(pid) {
  if (!running(pid)) throw new Error(`pid ${pid} has exited\n${transcript()}`);
  const since = group.lines.length;
  process.kill(pid, 'SIGUSR2');
  const [, state, conns, pred, fds] = await group.waitForLine(new RegExp(`^status pid=${pid} state=(\\S+) conns=(\\d+) pred=(\\S+) fds=(\\d+)`), { since, timeout: 5000 });
  return { state, conns: Number(conns), pred: pred === 'true', fds: Number(fds) };
}

/** settled waits until `pid` serves on its own: state serving and no predecessor still retiring. */
async function settled(pid) {
  let last;
  await waitUntil(
    async () => {
      last = await status(pid);
      return last.state === 'serving' && !last.pred;
    },
    10_000,
    `pid ${pid} to serve alone`,
  ).catch((err) => {
    throw new Error(`${err.message}; last status ${JSON.stringify(last)}\n${transcript()}`);
  });
  return last;
}

/** controlOwner: the pid of the process listening on dir/control.sock (SO_PEERCRED), or the errno. */
function controlOwner(dir) {
  let channel;
  try {
    channel = connectChannel(path.join(dir, 'control.sock'));
  } catch (err) {
    return err.code;
  }
  try {
    return channel.peerCredentials().pid;
  } finally {
    channel.close();
  }
}

async function freshConnectionsServedBy(port, pid) {
  for (let i = 0; i < 10; i++) {
    const res = await get(port);
    assert.equal(res.status, 200);
    assert.equal(Number(res.headers['x-pid']), pid, `fresh connection ${i} answered by ${res.headers['x-pid']}, not ${pid}`);
  }
}

/** nextUpgradeWorks: SIGHUP, a new generation takes over, the old one exits 0. */
async function nextUpgradeWorks(survivor, child, port, dir) {
  const since = group.lines.length;
  process.kill(survivor, 'SIGHUP');
  const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)/, { since });
  const next = Number(/^upgraded pid=(\d+)/.exec(line)?.[1]);
  assert.ok(next > 0, `the next upgrade: ${line}`);
  await group.waitForLine(new RegExp(`^ready pid=${next} .*gen=successor`), { since });
  if (child) assert.deepEqual(await child.exited, { code: 0, signal: null });
  else await waitUntil(() => !running(survivor), 10_000, `pid ${survivor} to retire`);
  assert.equal(Number((await get(port)).headers['x-pid']), next);
  assert.equal(readPid(dir), next);
}

/**
 * The matrix. `at`: where the fault fires (role:point, see src/faults.ts: the step just done, as that
 * process sees it); `victim`: who is killed there (the process itself, or its peer, which is dead
 * before the process that killed it takes its next step). Expectations: `survivor` (who serves
 * afterwards: the predecessor, the successor started as `gen`, or nobody); for a surviving
 * predecessor, `failed` (the code upgrade() rejects with) or `rollback` (it takes back what the
 * successor took); `http`: 'all' (every keep-alive connection is answered by the survivor and no
 * client sees an error) or the fewest answered / closed (the rest are answered or closed: none
 * hangs, none is answered by anyone else); `line`: the request held in flight on the line
 * connection (answered by the 'predecessor', by the 'survivor' (after SIGUSR1), 'closed', or 'any'
 * outcome) and the next request on that connection ('survivor', 'closed' or 'either').
 */
const S = 'successor';
const P = 'predecessor';
const STEPS = {
  connected: 'connected',
  hello: 'HELLO',
  listeners: 'listeners received',
  'servers-built': 'servers built',
  'ready-sent': 'READY sent',
  'ready-acked': 'READY acknowledged',
  'control-taken': 'control socket taken over',
  'conn-sent': 'first CONN batch sent',
  'conn-acked': 'half the batches acknowledged',
  'late-write': 'late writes in flight',
  retiring: 'retirement began',
  retired: 'retired (BYE)',
};
const before = { survivor: P, failed: 'ERR_UPGRADE_SUCCESSOR_EXITED', http: 'all', line: ['survivor', 'survivor'] };
const rolledBack = { survivor: P, rollback: true, http: 'all', line: ['predecessor', 'survivor'] };
const fresh = { survivor: S, gen: 'first', http: { served: 0, closed: FEW }, line: ['closed', 'closed'] };
const lostWithPredecessor = { survivor: S, gen: 'successor', http: { served: 0, closed: FEW }, line: ['closed', 'closed'] };
const inFlightWhenPredecessorDied = { survivor: S, gen: 'successor', http: { served: 0 }, line: ['any', 'either'] };
// Two batches acknowledged: those connections (the line connection is in the first) died with the successor.
const halfAckedThenSuccessorDied = { survivor: P, rollback: true, conns: MANY, count: 2, http: { served: MANY + 1 - 2 * BATCH, closed: 2 * BATCH - 1 }, line: ['any', 'closed'] };
const halfAckedThenPredecessorDied = { survivor: S, gen: 'successor', conns: MANY, count: 2, http: { served: 2 * BATCH - 1 }, line: ['any', 'survivor'] };
const movedThenPredecessorDied = { survivor: S, gen: 'successor', http: 'all', line: ['predecessor', 'survivor'] };
const afterBye = { survivor: 'none', http: { served: 0, closed: FEW }, line: ['predecessor', 'closed'] };
const cells = [
  // The successor dies. Before READY the predecessor changed nothing; after, it takes everything back.
  { at: 'successor:connected', victim: S, ...before },
  { at: 'predecessor:connected', victim: S, ...before },
  { at: 'successor:hello', victim: S, ...before },
  { at: 'predecessor:hello', victim: S, ...before },
  { at: 'successor:listeners', victim: S, ...before },
  // The successor may get as far as READY before the kill lands: then the predecessor rolls back.
  { at: 'predecessor:listeners', victim: S, ...before, orRollback: true },
  { at: 'successor:servers-built', victim: S, ...before },
  { at: 'successor:ready-sent', victim: S, ...rolledBack, rollback: false },
  { at: 'predecessor:ready-sent', victim: S, ...rolledBack, rollback: false },
  { at: 'successor:ready-acked', victim: S, ...rolledBack },
  { at: 'predecessor:ready-acked', victim: S, ...rolledBack },
  { at: 'successor:control-taken', victim: S, ...rolledBack },
  { at: 'predecessor:conn-sent', victim: S, ...rolledBack, conns: MANY, http: { served: MANY + 1 - 4 * BATCH }, line: ['any', 'either'] },
  { at: 'successor:conn-acked', victim: S, ...halfAckedThenSuccessorDied },
  // The successor may acknowledge more batches before the kill lands.
  { at: 'predecessor:conn-acked', victim: S, ...halfAckedThenSuccessorDied, http: { served: 0, closed: 2 * BATCH - 1 } },
  { at: 'successor:late-write', victim: S, ...rolledBack, http: { served: 0, closed: FEW }, line: ['predecessor', 'closed'] },
  { at: 'predecessor:late-write', victim: S, ...rolledBack, http: { served: 0, closed: FEW }, line: ['any', 'closed'] },
  { at: 'predecessor:retiring', victim: S, ...rolledBack },
  { at: 'successor:retired', victim: S, ...afterBye },
  { at: 'predecessor:retired', victim: S, ...afterBye },
  // The predecessor dies. The successor serves: fresh if it had no listening socket yet; every
  // connection it acknowledged stays; those the predecessor still held die with it.
  { at: 'successor:connected', victim: P, ...fresh },
  { at: 'predecessor:connected', victim: P, ...fresh },
  // The predecessor may send LISTENERS before the kill lands: the successor then serves on them.
  { at: 'successor:hello', victim: P, ...fresh, gen: ['first', 'successor'] },
  { at: 'predecessor:hello', victim: P, ...fresh },
  { at: 'successor:listeners', victim: P, ...lostWithPredecessor },
  { at: 'predecessor:listeners', victim: P, ...lostWithPredecessor },
  { at: 'successor:servers-built', victim: P, ...lostWithPredecessor },
  // The predecessor may answer READY and send connections before the kill lands.
  { at: 'successor:ready-sent', victim: P, ...inFlightWhenPredecessorDied },
  { at: 'predecessor:ready-sent', victim: P, ...lostWithPredecessor },
  { at: 'successor:ready-acked', victim: P, ...inFlightWhenPredecessorDied },
  { at: 'predecessor:ready-acked', victim: P, ...lostWithPredecessor },
  { at: 'successor:control-taken', victim: P, ...inFlightWhenPredecessorDied, conns: MANY },
  { at: 'predecessor:conn-sent', victim: P, ...inFlightWhenPredecessorDied, conns: MANY },
  { at: 'successor:conn-acked', victim: P, ...halfAckedThenPredecessorDied },
  { at: 'predecessor:conn-acked', victim: P, ...halfAckedThenPredecessorDied },
  { at: 'successor:late-write', victim: P, ...movedThenPredecessorDied },
  { at: 'predecessor:late-write', victim: P, ...movedThenPredecessorDied },
  { at: 'predecessor:retiring', victim: P, ...lostWithPredecessor },
  // Past BYE the predecessor exits by itself: the kill may come after it.
  { at: 'successor:retired', victim: P, ...movedThenPredecessorDied, mayExitFirst: true },
  { at: 'predecessor:retired', victim: P, ...movedThenPredecessorDied },
];

const trace = process.env.HANDOVER_TEST_TRACE ? (what) => process.stderr.write(`# ${new Date().toISOString().slice(17, 23)} ${what}\n`) : () => undefined;

async function runCell(cell) {
  const conns = cell.conns ?? FEW;
  const { dir, faultFile, env } = setup({ FAULT_AT: cell.at, FAULT_VICTIM: cell.victim, FAULT_COUNT: String(cell.count ?? 1) });
  trace('start');
  const first = await start(env);
  trace('first ready');
  const baseline = await quiescentFds(first);
  const baselineKinds = fdKinds(first.pid);
  const clients = await openHttp(first.port, conns, first.pid);
  const line = await openLine(first.linePort, first.pid);
  trace('clients open');
  try {
    trace('upgrade');
    fs.writeFileSync(faultFile, '');
    const since = group.lines.length;
    process.kill(first.pid, 'SIGHUP');
    const [, role, firedIn, victim] = (await group.waitForLine(/^fault point=\S+ role=(\S+) count=\d+ pid=(\d+) victim=(\d+)/, { since })).map((v, i) => (i > 1 ? Number(v) : v));
    group.track(victim);
    await waitUntil(() => !running(victim), 10_000, `the ${cell.victim} (pid ${victim}) to die`);
    if (cell.victim === P) {
      assert.equal(victim, first.pid);
      const exit = await first.child.exited;
      if (!(cell.mayExitFirst && exit.code === 0)) assert.deepEqual(exit, { code: null, signal: 'SIGKILL' });
    }

    trace('victim dead');
    let survivor;
    if (cell.survivor === P) {
      survivor = first.pid;
      if (cell.failed) {
        const [outcomeLine, code] = await group.waitForLine(cell.orRollback ? /^(?:upgrade-failed code=(\S+)|rollback successor=\d+)/ : /^upgrade-failed code=(\S+)/, { since });
        if (!outcomeLine.startsWith('rollback')) assert.equal(code, cell.failed);
      }
      if (cell.rollback) await group.waitForLine(new RegExp(`^rollback successor=${victim}`), { since });
    } else if (cell.survivor === S) {
      const [started] = await group.waitForLine(/^(ready pid=\d+ .*|start-failed .*)/, { since });
      const [, pid, , , gen] = READY.exec(started) ?? [];
      assert.ok(pid, `the successor serves after the predecessor died: ${started}`);
      survivor = Number(pid);
      if (role === S) assert.equal(survivor, firedIn);
      assert.ok([cell.gen].flat().includes(gen), `the successor started as ${gen}`);
    } else {
      // After BYE the predecessor is committed: it retires; with the successor dead, nobody serves.
      assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    }

    // Exactly one generation: every other process of the test has ended.
    await waitUntil(() => [...group.pids].every((pid) => pid === survivor || !running(pid)), 10_000, 'every other process to end').catch((err) => {
      throw new Error(`${err.message}: ${[...group.pids].filter((pid) => pid !== survivor && running(pid))} still alive\n${transcript()}`);
    });

    if (survivor === undefined) {
      await assert.rejects(get(first.port), { code: 'ECONNREFUSED' });
      assert.deepEqual(await tally(clients), { closed: conns });
      assert.equal(await outcome(line.send(3, 'now')), 'closed');
      assert.equal(line.answers.get('1'), first.pid, 'the late write reached the client before the successor died');
      // A fresh start in the same directory works (stale control.sock and pid left by the crash).
      const fresh = await start({ ...env, FAULT_AT: '' }, { gen: 'first' });
      assert.equal(fresh.port, first.port);
      await freshConnectionsServedBy(first.port, fresh.pid);
      return;
    }

    trace('survivor known');
    const atRest = await settled(survivor);
    await freshConnectionsServedBy(first.port, survivor);
    assert.equal(readPid(dir), survivor, 'dir/pid names the generation that serves');
    assert.equal(controlOwner(dir), survivor, 'dir/control.sock is the serving generation');
    await settled(survivor); // the probe connected as a successor would: back to serving

    trace('fresh ok');
    // Which connections survive, and what their clients see.
    const counts = await tally(clients);
    const served = counts[survivor] ?? 0;
    const closed = counts.closed ?? 0;
    const explain = `outcomes ${JSON.stringify(counts)} (survivor ${survivor})`;
    if (cell.http === 'all') {
      assert.deepEqual(counts, { [survivor]: conns }, explain);
      for (const client of clients) assert.deepEqual(client.errors, [], 'no client sees an error');
    } else {
      assert.equal(served + closed, conns, `every connection is answered by the survivor or closed, none hangs: ${explain}`);
      assert.ok(served >= cell.http.served, `at least ${cell.http.served} answered: ${explain}`);
      assert.ok(closed >= (cell.http.closed ?? 0), `at least ${cell.http.closed} closed: ${explain}`);
    }
    trace('tally done');
    process.kill(survivor, 'SIGUSR1'); // answers what the survivor still holds
    const [heldFrom, nextFrom] = cell.line;
    const held = await outcome(line.answer(1));
    const expectedHeld = { predecessor: first.pid, survivor, closed: 'closed' }[heldFrom];
    if (heldFrom !== 'any') assert.equal(held, expectedHeld, `the held line request: ${held}`);
    const next = await outcome(line.send(3, 'now'));
    if (nextFrom === 'either') assert.ok(next === survivor || next === 'closed', `the next line request: ${next}`);
    else assert.equal(next, nextFrom === 'survivor' ? survivor : 'closed', `the next line request: ${next}`);
    if (held === 'closed') assert.equal(next, 'closed');
    if (nextFrom === 'survivor' && heldFrom !== 'any') assert.deepEqual(line.errors, []);
    // The survivor counts exactly the connections that work: none it lost track of, none dead.
    // Its count follows the 'close' events of the sockets it let go, so it is read until it agrees.
    const working = served + (next === survivor ? 1 : 0);
    let tracked = atRest.conns;
    await waitUntil(async () => (tracked = (await status(survivor)).conns) === working, 5000, 'the tracked count').catch(() => undefined);
    assert.equal(tracked, working, `connections the survivor tracks: ${explain}, line ${next}`);

    trace('line done');
    // No fd leaked: with its connections gone, the survivor holds what the first generation held.
    for (const client of clients) client.close();
    line.socket.destroy();
    let last;
    await waitUntil(async () => (last = await status(survivor)).conns === 0, 10_000, 'the survivor to see its connections close');
    await waitUntil(async () => (last = await status(survivor)).fds === baseline, 3000, 'fds').catch(() => undefined);
    assert.equal(last.fds, baseline, `fds of the survivor (pid ${survivor}) after its connections closed: ${JSON.stringify(fdKinds(survivor))}, at first: ${JSON.stringify(baselineKinds)}`);

    trace('fds ok');
    await nextUpgradeWorks(survivor, survivor === first.pid ? first.child : undefined, first.port, dir);
    trace('next upgrade ok');
  } catch (err) {
    if (err instanceof Error && !err.message.includes('\nstdout:\n')) err.message += `\n${transcript()}`;
    throw err;
  } finally {
    for (const client of clients) client.close();
    line.socket.destroy();
  }
}

describe('fault matrix: SIGKILL right after each step', () => {
  for (const cell of cells) {
    const [role, point] = cell.at.split(':');
    const where = role === cell.victim ? 'by itself' : `by the ${role}`;
    test(`kill the ${cell.victim} after: ${STEPS[point]} (${cell.at}${cell.count ? ` #${cell.count}` : ''}, ${where})`, { timeout: 60_000 }, () => runCell(cell));
  }
});

/** holdRequest sends a request that `pid` answers only on SIGUSR1: it keeps that generation retiring. */
async function holdRequest(port, pid) {
  const conn = new HttpConn(port);
  await conn.connected();
  const since = group.lines.length;
  const response = conn.request('/hold');
  await group.waitForLine(new RegExp(`^held pid=${pid} `), { since });
  return { conn, response };
}

/** upgradeOnce sends SIGHUP to `pid` and returns its answer: `upgraded pid=N` or `upgrade-failed code=C`. */
async function upgradeOnce(pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [line] = await group.waitForLine(/^(upgraded pid=\d+|upgrade-failed code=\S+)$/, { since });
  return line;
}

/** results: the upgrade results a generation printed since `since`, one per SIGHUP it received. */
function upgradeResults(since) {
  return group.lines.slice(since).filter((line) => /^(upgraded pid=\d+|upgrade-failed code=\S+)$/.test(line));
}

async function allServedBy(clients, pid) {
  assert.deepEqual(await tally(clients), { [pid]: clients.length });
  for (const client of clients) assert.deepEqual(client.errors, [], 'no client sees an error');
}

describe('races and a damaged directory', () => {
  test('two successors started at the same moment: one takes over, the other exits cleanly with ERR_UPGRADE_IN_PROGRESS', { timeout: 60_000 }, async () => {
    const { base, dir, env } = setup();
    const first = await start(env);
    const clients = await openHttp(first.port, FEW, first.pid);
    // A request in flight keeps the first generation retiring: whichever process the loser reaches
    // (the first generation, or the winner whose predecessor still retires), it is refused.
    const held = await holdRequest(first.port, first.pid);
    const go = path.join(base, 'go');
    const since = group.lines.length;
    const twins = [group.start([script], { env: { ...env, GO_FILE: go } }), group.start([script], { env: { ...env, GO_FILE: go } })];
    for (const twin of twins) await group.waitForLine(new RegExp(`^waiting pid=${twin.pid}$`), { since });
    fs.writeFileSync(go, '');
    const outcomes = await Promise.all(twins.map((twin) => group.waitForLine(new RegExp(`^(ready|start-failed) pid=${twin.pid} .*`), { since })));
    const winnerIndex = outcomes.findIndex(([line]) => line.startsWith('ready'));
    assert.ok(winnerIndex >= 0, `one of them serves: ${outcomes.map(([line]) => line).join(' | ')}`);
    const winner = twins[winnerIndex];
    const loser = twins[1 - winnerIndex];
    assert.match(outcomes[winnerIndex][0], /gen=successor$/);
    assert.equal(outcomes[1 - winnerIndex][0], `start-failed pid=${loser.pid} step=start code=ERR_UPGRADE_IN_PROGRESS`);
    assert.deepEqual(await loser.exited, { code: 1, signal: null });

    process.kill(first.pid, 'SIGUSR1');
    assert.equal((await held.response).pid, first.pid);
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    await settled(winner.pid);
    await freshConnectionsServedBy(first.port, winner.pid);
    assert.equal(readPid(dir), winner.pid);
    assert.equal(controlOwner(dir), winner.pid);
    await settled(winner.pid);
    await allServedBy([...clients, held.conn], winner.pid);
    assert.doesNotMatch(group.stderr.join(''), /Error|Uncaught/);
    for (const client of [...clients, held.conn]) client.close();
    await nextUpgradeWorks(winner.pid, winner, first.port, dir);
  });

  test('SIGHUP ten times in a row: one successor, every other SIGHUP refused with ERR_UPGRADE_IN_PROGRESS, nothing lost', { timeout: 60_000 }, async () => {
    const { dir, env } = setup();
    const first = await start(env);
    const clients = await openHttp(first.port, FEW, first.pid);
    const held = await holdRequest(first.port, first.pid);
    const since = group.lines.length;
    const received = () => group.lines.slice(since).filter((line) => line === `sighup pid=${first.pid}`).length;
    for (let i = 1; i <= 10; i++) {
      process.kill(first.pid, 'SIGHUP');
      // Signals sent faster than they are handled coalesce: send the next once this one arrived.
      await waitUntil(() => received() === i, 5000, `SIGHUP ${i} to arrive`);
    }
    await waitUntil(() => upgradeResults(since).length === 10, 10_000, 'an answer to every SIGHUP');
    const results = upgradeResults(since);
    const upgraded = results.filter((line) => line.startsWith('upgraded'));
    assert.equal(upgraded.length, 1, results.join('\n'));
    const successor = Number(/pid=(\d+)/.exec(upgraded[0])[1]);
    assert.deepEqual(results.filter((line) => !line.startsWith('upgraded')), Array(9).fill('upgrade-failed code=ERR_UPGRADE_IN_PROGRESS'));
    // 'upgraded' is printed at READY, before the successor prints its own ready line: wait for that.
    await group.waitForLine(new RegExp(`^ready pid=${successor} `), { since });
    assert.deepEqual(group.lines.slice(since).filter((line) => READY.test(line)).map((line) => Number(READY.exec(line)[1])), [successor], 'one successor started');

    process.kill(first.pid, 'SIGUSR1');
    assert.equal((await held.response).pid, first.pid);
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    await settled(successor);
    await waitUntil(() => [...group.pids].every((pid) => pid === successor || !running(pid)), 10_000, 'one generation left');
    await freshConnectionsServedBy(first.port, successor);
    assert.equal(readPid(dir), successor);
    await allServedBy([...clients, held.conn], successor);
    for (const client of [...clients, held.conn]) client.close();
    await nextUpgradeWorks(successor, undefined, first.port, dir);
  });

  test('upgrade() while retiring is refused with ERR_UPGRADE_IN_PROGRESS, in the retiring process and in its successor', { timeout: 60_000 }, async () => {
    const { dir, env } = setup();
    const first = await start(env);
    const clients = await openHttp(first.port, FEW, first.pid);
    const held = await holdRequest(first.port, first.pid);
    const since = group.lines.length;
    const upgraded = await upgradeOnce(first.pid);
    const successor = Number(/^upgraded pid=(\d+)$/.exec(upgraded)?.[1]);
    assert.ok(successor > 0, upgraded);
    await group.waitForLine(new RegExp(`^ready pid=${successor} `), { since });
    assert.equal((await status(first.pid)).state, 'retiring');
    assert.equal(await upgradeOnce(first.pid), 'upgrade-failed code=ERR_UPGRADE_IN_PROGRESS');
    assert.equal(await upgradeOnce(successor), 'upgrade-failed code=ERR_UPGRADE_IN_PROGRESS');
    // Nothing changed: the successor serves, the first generation still retires with its request.
    await freshConnectionsServedBy(first.port, successor);
    assert.equal((await status(first.pid)).state, 'retiring');

    process.kill(first.pid, 'SIGUSR1');
    assert.equal((await held.response).pid, first.pid);
    assert.deepEqual(await first.child.exited, { code: 0, signal: null });
    await settled(successor);
    assert.equal(readPid(dir), successor);
    assert.equal(controlOwner(dir), successor);
    await settled(successor);
    await allServedBy([...clients, held.conn], successor);
    for (const client of [...clients, held.conn]) client.close();
    await nextUpgradeWorks(successor, undefined, first.port, dir);
  });

  /** damaged: the running generation, its directory damaged by `damage`, keeps serving; upgrades fail clearly. */
  async function damaged(damage, externalCode) {
    const { dir, env } = setup();
    const first = await start(env);
    const clients = await openHttp(first.port, FEW, first.pid);
    const before = (await status(first.pid)).fds;
    damage(dir);
    const snapshot = fs.existsSync(dir) ? fs.readdirSync(dir).sort() : undefined;
    assert.equal(await upgradeOnce(first.pid), 'upgrade-failed code=ERR_HANDOVER_DIR_UNSAFE');
    // A successor started by hand with the same dir cannot take over either, and says why.
    const since = group.lines.length;
    const external = group.start([script], { env });
    const [line] = await group.waitForLine(new RegExp(`^(ready|start-failed) pid=${external.pid} .*`), { since });
    assert.match(line, new RegExp(`^start-failed pid=${external.pid} step=\\S+ code=${externalCode}$`));
    assert.deepEqual(await external.exited, { code: 1, signal: null });
    // The running generation serves on, alone, with every connection, and holds what it held.
    await waitUntil(() => [...group.pids].every((pid) => pid === first.pid || !running(pid)), 10_000, 'one generation left');
    await settled(first.pid);
    await freshConnectionsServedBy(first.port, first.pid);
    await allServedBy(clients, first.pid);
    assert.equal((await status(first.pid)).fds, before);
    if (snapshot !== undefined) assert.deepEqual(fs.readdirSync(dir).sort(), snapshot, 'nothing in dir changed');
    for (const client of clients) client.close();
  }

  test('dir removed under a running process: upgrades fail with ERR_HANDOVER_DIR_UNSAFE, the process serves on', { timeout: 60_000 }, () =>
    damaged((dir) => fs.rmSync(dir, { recursive: true, force: true }), '\\S+'));

  test('control.sock replaced by a regular file: upgrades fail with ERR_HANDOVER_DIR_UNSAFE, the process serves on', { timeout: 60_000 }, () =>
    damaged((dir) => {
      fs.writeFileSync(path.join(dir, 'impostor'), 'not a socket\n', { mode: 0o600 });
      fs.renameSync(path.join(dir, 'impostor'), path.join(dir, 'control.sock'));
    }, 'ERR_HANDOVER_DIR_UNSAFE'));
});
