// The SOFA RPC example (examples/rpc-server.mjs) with real processes: the real sofa-rpc-node client
// keeps its TCP connections through upgrades, with slow calls in flight at every one; and a successor
// that dies in the middle of adopting connections leaves every connection it had not acknowledged
// with the old process, which serves on.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { ProcessGroup, fixtures, root, tmpDir, waitUntil, isAlive, sleep } from './helpers.mjs';
import { frameLength } from '../examples/rpc-server-core.mjs';

const require = createRequire(import.meta.url);
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('sofa-bolt-node/lib/protocol');

const HOST = '127.0.0.1';
const IFACE = 'com.example.Echo';
const example = path.join(root, 'examples', 'rpc-server.mjs');
const killServer = path.join(fixtures, 'rpc-kill-server.mjs');

let group;
let dirs = [];
let clients = [];
let rawSockets = [];
let loads = [];

afterEach(async () => {
  // A failed test must not leave its call loops running (against a dead server they would spin).
  await Promise.all(loads.map((stop) => stop()));
  loads = [];
  for (const socket of rawSockets) socket.destroy();
  rawSockets = [];
  // Any client.close() stops timers shared by every client of this process: close them only here.
  await Promise.all(clients.map((c) => c.client.close().catch(() => undefined)));
  clients = [];
  await group?.cleanup();
  group = undefined;
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  dirs = [];
});

function setup() {
  group = new ProcessGroup();
  const base = tmpDir('handover-rpc-');
  dirs.push(base);
  return { dir: path.join(base, 'ctl'), base };
}

const stderrText = () => group.stderr.join('');

/** waitForLog waits for a line of the servers' stderr (the example logs there) and returns its match. */
async function waitForLog(regex, timeout = 15_000) {
  let match = null;
  await waitUntil(() => (match = regex.exec(stderrText())) !== null, timeout, `${regex} on stderr`).catch((err) => {
    err.message += `\nstderr:\n${stderrText().slice(-4000)}`;
    throw err;
  });
  return match;
}

// ---- the real client: one RpcClient per TCP connection ----------------------------------------

async function startClient(port) {
  const warnings = [];
  const keep = (...args) => warnings.push(args.map(String).join(' '));
  const logger = { info() {}, debug() {}, warn: keep, error: keep };
  const client = new RpcClient({ logger });
  const consumer = client.createConsumer({
    interfaceName: IFACE,
    serverHost: `${HOST}:${port}`,
    responseTimeout: 3000,
    // Only shortens a sleep loop that would keep this process alive 30 s after close().
    retryFaultInterval: 200,
  });
  await consumer.ready();
  const connections = () => [...client.connectionManager.connections.values()];
  const [connection] = connections();
  const state = { client, consumer, warnings, connections, connection, localPort: connection._socket.localPort, socketClosed: false };
  connection._socket.once('close', () => (state.socketClosed = true));
  clients.push(state);
  return state;
}

/** Calls counted exactly: every call is either ok or failed (a wrong answer is a failure too). */
function callStats() {
  return { calls: 0, ok: 0, failed: 0, errors: [] };
}

async function counted(stats, promise, expected) {
  stats.calls++;
  try {
    const value = await promise;
    if (expected !== undefined && value !== expected) throw new Error(`wrong answer ${JSON.stringify(value)}, expected ${JSON.stringify(expected)}`);
    stats.ok++;
  } catch (err) {
    stats.failed++;
    if (stats.errors.length < 20) stats.errors.push(`${err.name}: ${err.message}`);
    await sleep(20); // a refused call fails at once: do not spin
  }
}

