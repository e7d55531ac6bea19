#!/usr/bin/env node
// Bench: the latency of `echo` calls while their connection moves. examples/rpc-server.mjs (SOFA
// Bolt) upgraded U times under load from the real sofa-rpc-node client: C connections, each with an
// echo loop and two staggered slow(S) loops, so slow calls are in flight on the very connection
// that moves. A drain-first design would stall an echo behind the slowest call in flight (~S ms);
// handover moves the connection at once and forwards the slow calls' responses (late writes).
//   node bench/rpc-move-latency.mjs [--upgrades 10] [--c 8] [--slow 300] [--json FILE]
// Prints per upgrade: the max echo latency of calls overlapping the move (from the predecessor's
// 'retiring' to its 'moved N connections' log line, each seen on its stderr), and over the whole
// upgrade (SIGHUP to the successor ready + 200 ms); and the steady-state max before the first upgrade.
// Every process it starts (the server and each successor) is killed by pid at the end.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const { RpcClient } = require('sofa-rpc-node').client;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    upgrades: { type: 'string', default: '10' },
    c: { type: 'string', default: '8' },
    slow: { type: 'string', default: '300' },
    json: { type: 'string' },
  },
});
const UPGRADES = Number(values.upgrades);
const SLOW = Number(values.slow);
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const started = new Set();
const killAll = () => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
};
process.on('exit', killAll);
const watchdog = setTimeout(() => {
  console.error('rpc bench: timed out; killing everything');
  process.exit(2);
}, 60_000 + UPGRADES * 5000);

/** CPU ticks per pid now (from /proc): the noise is what processes this bench did not start used. */
function cpuSnapshot() {
  const perPid = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      perPid.set(Number(entry), Number(fields[11]) + Number(fields[12]));
    } catch {
      // exited meanwhile
    }
  }
  return { t: nowMs(), perPid };
}
function foreignCores(before, after) {
  let ticks = 0;
  for (const [pid, value] of after.perPid) {
    if (started.has(pid) || pid === process.pid) continue;
    ticks += value - (before.perPid.get(pid) ?? 0);
  }
  return ticks / 100 / ((after.t - before.t) / 1000);
}