/** load runs, on every client, `echoLoops` loops of echo and two staggered loops of slow(slowMs), until stop(). */
function startLoad(targets, stats, { echoLoops = 1, slowMs = 300 } = {}) {
  let running = true;
  const loops = [];
  targets.forEach((c, i) => {
    for (let e = 0; e < echoLoops; e++) {
      loops.push((async () => {
        for (let n = 0; running; n++) {
          const str = `c${i}-e${e}-${n}`;
          await counted(stats.echo, c.consumer.invoke('echo', [str]), str);
        }
      })());
    }
    // Two slow loops half a call apart: a slow call is in flight on every connection at any moment.
    for (let s = 0; s < 2; s++) {
      loops.push((async () => {
        if (s === 1) await sleep(slowMs / 2);
        while (running) await counted(stats.slow, c.consumer.invoke('slow', [slowMs]), slowMs);
      })());
    }
  });
  const stop = async () => {
    running = false;
    await Promise.all(loops);
  };
  loads.push(stop);
  return stop;
}

// ---- raw Bolt sockets (sofa-bolt-node's encoder), for hundreds of connections -------------------

let nextId = 1;
function encodeRequest(id, methodName, args) {
  const serverSignature = `${IFACE}:1.0`;
  return protocol.requestEncode(
    id,
    { serverSignature, methodName, args, timeout: 3000, requestProps: { service: serverSignature } },
    { protocolType: 'bolt', codecType: 'hessian2', boltVersion: 1, crcEnable: false },
  );
}

class RawBolt {
  static async connect(port) {
    const socket = net.connect(port, HOST);
    rawSockets.push(socket);
    socket.setNoDelay(true);
    await once(socket, 'connect');
    return new RawBolt(socket);
  }

  constructor(socket) {
    this.socket = socket;
    this.localPort = socket.localPort;
    this.calls = new Map();
    this.closed = false;
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      for (let len = frameLength(buf); len && buf.length >= len; len = frameLength(buf)) {
        const frame = protocol.decode(buf.subarray(0, len), {});
        buf = buf.subarray(len);
        const call = this.calls.get(frame.packetId);
        this.calls.delete(frame.packetId);
        if (!call) continue;
        if (frame.data.isError || frame.data.error) call.reject(new Error(`error response: ${frame.data.errorMsg ?? frame.data.error?.message}`));
        else call.resolve(frame.data.appResponse);
      }
    });
    socket.on('error', () => undefined); // ECONNRESET when the process holding it dies: 'close' says it
    socket.on('close', () => {
      this.closed = true;
      for (const call of this.calls.values()) call.reject(new Error('connection closed'));
      this.calls.clear();
    });
  }

  /** expect resolves with the answer to request `id` (rejects if the connection closes first). */
  expect(id) {
    return new Promise((resolve, reject) => {
      if (this.closed) reject(new Error('connection closed'));
      else this.calls.set(id, { resolve, reject });
    });
  }

  call(method, args) {
    const id = nextId++;
    const answer = this.expect(id);
    this.socket.write(encodeRequest(id, method, args));
    return answer;
  }

  /** Writes the first `cut` bytes of a request; returns the rest (to send later) and the answer. */
  callSplit(method, args, cut) {
    const id = nextId++;
    const bytes = encodeRequest(id, method, args);
    const answer = this.expect(id);
    this.socket.write(bytes.subarray(0, cut));
    return { rest: bytes.subarray(cut), answer };
  }
}

/** settled: Promise.allSettled's record for one promise, handled at once (no unhandled rejection). */
function settled(promise) {
  return promise.then(
    (value) => ({ status: 'fulfilled', value }),
    (reason) => ({ status: 'rejected', reason }),
  );
}

// ---------------------------------------------------------------------------------------------------

test('sofa-rpc-node: 8 connections under echo + slow(300) load keep their TCP connections through 20 upgrades, 0 failed calls', { timeout: 90_000 }, async () => {
  const UPGRADES = 20;
  const { dir } = setup();
  group.start([example, '--port', '0', '--host', HOST, '--dir', dir]);
  const [, firstPid, portText] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/);
  const port = Number(portText);

  for (let i = 0; i < 8; i++) await startClient(port);
  const before = clients.map((c) => c.localPort);
  assert.equal(new Set(before).size, 8, 'eight distinct TCP connections');
  for (const c of clients) assert.equal(await c.consumer.invoke('pid', []), Number(firstPid));

  const stats = { echo: callStats(), slow: callStats() };
  const stop = startLoad(clients, stats);
  await sleep(400); // both slow loops of every client are running

  const pids = [Number(firstPid)];
  for (let i = 1; i <= UPGRADES; i++) {
    const current = pids.at(-1);
    const since = group.lines.length;
    process.kill(current, 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/, { since });
    pids.push(Number(next));
    // The new generation can upgrade once its predecessor retired (its last late response written).
    await waitForLog(new RegExp(`\\[rpc-server ${current}\\] retired: `));
  }
  const echoBefore = stats.echo.calls;
  await sleep(200); // still serving after the last upgrade
  await stop();

  const failures = `echo errors: ${stats.echo.errors.join('; ')}\nslow errors: ${stats.slow.errors.join('; ')}`;
  assert.equal(stats.echo.failed, 0, failures);
  assert.equal(stats.slow.failed, 0, failures);
  assert.equal(stats.echo.ok, stats.echo.calls);
  assert.equal(stats.slow.ok, stats.slow.calls);
  assert.ok(stats.echo.calls > 2000, `only ${stats.echo.calls} echo calls`);
  assert.ok(stats.slow.calls > 8 * 2 * UPGRADES, `only ${stats.slow.calls} slow calls`);
  assert.ok(stats.echo.calls > echoBefore, 'echo calls answered after the last upgrade');

  // The very same TCP connections: same local ports, same connection objects, none closed.
  assert.equal(new Set(pids).size, UPGRADES + 1, `21 distinct generations: ${pids}`);
  for (const [i, c] of clients.entries()) {
    assert.equal(c.socketClosed, false, `client ${i}: its socket closed`);
    assert.deepEqual(c.connections(), [c.connection], `client ${i}: a new connection was opened`);
    assert.equal(c.connection._socket.localPort, before[i]);
    assert.equal(await c.consumer.invoke('pid', []), pids.at(-1));
    assert.deepEqual(c.warnings, [], `client ${i} warnings`);
  }

  // Each retirement moved all 8 connections at once, slow calls in flight, and waited for their
  // late responses; then it retired with nothing left behind.
  const log = stderrText();
  // How many calls were in flight depends on how the load generator was scheduled; that the moves
  // carried calls in flight is what matters: most retirements did (every one, on a quiet machine).
  let withCallsInFlight = 0;
  for (const pid of pids.slice(0, -1)) {
    const moving = new RegExp(`\\[rpc-server ${pid}\\] retiring: moving (\\d+) connections \\((\\d+) calls in flight\\)`).exec(log);
    assert.ok(moving, `no retiring line for ${pid}`);
    assert.equal(Number(moving[1]), 8, moving[0]);
    if (Number(moving[2]) > 0) withCallsInFlight++;
    assert.match(log, new RegExp(`\\[rpc-server ${pid}\\] moved 8 connections to pid \\d+\\n`));
    assert.match(log, new RegExp(`\\[rpc-server ${pid}\\] retired: 8 connections moved, 0 closed, 0 left`));
  }
  assert.ok(withCallsInFlight >= UPGRADES / 2, `only ${withCallsInFlight} of ${UPGRADES} retirements had slow calls in flight`);
  console.log(`# ${UPGRADES} upgrades: echo ${stats.echo.ok}/${stats.echo.calls} ok, slow ${stats.slow.ok}/${stats.slow.calls} ok`);
});