const port = await new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => {
    const p = s.address().port;
    s.close(() => resolve(p));
  });
});
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-rpc-bench-'));
const events = []; // [t ms, line] from the servers' stdout/stderr
const waiters = [];
function onLine(line) {
  const t = nowMs();
  events.push([t, line]);
  const ready = /^ready pid=(\d+)/.exec(line);
  if (ready) started.add(Number(ready[1]));
  for (const w of [...waiters]) {
    const m = w.regex.exec(line);
    if (m) {
      waiters.splice(waiters.indexOf(w), 1);
      w.resolve([t, m]);
    }
  }
}
function waitLine(regex, since = 0) {
  for (const [t, line] of events.slice(since)) {
    const m = regex.exec(line);
    if (m) return Promise.resolve([t, m]);
  }
  return new Promise((resolve) => waiters.push({ regex, resolve }));
}
const server = spawn(process.execPath, [path.join(root, 'examples/rpc-server.mjs'), '--port', String(port), '--host', '127.0.0.1', '--dir', dir], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
started.add(server.pid);
readline.createInterface({ input: server.stdout }).on('line', onLine);
readline.createInterface({ input: server.stderr }).on('line', onLine);
let [, first] = await waitLine(/^ready pid=(\d+)/);
let pid = Number(first[1]);

// ---- clients ----
const logger = { info() {}, debug() {}, warn() {}, error() {} };
const clients = [];
for (let i = 0; i < Number(values.c); i++) {
  const client = new RpcClient({ logger });
  const consumer = client.createConsumer({ interfaceName: 'com.example.Echo', serverHost: `127.0.0.1:${port}`, responseTimeout: 5000, retryFaultInterval: 200 });
  await consumer.ready();
  const [connection] = client.connectionManager.connections.values();
  clients.push({ client, consumer, localPort: connection._socket.localPort });
}
const echoes = []; // [sent ms, latency ms]
let failed = 0;
let slowCalls = 0;
let running = true;
const loops = [];
for (const { consumer } of clients) {
  loops.push(
    (async () => {
      let i = 0;
      while (running) {
        const sent = nowMs();
        try {
          const value = await consumer.invoke('echo', [`e${i}`]);
          if (value !== `e${i}`) throw new Error('wrong answer');
          echoes.push([sent, nowMs() - sent]);
        } catch {
          failed++;
          await sleep(20);
        }
        i++;
        await sleep(2);
      }
    })(),
  );
  for (let s = 0; s < 2; s++) {
    loops.push(
      (async () => {
        if (s === 1) await sleep(SLOW / 2);
        while (running) {
          try {
            await consumer.invoke('slow', [SLOW]);
            slowCalls++;
          } catch {
            failed++;
            await sleep(20);
          }
        }
      })(),
    );
  }
}

const maxOver = (from, to) => echoes.filter(([sent, latency]) => sent <= to && sent + latency >= from).reduce((m, [, l]) => Math.max(m, l), 0);
const countOver = (from, to) => echoes.filter(([sent, latency]) => sent <= to && sent + latency >= from).length;
await sleep(1000);
const steadyFrom = nowMs();
await sleep(1000);
const steady = { max: maxOver(steadyFrom, nowMs()), calls: countOver(steadyFrom, nowMs()) };
const upgrades = [];
const cpuBefore = cpuSnapshot();
for (let u = 0; u < UPGRADES; u++) {
  const since = events.length;
  const tHup = nowMs();
  process.kill(pid, 'SIGHUP');
  const [tRetiring, retiring] = await waitLine(/retiring: moving (\d+) connections \((\d+) calls in flight\)/, since);
  const [tMoved] = await waitLine(/moved (\d+) connections to pid/, since);
  const [tReady, ready] = await waitLine(/^ready pid=(\d+)/, since);
  await sleep(200);
  const newPid = Number(ready[1]);
  upgrades.push({
    from: pid,
    to: newPid,
    connections: Number(retiring[1]),
    slowInFlight: Number(retiring[2]),
    moveMs: tMoved - tRetiring,
    maxEchoDuringMoveMs: maxOver(tRetiring - 20, tMoved + 20),
    echoCallsDuringMove: countOver(tRetiring - 20, tMoved + 20),
    maxEchoDuringUpgradeMs: maxOver(tHup, Math.max(tReady, tMoved) + 200),
  });
  pid = newPid;
  await sleep(800);
}
const noiseCores = foreignCores(cpuBefore, cpuSnapshot());
running = false;
await Promise.race([Promise.all(loops), sleep(SLOW * 3)]);
const result = {
  what: 'bench/rpc-move-latency.mjs: echo latency while its connection moves (examples/rpc-server.mjs, sofa-rpc-node)',
  connections: clients.length,
  slowMs: SLOW,
  steadyMaxEchoMs: steady.max,
  maxEchoDuringMoveMs: Math.max(...upgrades.map((u) => u.maxEchoDuringMoveMs)),
  medianOfMaxEchoDuringMoveMs: upgrades.map((u) => u.maxEchoDuringMoveMs).sort((a, b) => a - b)[Math.floor(upgrades.length / 2)],
  maxEchoDuringUpgradeMs: Math.max(...upgrades.map((u) => u.maxEchoDuringUpgradeMs)),
  echoCalls: echoes.length,
  slowCalls,
  failedCalls: failed,
  noiseCores,
  machine: { cpus: os.cpus().length, node: process.version },
  generatedAt: new Date().toISOString(),
  upgrades,
};
console.log(`steady state: max echo ${steady.max.toFixed(1)} ms over ${steady.calls} calls`);
for (const [i, u] of upgrades.entries()) console.log(`upgrade ${i + 1}: ${u.connections} connections, ${u.slowInFlight} slow calls in flight; move ${u.moveMs.toFixed(1)} ms; max echo during the move ${u.maxEchoDuringMoveMs.toFixed(1)} ms (${u.echoCallsDuringMove} calls), during the whole upgrade ${u.maxEchoDuringUpgradeMs.toFixed(1)} ms`);
console.log(`max echo latency while connections move: ${result.maxEchoDuringMoveMs.toFixed(1)} ms (median of the per-upgrade max ${result.medianOfMaxEchoDuringMoveMs.toFixed(1)} ms; target <= 50 ms); failed calls ${failed} of ${echoes.length + slowCalls + failed}; other processes used ${noiseCores.toFixed(2)} cores meanwhile`);
if (values.json) fs.writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
clearTimeout(watchdog);
for (const { client } of clients) await client.close().catch(() => undefined);
killAll();
fs.rmSync(dir, { recursive: true, force: true });
process.exit(failed === 0 ? 0 : 1);