test('a successor SIGKILLed while adopting: the connections it had not acknowledged stay with the old process, which rolls back', { timeout: 60_000 }, async () => {
  const RAW = 300;
  const { dir, base } = setup();
  const killFile = path.join(base, 'kill-next-successor');
  group.start([killServer, '--port', '0', '--host', HOST, '--dir', dir], { env: { RPC_KILL_FILE: killFile } });
  const [, oldPidText, portText] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/);
  const oldPid = Number(oldPidText);
  const port = Number(portText);

  // 300 raw Bolt connections first, then 4 real clients: the server moves them in that order, so
  // the first CONN frame (253 connections, the one the successor acknowledges) holds only raw ones.
  const raws = [];
  for (let i = 0; i < RAW; i++) raws.push(await RawBolt.connect(port));
  assert.deepEqual(await Promise.all(raws.map((r) => r.call('pid', []))), Array(RAW).fill(oldPid));
  const real = [];
  for (let i = 0; i < 4; i++) real.push(await startClient(port));
  const realPorts = real.map((c) => c.localPort);

  // On every raw connection a slow call that is still in flight when the successor dies (it takes
  // well under a second to start), and on every third one half a request too.
  const SLOW = 3000;
  const slowCalls = raws.map((r) => settled(r.call('slow', [SLOW])));
  const split = raws.map((r, i) => (i % 3 === 0 ? r.callSplit('echo', [`split ${i}`], 40 + (i % 200)) : undefined));
  const splitFailed = new Set();
  split.forEach((s, i) => s?.answer.catch(() => splitFailed.add(i)));
  const stats = { echo: callStats(), slow: callStats() };
  const stop = startLoad(real, stats, { slowMs: 300 });
  await sleep(300);

  fs.writeFileSync(killFile, '');
  const since = group.lines.length;
  process.kill(oldPid, 'SIGHUP');
  const [, successorPid] = await waitForLog(/\[rpc-kill-server (\d+)\] SIGKILL while adopting connection 1\n/);
  await waitForLog(new RegExp(`\\[rpc-server ${oldPid}\\] successor ${successorPid} lost \\(.*\\); serving again`));
  const moveLine = await waitForLog(new RegExp(`\\[rpc-server ${oldPid}\\] moved (\\d+) connections to pid ${successorPid}; (\\d+) stay here \\((.*)\\)`));
  assert.equal(fs.existsSync(killFile), false, 'the successor consumed the kill file');
  await waitUntil(() => !isAlive(Number(successorPid)), 5000, 'the successor to be gone');

  // Which connections the dead successor had acknowledged, as the old process saw it (stdout is
  // another pipe than stderr: its lines may come after the log line above).
  const transferLines = () => group.lines.slice(since).map((line) => /^transfer (acked|kept) port=(\d+)/.exec(line)).filter(Boolean);
  await waitUntil(() => transferLines().length >= RAW + real.length, 5000, 'a transfer line per connection on stdout').catch(() => undefined);
  const outcomes = transferLines();
  const acked = new Set(outcomes.filter((m) => m[1] === 'acked').map((m) => Number(m[2])));
  const kept = new Set(outcomes.filter((m) => m[1] === 'kept').map((m) => Number(m[2])));
  assert.equal(acked.size + kept.size, RAW + real.length, 'every connection either acked or kept');
  assert.equal(acked.size, Number(moveLine[1]));
  assert.equal(kept.size, Number(moveLine[2]));
  // Exactly the first CONN frame: the first 253 connections (raw ones, with nothing unwritten).
  assert.equal(acked.size, 253, `acked by the dead successor: ${acked.size}, expected one full CONN frame`);
  assert.deepEqual([...acked].sort(), raws.slice(0, 253).map((r) => r.localPort).sort());
  assert.match(moveLine[3], /^\d+ ERR_HANDOVER_CHANNEL_CLOSED$/);
  for (const p of realPorts) assert.ok(kept.has(p), `real client port ${p} kept`);

  // Kept connections: the slow call in flight during the failed move is answered; the rest of the
  // half-sent request is decoded after the leftover the move gave back; all by the old process.
  const slowResults = await Promise.all(slowCalls);
  for (const [i, r] of raws.entries()) {
    const result = slowResults[i];
    if (kept.has(r.localPort)) {
      assert.deepEqual(result, { status: 'fulfilled', value: SLOW }, `raw ${i} (kept): slow call`);
      assert.equal(r.closed, false, `raw ${i} (kept) closed`);
    } else {
      assert.ok(acked.has(r.localPort), `raw ${i}: port ${r.localPort} neither acked nor kept`);
    }
  }
  // Acked connections died with the successor: the only failed calls are theirs.
  await waitUntil(() => raws.every((r) => !acked.has(r.localPort) || r.closed), 5000, 'acked connections to close');
  const failedSlow = slowResults.filter((r) => r.status === 'rejected').length;
  const ackedRaw = raws.filter((r) => acked.has(r.localPort)).length;
  assert.equal(ackedRaw, acked.size, 'only raw connections were acked');
  raws.forEach((r, i) => slowResults[i].status === 'rejected' && assert.ok(acked.has(r.localPort), `raw ${i}: failed on a kept connection`));
  assert.equal(failedSlow, ackedRaw, 'the slow call in flight on every acked connection failed (and no other)');

  const keptRaws = raws.filter((r) => kept.has(r.localPort));
  for (const [i, r] of raws.entries()) if (split[i] && kept.has(r.localPort)) r.socket.write(split[i].rest);
  const splitAnswers = await Promise.all(raws.map((r, i) => (split[i] && kept.has(r.localPort) ? split[i].answer : `split ${i}`)));
  assert.deepEqual(splitAnswers, raws.map((_, i) => `split ${i}`));
  assert.deepEqual(await Promise.all(keptRaws.map((r) => r.call('pid', []))), Array(keptRaws.length).fill(oldPid));

  // The old process rolled back: it accepts new connections and answers with its own pid.
  const fresh = await RawBolt.connect(port);
  assert.equal(await fresh.call('pid', []), oldPid);
  assert.ok(isAlive(oldPid));

  // The real clients noticed nothing: same connections, no failed call, answered by the old pid.
  await sleep(300);
  for (const c of real) {
    assert.equal(c.socketClosed, false);
    assert.deepEqual(c.connections(), [c.connection]);
    assert.equal(await c.consumer.invoke('pid', []), oldPid);
  }
  const failures = () => `echo errors: ${stats.echo.errors.join('; ')}\nslow errors: ${stats.slow.errors.join('; ')}`;
  assert.equal(stats.echo.failed + stats.slow.failed, 0, failures());
  for (const i of splitFailed) assert.ok(acked.has(raws[i].localPort), `split call ${i} failed on a kept connection`);

  // A second upgrade, with a healthy successor, moves every connection the old process kept.
  const since2 = group.lines.length;
  process.kill(oldPid, 'SIGHUP');
  const [, newPidText] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/, { since: since2 });
  const newPid = Number(newPidText);
  await waitForLog(new RegExp(`\\[rpc-server ${oldPid}\\] retired: `));
  const alive = keptRaws.length + real.length + 1; // + the fresh connection
  assert.match(stderrText(), new RegExp(`\\[rpc-server ${oldPid}\\] moved ${alive} connections to pid ${newPid}\\n`));
  assert.deepEqual(await Promise.all([...keptRaws, fresh].map((r) => r.call('pid', []))), Array(keptRaws.length + 1).fill(newPid));
  await stop();
  for (const c of real) {
    assert.equal(c.socketClosed, false);
    assert.deepEqual(c.connections(), [c.connection]);
    assert.equal(c.connection._socket.localPort, realPorts[real.indexOf(c)]);
    assert.equal(await c.consumer.invoke('pid', []), newPid);
  }
  assert.equal(stats.echo.failed + stats.slow.failed, 0, failures());
  assert.ok(stats.echo.calls > 200 && stats.slow.calls > 8, `calls: ${stats.echo.calls} echo, ${stats.slow.calls} slow`);
  console.log(
    `# killed successor: ${acked.size} connections acked and lost (${failedSlow} calls failed, all on them), ${kept.size} kept; ` +
      `real clients: echo ${stats.echo.ok}/${stats.echo.calls}, slow ${stats.slow.ok}/${stats.slow.calls} ok`,
  );
});
