#!/usr/bin/env node
// Benchmark: move N idle keep-alive HTTP connections to a successor in one upgrade (SIGHUP).
//   npm run bench:move                       # N = 1,000 and 10,000, one run each (~30 s)
//   node bench/move-connections.mjs --n 10000 --runs 3 --wait-quiet 15 --json out.json
// Options:
//   --n N (repeatable)   connection counts (default 1000 and 10000)
//   --runs R             runs per N (default 1)
//   --baseline REF       also measure the library at git REF (built once with npm ci in
//                        $TMPDIR/handover-baseline-<sha>, from `git archive`), interleaved with this
//                        tree run by run (ABBA...), same harness; prints medians and the ratio
//   --no-mosn            skip the MOSN-way comparison (bench/move-mosn.mjs, run after each pair)
//   --mosn-concurrency C unix connections in flight at once for the MOSN way (default 256)
//   --out FILE           the summary as JSON (default bench/results/move-connections.json; '' for none)
//   --c C --rate R       load: C keep-alive connections, R requests/s each (default 16 x 100)
//   --order load-first|load-last   which client connects first = whose connections move first
//   --profile            --cpu-prof on both generations; prints where the time went (inflates timings)
//   --keep-profiles DIR  keep the .cpuprofile files (dig with bench/lib/profile-tree.mjs)
//   --server-node-arg A  extra node flag for the server (the successor inherits it)
//   --wait-quiet S       before each run wait up to S s for other processes to leave the CPUs
//   --fd-limit L         RLIMIT_NOFILE of the processes (default: the hard limit, at most 65536)
//   --json FILE          every figure of every run, per batch timeline included
//   --timeout S          overall deadline (default: from the runs asked for); everything is killed after it
// Processes (each a separate node, started through `ulimit -n` for 10k+ fds):
//   server  bench/lib/server.mjs: the first generation; SIGHUP spawns the successor (same argv)
//   hold    bench/lib/hold-client.mjs: N idle keep-alive connections, one request each, then idle
//   load    bench/lib/load-client.mjs: C other keep-alive connections requesting at a fixed rate
// Measured: READY -> last CONN_ACK (exact, from the control messages), moved count, every held
// connection answering from the new pid afterwards, latency of the load before/during/after.
// Every process started here (and the successor) is killed by pid at the end, or on any failure.
// Exit code: 0 when every run moved everything and lost nothing, 1 otherwise.
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { freePort } from './lib/machine.mjs';
import { summarise, inclusiveOf } from './lib/profile.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({
  options: {
    n: { type: 'string', multiple: true },
    runs: { type: 'string', default: '1' },
    c: { type: 'string', default: '16' },
    rate: { type: 'string', default: '100' },
    profile: { type: 'boolean', default: false },
    json: { type: 'string' },
    'keep-profiles': { type: 'string' },
    timeout: { type: 'string' },
    order: { type: 'string', default: 'load-first' },
    'wait-quiet': { type: 'string', default: '0' },
    'server-node-arg': { type: 'string', multiple: true },
    'fd-limit': { type: 'string' },
    baseline: { type: 'string' },
    mosn: { type: 'boolean', default: true },
    'mosn-concurrency': { type: 'string', default: '256' },
    out: { type: 'string', default: path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..'), 'bench', 'results', 'move-connections.json') },
  },
  allowNegative: true,
});
const sizes = (values.n ?? ['1000', '10000']).map(Number);
const runsPerSize = Number(values.runs);
const loadConns = Number(values.c);
const loadRate = Number(values.rate);
const loadOrder = values.order;
if (loadOrder !== 'load-first' && loadOrder !== 'load-last') throw new Error('--order is load-first or load-last');
const BASELINE_MS = 2000;
const AFTER_MS = 1000;

// ---------- processes ----------
const started = new Set(); // every pid started by this bench (successors included)
const log = (line) => process.stderr.write(`${line}\n`);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nowNs = () => process.hrtime.bigint();

const hardLimit = Number(execFileSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim()) || 1024;
const fdLimit = Math.min(hardLimit, Number(values['fd-limit'] ?? 65536));

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function killAll(signal = 'SIGKILL') {
  for (const pid of started) {
    if (alive(pid)) {
      try {
        process.kill(pid, signal);
      } catch {
        // gone
      }
    }
  }
}

class Proc {
  constructor(name, args, { nodeArgs = [], env = {}, cwd = root } = {}) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.stderr = '';
    // exec keeps the pid: the node process is the very pid we track.
    this.child = spawn('bash', ['-c', `ulimit -n ${fdLimit} && exec "$0" "$@"`, process.execPath, ...nodeArgs, ...args], {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.pid = this.child.pid;
    started.add(this.pid);
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => this.onLine(line));
    this.child.stderr.on('data', (chunk) => {
      this.stderr += chunk;
      if (process.env.BENCH_VERBOSE) process.stderr.write(`[${name}] ${chunk}`);
    });
    this.child.stdin.on('error', () => undefined);
  }

  onLine(line) {
    if (process.env.BENCH_VERBOSE) log(`[${this.name}] ${line.length > 300 ? `${line.slice(0, 300)}...` : line}`);
    // A successor writes on the same stdout: remember its pid to kill it at the end.
    const ready = /^ready pid=(\d+)/.exec(line);
    if (ready) started.add(Number(ready[1]));
    this.lines.push(line);
    for (const waiter of [...this.waiters]) {
      const match = waiter.regex.exec(line);
      if (match) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        clearTimeout(waiter.timer);
        waiter.resolve(match);
      }
    }
  }

  /** waitFor resolves with the match of the first line (already seen or to come) matching regex. */
  waitFor(regex, timeoutMs, what) {
    for (const line of this.lines) {
      const match = regex.exec(line);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const waiter = { regex, resolve };
      waiter.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}\n--- stderr ---\n${this.stderr.slice(-3000)}`));
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  send(line) {
    this.child.stdin.write(`${line}\n`);
  }
}

/** childrenOf lists the pids whose parent is `pid` (from /proc). */
function childrenOf(pid) {
  const children = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) children.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return children;
}

async function waitExit(pid, ms) {
  const deadline = Date.now() + ms;
  while (alive(pid) && Date.now() < deadline) await sleep(20);
  return !alive(pid);
}

// ---------- noise: CPU used by processes this bench did not start ----------
function cpuSnapshot() {
  const perPid = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      perPid.set(Number(entry), Number(fields[11]) + Number(fields[12])); // utime + stime, in ticks
    } catch {
      // exited meanwhile
    }
  }
  return { t: nowNs(), perPid };
}

/** foreignCpu: cores' worth of CPU used by other processes (other sessions, tests) between two snapshots. */
function foreignCpu(before, after) {
  let ticks = 0;
  for (const [pid, value] of after.perPid) {
    if (started.has(pid) || pid === process.pid) continue;
    ticks += value - (before.perPid.get(pid) ?? 0);
  }
  const seconds = Number(after.t - before.t) / 1e9;
  return ticks / 100 / seconds; // USER_HZ is 100 on Linux
}

// ---------- statistics ----------
function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function latencyStats(records, fromUs, toUs) {
  // A request belongs to a window when its [sent, sent + latency] overlaps it.
  const latencies = [];
  for (let i = 0; i < records.length; i += 4) {
    const sent = records[i];
    const latency = records[i + 1];
    if (sent <= toUs && sent + latency >= fromUs) latencies.push(latency / 1000);
  }
  latencies.sort((a, b) => a - b);
  return { count: latencies.length, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies[latencies.length - 1] ?? NaN };
}

const num = (match, group = 1) => Number(match[group]);
const big = (s) => BigInt(s);
const ms = (from, to) => Number(big(to) - big(from)) / 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};

/** waitQuiet waits (at most `seconds`) for a second in which other processes use < 0.25 core. */
async function waitQuiet(seconds) {
  const deadline = Date.now() + seconds * 1000;
  let foreign = NaN;
  while (Date.now() < deadline) {
    const before = cpuSnapshot();
    await sleep(1000);
    foreign = foreignCpu(before, cpuSnapshot());
    if (foreign < 0.25) return foreign;
  }
  return foreign;
}

// ---------- one run ----------
async function runOnce(n, index, tree = { name: 'current', root }) {
  if (Number(values['wait-quiet']) > 0) {
    const foreign = await waitQuiet(Number(values['wait-quiet']));
    log(`# other processes used ${foreign.toFixed(2)} cores just before this run`);
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-bench-'));
  const profDir = values.profile ? fs.mkdtempSync(path.join(os.tmpdir(), 'handover-prof-')) : undefined;
  const port = await freePort();
  // Node flags of the server; the successor inherits them (upgrade() spawns execPath + execArgv + argv).
  const nodeArgs = [...(values['server-node-arg'] ?? []), ...(profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, '--cpu-prof-interval', '200'] : [])];
  const procs = [];
  let watching = false;
  try {
    log(`# N=${n} run ${index + 1} (${tree.name}): port ${port}, fd limit ${fdLimit}${profDir ? `, profiling into ${profDir}` : ''}`);
    // The library under test is the tree's (its dist/ and build/); the harness is this one's.
    const server = new Proc('server', [path.join(tree.root, 'bench/lib/server.mjs'), '--port', String(port), '--dir', dir], { nodeArgs, cwd: tree.root });
    procs.push(server);
    const first = await server.waitFor(/^ready pid=(\d+) .*gen=first/, 15_000, 'the first generation');
    const oldPid = num(first);

    // The order the clients connect in is the order the predecessor moves their connections.
    const loadOut = path.join(dir, 'load.json');
    const startLoad = async () => {
      const proc = new Proc('load', [path.join(root, 'bench/lib/load-client.mjs'), '--port', String(port), '--c', String(loadConns), '--rate', String(loadRate), '--out', loadOut]);
      procs.push(proc);
      await proc.waitFor(/^loading/, 15_000, 'the load client');
      return proc;
    };
    const startHold = async () => {
      const proc = new Proc('hold', [path.join(root, 'bench/lib/hold-client.mjs'), '--port', String(port), '--n', String(n)]);
      procs.push(proc);
      const held = await proc.waitFor(/^held n=(\d+) failed=(\d+) pids=(\S+)/, 60_000, `${n} held connections`);
      if (num(held) !== n) throw new Error(`hold client holds ${held[1]} connections of ${n} (${held[2]} failed)`);
      return proc;
    };
    let load;
    let hold;
    if (loadOrder === 'load-first') {
      load = await startLoad();
      hold = await startHold();
    } else {
      hold = await startHold();
      load = await startLoad();
    }
    await sleep(BASELINE_MS);

    const cpuBefore = cpuSnapshot();
    const tSighup = nowNs();
    process.kill(oldPid, 'SIGHUP');
    // The successor is spawned detached by the server: note its pid as soon as it exists, so that
    // it is killed at the end even if it never gets to print its ready line.
    watching = true;
    void (async () => {
      while (watching) {
        for (const pid of childrenOf(oldPid)) started.add(pid);
        await sleep(10);
      }
    })();
    const succ = await server.waitFor(/^ready pid=(\d+) .*gen=successor t=(\d+) ready_called=(\d+) cpu=(\d+)/, 30_000, 'the successor');
    const newPid = num(succ);
    watching = false;
    const retired = await server.waitFor(new RegExp(`^retired pid=${oldPid} closed=(\\d+) moved=(\\d+) remaining=(\\d+) timed_out=(\\w+) t=(\\d+) cpu=(\\d+)`), 60_000, 'the predecessor to retire');
    const retiring = await server.waitFor(new RegExp(`^retiring pid=${oldPid} successor=\\d+ t=(\\d+) cpu=(\\d+)`), 1000, 'the retiring line');
    const oldMarks = JSON.parse((await server.waitFor(new RegExp(`^marks pid=${oldPid} (.*)$`), 5000, 'predecessor marks'))[1]);
    const bye = await server.waitFor(new RegExp(`^predecessor-retired pid=${newPid} clean=\\w+ t=\\d+ cpu=(\\d+)`), 10_000, 'BYE at the successor');
    const adopted = JSON.parse((await server.waitFor(new RegExp(`^adopted pid=${newPid} (.*)$`), 5000, 'adopted runs'))[1]);
    const newMarks = JSON.parse((await server.waitFor(new RegExp(`^marks pid=${newPid} (.*)$`), 5000, 'successor marks'))[1]);
    const oldGone = await waitExit(oldPid, 5000);
    const foreign = foreignCpu(cpuBefore, cpuSnapshot());
    await sleep(AFTER_MS);
    const tAfterEnd = nowNs();

    hold.send('check');
    const checked = JSON.parse((await hold.waitFor(/^checked (.*)$/, 60_000, 'the check of every held connection'))[1]);
    load.send('stop');
    const stopped = await load.waitFor(/^stopped requests=(\d+) errors=(\d+)/, 10_000, 'the load client to stop');
    const loadData = JSON.parse(fs.readFileSync(loadOut, 'utf8'));

    // ----- timings from the control messages -----
    const readySent = newMarks.find((m) => m[1] === 'send' && m[2] === 'READY')[0];
    const readyRecvMark = oldMarks.find((m) => m[1] === 'recv' && m[2] === 'READY');
    const readyRecv = readyRecvMark[0];
    const connSent = oldMarks.filter((m) => m[1] === 'send' && m[2] === 'CONN');
    const acksRecv = oldMarks.filter((m) => m[1] === 'recv' && m[2] === 'CONN_ACK');
    const connRecv = newMarks.filter((m) => m[1] === 'recv' && m[2] === 'CONN');
    const acksSent = newMarks.filter((m) => m[1] === 'send' && m[2] === 'CONN_ACK');
    const lastAck = acksRecv[acksRecv.length - 1]?.[0];
    const runs = adopted.runs;
    // Per batch in the successor: CONN received -> CONN_ACK sent (checking the fds; before the
    // connections are started, if the library acknowledges first). Runs: the 'connection' events of
    // one turn of the successor's loop; the last one's end is when the last adopted connection is live.
    const adoptMs = connRecv.map((m, i) => (acksSent[i] ? ms(m[0], acksSent[i][0]) : NaN));
    const liveRuns = runs.filter((r) => big(r[0]) >= big(readySent));
    const lastRun = liveRuns.at(-1);
    const lastLive = lastRun?.[1];
    const injectMs = [lastLive ? ms(acksSent[0]?.[0] ?? readySent, lastLive) : NaN];
    const batchRuns = liveRuns;
    const perConn = (list, counts) => {
      const total = list.reduce((a, b) => a + (Number.isNaN(b) ? 0 : b), 0);
      const conns = counts.reduce((a, b) => a + b, 0);
      return { totalMs: total, usPerConn: conns ? (total * 1000) / conns : NaN };
    };
    const result = {
      n,
      run: index + 1,
      tree: tree.name,
      oldPid,
      newPid,
      spawnMs: ms(tSighup, readySent), // SIGHUP -> successor sends READY (node start-up, listen)
      readyToLastAckMs: ms(readySent, lastAck),
      readyToLastLiveMs: ms(readySent, lastLive),
      readyToRetiredMs: ms(readySent, retired[5]),
      readyRecvToFirstConnMs: ms(readyRecv, connSent[0][0]), // freezing every socket, first batch built
      firstToLastConnSentMs: ms(connSent[0][0], connSent[connSent.length - 1][0]),
      lastAckToRetiredMs: ms(lastAck, retired[5]),
      // CPU time (user + system) each process spent on the move: READY -> BYE in the successor,
      // 'retiring' -> 'retired' in the predecessor. Less sensitive to other load than wall time.
      successorCpuMs: (Math.max(num(bye), lastRun?.[3] ?? 0) - num(succ, 4)) / 1000,
      predecessorCpuMs: (num(retired, 6) - num(retiring, 2)) / 1000,
      // On the critical path of the move: the predecessor from READY received to its last CONN sent,
      // the successor from READY sent to its last CONN_ACK sent (CPU µs recorded with each message).
      predecessorCpuToLastConnMs: (connSent.at(-1)?.[4] - readyRecvMark[4]) / 1000,
      successorCpuToLastAckMs: (acksSent.at(-1)?.[4] - newMarks.find((m) => m[1] === 'send' && m[2] === 'READY')[4]) / 1000,
      batches: connSent.length,
      fdsSent: connSent.reduce((a, m) => a + m[3], 0),
      successorAdopt: perConn(adoptMs, connRecv.map((m) => m[3])),
      successorInject: perConn(injectMs, [liveRuns.reduce((a, r) => a + r[2], 0)]),
      successorBatchMedianMs: { adopt: median(adoptMs), inject: median(injectMs) },
      adoptedInSuccessor: adopted.connections,
      moved: num(retired, 2),
      closed: num(retired, 1),
      remaining: num(retired, 3),
      timedOut: retired[4] === 'true',
      oldExited: oldGone,
      foreignCpu: foreign,
      order: loadOrder,
      check: checked,
      // ms after READY was sent: per batch, for the JSON output (--json)
      timeline: {
        predConnSent: connSent.map((m) => ms(readySent, m[0])),
        succConnRecv: connRecv.map((m) => ms(readySent, m[0])),
        succAckSent: acksSent.map((m) => ms(readySent, m[0])),
        succRun: batchRuns.map((r) => (r ? [ms(readySent, r[0]), ms(readySent, r[1]), r[2]] : null)),
        predAckRecv: acksRecv.map((m) => ms(readySent, m[0])),
      },
      load: {
        requests: num(stopped, 1),
        errors: loadData.errors.length,
        errorSamples: loadData.errors.slice(0, 5),
        before: latencyStats(loadData.records, Number(tSighup / 1000n) - BASELINE_MS * 1000, Number(tSighup / 1000n)),
        spawn: latencyStats(loadData.records, Number(tSighup / 1000n), Number(big(readySent) / 1000n)),
        // The move: READY sent -> last CONN_ACK received (the window of readyToLastAckMs).
        move: latencyStats(loadData.records, Number(big(readySent) / 1000n), Number(big(lastAck) / 1000n)),
        // Then, until the last adopted connection is a socket in the successor (parked ones start late).
        adopting: latencyStats(loadData.records, Number(big(lastAck) / 1000n), Number(big(lastLive ?? retired[5]) / 1000n)),
        after: latencyStats(loadData.records, Number(big(lastLive ?? retired[5]) / 1000n) + 1, Number(tAfterEnd / 1000n)),
        // The slowest requests: [sent, ms after READY was sent; latency ms; pid that answered].
        slowest: (() => {
          const list = [];
          for (let i = 0; i < loadData.records.length; i += 4) list.push([(loadData.records[i] - Number(big(readySent) / 1000n)) / 1000, loadData.records[i + 1] / 1000, loadData.records[i + 2]]);
          return list.sort((a, b) => b[1] - a[1]).slice(0, 20);
        })(),
        pidsAfter: (() => {
          const pids = {};
          for (let i = 0; i < loadData.records.length; i += 4) if (loadData.records[i] > Number(big(lastLive ?? retired[5]) / 1000n)) pids[loadData.records[i + 2]] = (pids[loadData.records[i + 2]] ?? 0) + 1;
          return pids;
        })(),
      },
    };
    result.ok =
      result.moved >= n &&
      result.remaining === 0 &&
      checked.n === n &&
      (checked.pids[newPid] ?? 0) === n &&
      checked.closedWhileHeld === 0 &&
      Object.keys(checked.errors).length === 0 &&
      result.load.errors === 0;

    hold.send('quit');
    load.send('quit');
    process.kill(newPid, 'SIGTERM'); // the successor exits through process.exit (writes its profile)
    await waitExit(newPid, 10_000);
    if (profDir) result.profiles = analyseProfiles(profDir, { oldPid, newPid, from: readySent, to: lastLive ?? retired[5], readyRecv, lastAck });
    if (profDir && values['keep-profiles']) {
      fs.mkdirSync(values['keep-profiles'], { recursive: true });
      for (const f of fs.readdirSync(profDir)) fs.copyFileSync(path.join(profDir, f), path.join(values['keep-profiles'], `n${n}-run${index + 1}-${f}`));
    }
    return result;
  } finally {
    watching = false;
    for (const proc of procs) {
      try {
        proc.child.stdin.end();
      } catch {
        // gone
      }
    }
    killAll('SIGKILL');
    for (const pid of started) await waitExit(pid, 2000);
    started.clear();
    fs.rmSync(dir, { recursive: true, force: true });
    if (profDir) fs.rmSync(profDir, { recursive: true, force: true });
  }
}

function analyseProfiles(profDir, { oldPid, newPid, from, to, readyRecv, lastAck }) {
  const files = fs.readdirSync(profDir);
  const find = (pid) => files.find((f) => f.includes(`.${pid}.`));
  const out = {};
  const fromUs = Number(big(from) / 1000n);
  const toUs = Number(big(to) / 1000n);
  for (const [role, pid, a, b] of [
    ['successor', newPid, fromUs, toUs],
    ['predecessor', oldPid, Number(big(readyRecv) / 1000n), Number(big(lastAck) / 1000n) + 5000],
  ]) {
    const file = find(pid);
    if (!file) {
      out[role] = { error: `no profile for pid ${pid} in ${files.join(', ')}` };
      continue;
    }
    const s = summarise(path.join(profDir, file), a, b, { root });
    const pick = (re) => inclusiveOf(s, (key) => re.test(key));
    out[role] = {
      windowMs: s.windowMs,
      busyMs: s.busyMs,
      self: s.self,
      inclusive: s.inclusive,
      lines: s.lines,
      buckets:
        role === 'successor'
          ? {
              'acknowledge (all)': pick(/^acknowledge src\/connections\/adopter\.ts/),
              'startParked (all)': pick(/^startParked src\/connections\/adopter\.ts/),
              'fdCredit': pick(/^fdCredit /),
              'new net.Socket (Socket ctor)': pick(/^Socket node:net:/),
              'start(): emit connection etc.': pick(/^start src\/connections\.ts/),
              'connectionListenerInternal (http)': pick(/^connectionListenerInternal node:_http_server/),
              // The bench wraps the addon's sendmsg/recvmsg (bench/lib/server.mjs): the syscalls show under these names.
              'sendmsg CONN_ACK (syscall + wake-up)': pick(/^native\.sendmsg /),
              'recvmsg CONN (syscall)': pick(/^native\.recvmsg /),
              'track (upgrader)': pick(/^track src\/upgrader\.ts/),
              'afterAdopt (http adapter)': pick(/^afterAdopt src\/adapters\/http\.ts/),
              'socket.resume': pick(/^resume node:internal\/streams\/readable/),
              'decode (protocol)': pick(/^decode src\/protocol\.ts/),
              'HTTP requests of the load (parserOnHeadersComplete)': pick(/^parserOnHeadersComplete /),
              'garbage collector': pick(/^\(garbage collector\)/),
            }
          : {
              'retire (http adapter)': pick(/^retire src\/adapters\/http\.ts/),
              'transfer (mover)': pick(/^transfer src\/connections\.ts/),
              'checkInternals': pick(/^checkInternals src\/connections\.ts/),
              'freezeReading': pick(/^freezeReading src\/connections\.ts/),
              'isIdle (http adapter)': pick(/^isIdle src\/adapters\/http\.ts/),
              'idleParsers (http adapter)': pick(/^idleParsers src\/adapters\/http\.ts/),
              'flush (mover: build CONN)': pick(/^flush src\/connections\.ts/),
              'encode (protocol)': pick(/^encode src\/protocol\.ts/),
              'onAck (mover)': pick(/^onAck src\/connections\.ts/),
              'onMessage (mover: CONN_ACK)': pick(/^onMessage src\/connections\.ts/),
              'socket.destroy': pick(/^destroy node:internal\/streams\/destroy/),
              'sendmsg CONN (syscall)': pick(/^native\.sendmsg /),
              'garbage collector': pick(/^\(garbage collector\)/),
            },
    };
  }
  return out;
}

// ---------- report ----------
function table(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r, ri) => {
    const line = r.map((cell, i) => (i === 0 ? String(cell).padEnd(widths[i]) : String(cell).padStart(widths[i]))).join('  ');
    return ri === 0 ? `${line}\n${widths.map((w) => '-'.repeat(w)).join('  ')}` : line;
  }).join('\n');
}

const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');

function report(results) {
  const cols = results.map((r) => `N=${r.n}${runsPerSize > 1 ? ` #${r.run}` : ''}${r.tree !== 'current' ? ' base' : ''}`);
  const row = (label, f) => [label, ...results.map(f)];
  const lat = (w) => (r) => `${f2(r.load[w].p99)} / ${f2(r.load[w].max)} (${r.load[w].count})`;
  const out = [];
  out.push(
    table([
      ['', ...cols],
      row('SIGHUP -> READY sent (successor start) ms', (r) => f1(r.spawnMs)),
      row('READY -> last CONN_ACK ms (end to end)', (r) => f1(r.readyToLastAckMs)),
      row('READY -> last conn live in successor ms', (r) => f1(r.readyToLastLiveMs)),
      row('READY -> predecessor retired ms', (r) => f1(r.readyToRetiredMs)),
      row('  pred: READY recv -> first CONN sent ms', (r) => f1(r.readyRecvToFirstConnMs)),
      row('  pred: first -> last CONN sent ms', (r) => f1(r.firstToLastConnSentMs)),
      row('  succ: adopt (CONN -> ACK) total ms', (r) => f1(r.successorAdopt.totalMs)),
      row('  succ: adopt us/conn', (r) => f1(r.successorAdopt.usPerConn)),
      row('  succ: inject (ACK -> emitted) total ms', (r) => f1(r.successorInject.totalMs)),
      row('  succ: inject us/conn', (r) => f1(r.successorInject.usPerConn)),
      row('  pred: last ACK -> retired ms', (r) => f1(r.lastAckToRetiredMs)),
      row('successor CPU during the move ms', (r) => f1(r.successorCpuMs)),
      row('predecessor CPU during the move ms', (r) => f1(r.predecessorCpuMs)),
      row('  pred CPU: READY recv -> last CONN sent ms', (r) => f1(r.predecessorCpuToLastConnMs)),
      row('  succ CPU: READY sent -> last CONN_ACK sent ms', (r) => f1(r.successorCpuToLastAckMs)),
      row('CONN batches (fds)', (r) => `${r.batches} (${r.fdsSent})`),
      row('moved / closed / remaining', (r) => `${r.moved} / ${r.closed} / ${r.remaining}`),
      row('held conns answering from new pid', (r) => `${r.check.pids[r.newPid] ?? 0} / ${r.n}`),
      row('held conns closed or failed', (r) => `${r.check.closedWhileHeld} / ${Object.values(r.check.errors).reduce((a, b) => a + b, 0)}`),
      row(`load p99 / max ms (reqs): before`, lat('before')),
      row(`load p99 / max ms (reqs): spawn`, lat('spawn')),
      row(`load p99 / max ms (reqs): move (READY -> last ACK)`, lat('move')),
      row(`load p99 / max ms (reqs): adopting (-> last live)`, lat('adopting')),
      row(`load p99 / max ms (reqs): after`, lat('after')),
      row('load errors', (r) => r.load.errors),
      row('other processes on the CPUs (cores)', (r) => f2(r.foreignCpu)),
      row('verdict', (r) => (r.ok ? 'ok' : 'FAILED')),
    ]),
  );
  for (const r of results) {
    if (!r.profiles) continue;
    for (const [role, p] of Object.entries(r.profiles)) {
      out.push(`\nProfile N=${r.n} #${r.run} ${role} (window ${f1(p.windowMs)} ms, busy ${f1(p.busyMs)} ms)`);
      if (p.error) {
        out.push(`  ${p.error}`);
        continue;
      }
      out.push(table([['inclusive bucket', 'ms'], ...Object.entries(p.buckets).map(([k, v]) => [k, f1(v)])]));
      out.push(table([['top self', 'where', 'ms'], ...p.self.map((e) => [e.name, e.where, f1(e.ms)])]));
    }
  }
  return out.join('\n');
}

// ---------- main ----------
const watchdog = setTimeout(() => {
  log('bench: overall timeout; killing everything');
  killAll('SIGKILL');
  process.exit(2);
}, Number(values.timeout ?? 120 + sizes.length * runsPerSize * (values.baseline ? 2 : 1) * 45 + (values.mosn ? sizes.length * runsPerSize * 60 : 0)) * 1000);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    killAll('SIGKILL');
    process.exit(130);
  });
}
process.on('exit', () => killAll('SIGKILL'));

// Preflight: the library and its addon must load (dist/ and build/ are built by `npm run build` / `npm run build:native`).
try {
  execFileSync(process.execPath, ['-e', "require('./dist/index.js'); require('./dist/native.js').binding()"], { cwd: root, stdio: 'pipe' });
} catch (err) {
  log(`bench: the library does not load; build it first (npx tsc -p tsconfig.json; npm run build:native):\n${String(err.stderr ?? err).slice(0, 2000)}`);
  process.exit(1);
}

const need = Math.max(...sizes) * 2 + loadConns * 2 + 256;
if (fdLimit < need) log(`warning: fd limit ${fdLimit} (hard ${hardLimit}) may be too low; the predecessor may hold up to ~${need} fds`);

// ---------- baseline: another commit of the library, built once in a directory of its own ----------
/** buildBaseline extracts `ref` (git archive, so the repository's worktrees are untouched) and runs npm ci there. */
function buildBaseline(ref) {
  const sha = execFileSync('git', ['rev-parse', '--verify', `${ref}^{commit}`], { cwd: root, encoding: 'utf8' }).trim();
  const dir = path.join(os.tmpdir(), `handover-baseline-${sha.slice(0, 12)}`);
  if (!fs.existsSync(path.join(dir, '.built'))) {
    log(`# building the baseline ${ref} (${sha.slice(0, 8)}) in ${dir} (npm ci)`);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    execFileSync('bash', ['-c', 'git -C "$0" archive "$1" | tar -x -C "$2"', root, sha, dir], { stdio: 'inherit' });
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'] });
    fs.writeFileSync(path.join(dir, '.built'), sha);
  }
  // The same harness for both: this tree's server script runs on the baseline's library.
  fs.copyFileSync(path.join(root, 'bench/lib/server.mjs'), path.join(dir, 'bench/lib/server.mjs'));
  return { name: 'baseline', ref, sha, root: dir };
}

const gitHead = (() => {
  try {
    const sha = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'native'], { cwd: root, encoding: 'utf8' }).trim() !== '';
    return { sha, dirty };
  } catch {
    return { sha: 'unknown', dirty: true };
  }
})();

const current = { name: 'current', root };
const baseline = values.baseline ? buildBaseline(values.baseline) : undefined;
let runMosnOnce;
if (values.mosn) ({ runMosnOnce } = await import('./move-mosn.mjs'));

const results = [];
const mosnResults = [];
let failed = false;
try {
  for (const n of sizes) {
    for (let i = 0; i < runsPerSize; i++) {
      // Interleaved: current and baseline alternate which goes first (ABBA...), on the same machine minutes apart.
      const trees = baseline ? (i % 2 === 0 ? [current, baseline] : [baseline, current]) : [current];
      for (const tree of trees) results.push(await runOnce(n, i, tree));
      if (runMosnOnce) {
        const before = cpuSnapshot();
        const r = await runMosnOnce(n, { concurrency: Number(values['mosn-concurrency']), track: (pid) => started.add(pid), foreignCpu: { start: () => before, stop: () => foreignCpu(before, cpuSnapshot()) } });
        r.run = i + 1;
        mosnResults.push(r);
        log(`# MOSN way N=${n} run ${i + 1}: ${r.startToLastIdMs.toFixed(1)} ms, ${r.ok ? 'ok' : 'FAILED'}`);
      }
    }
  }
} catch (err) {
  failed = true;
  log(`bench failed: ${err.stack ?? err}`);
}
clearTimeout(watchdog);

// ---------- summary: medians per N and tree, the interleaved ratio, the MOSN way ----------
const medianOf = (list, f) => median(list.map(f).filter(Number.isFinite));
function figuresOf(list) {
  return {
    runs: list.length,
    readyToLastAckMs: medianOf(list, (r) => r.readyToLastAckMs),
    readyToLastLiveMs: medianOf(list, (r) => r.readyToLastLiveMs),
    connectionsPerSecond: medianOf(list, (r) => ((r.moved || r.n) / r.readyToLastAckMs) * 1000),
    successorCpuMs: medianOf(list, (r) => r.successorCpuMs),
    predecessorCpuMs: medianOf(list, (r) => r.predecessorCpuMs),
    predecessorCpuToLastConnMs: medianOf(list, (r) => r.predecessorCpuToLastConnMs),
    successorCpuToLastAckMs: medianOf(list, (r) => r.successorCpuToLastAckMs),
    loadP99DuringMoveMs: medianOf(list, (r) => r.load.move.p99),
    loadMaxDuringMoveMs: medianOf(list, (r) => r.load.move.max),
    loadP99WhileAdoptingMs: medianOf(list, (r) => r.load.adopting?.p99),
    loadP99BeforeMs: medianOf(list, (r) => r.load.before.p99),
    noiseCores: medianOf(list, (r) => r.foreignCpu),
    all: {
      readyToLastAckMs: list.map((r) => r.readyToLastAckMs),
      loadP99DuringMoveMs: list.map((r) => r.load.move.p99),
      noiseCores: list.map((r) => r.foreignCpu),
    },
    ok: list.every((r) => r.ok),
  };
}
const summary = {};
for (const n of sizes) {
  const mine = results.filter((r) => r.n === n && r.tree === 'current');
  const entry = { current: figuresOf(mine) };
  if (baseline) {
    const base = results.filter((r) => r.n === n && r.tree === 'baseline');
    entry.baseline = figuresOf(base);
    // Ratio per interleaved pair (run i of each), then the median: robust to the machine's noise drifting.
    const pairs = mine.map((r) => [r, base.find((b) => b.run === r.run)]).filter(([, b]) => b);
    entry.ratio = {
      readyToLastAck: median(pairs.map(([a, b]) => a.readyToLastAckMs / b.readyToLastAckMs)),
      readyToLastLive: median(pairs.map(([a, b]) => a.readyToLastLiveMs / b.readyToLastLiveMs)),
      successorCpu: median(pairs.map(([a, b]) => a.successorCpuMs / b.successorCpuMs)),
      predecessorCpu: median(pairs.map(([a, b]) => a.predecessorCpuMs / b.predecessorCpuMs)),
      perPair: pairs.map(([a, b]) => a.readyToLastAckMs / b.readyToLastAckMs),
    };
  }
  const mosn = mosnResults.filter((r) => r.n === n);
  if (mosn.length > 0) {
    entry.mosn = {
      runs: mosn.length,
      concurrency: mosn[0].concurrency,
      startToLastIdMs: medianOf(mosn, (r) => r.startToLastIdMs),
      startToLastLiveMs: medianOf(mosn, (r) => r.startToLastLiveMs),
      connectionsPerSecond: medianOf(mosn, (r) => r.connectionsPerSecond),
      successorCpuMs: medianOf(mosn, (r) => r.successorCpuMs),
      predecessorCpuMs: medianOf(mosn, (r) => r.predecessorCpuMs),
      noiseCores: medianOf(mosn, (r) => r.foreignCpu),
      ok: mosn.every((r) => r.ok),
    };
    // End to end: the last acknowledgement (ours) against the last id (MOSN answers once its socket exists);
    // and until the last connection is live in the successor, for both.
    entry.rateVsMosn = {
      toLastAck: entry.current.connectionsPerSecond / entry.mosn.connectionsPerSecond,
      toLastLive: entry.mosn.startToLastLiveMs / entry.current.readyToLastLiveMs,
    };
  }
  summary[`n${n}`] = entry;
}

if (results.length > 0) {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  console.log(`\nmachine: ${os.cpus().length} cpus (${cpu}), node ${process.version}, fd limit ${fdLimit}; load: ${loadConns} conns x ${loadRate} req/s, ${loadOrder}${values['server-node-arg'] ? `; server flags ${values['server-node-arg'].join(' ')}` : ''}${values.profile ? '; PROFILED (timings inflated)' : ''}`);
  console.log(`library: ${gitHead.sha.slice(0, 8)}${gitHead.dirty ? ' (src/ or native/ modified)' : ''}${baseline ? `; baseline ${baseline.ref} = ${baseline.sha.slice(0, 8)} in ${baseline.root}` : ''}`);
  console.log(report(results));
  for (const r of results) {
    if (!r.ok) console.log(`\nN=${r.n} #${r.run} (${r.tree}) FAILED: ${JSON.stringify({ moved: r.moved, remaining: r.remaining, check: r.check, loadErrors: r.load.errorSamples })}`);
  }
  const rows = [['median over runs', ...sizes.flatMap((n) => [`N=${n}`, ...(baseline ? [`N=${n} base`, 'ratio'] : [])])]];
  const cell = (f, g) => sizes.flatMap((n) => {
    const e = summary[`n${n}`];
    return [f(e.current), ...(baseline ? [f(e.baseline), g ? g(e) : ''] : [])];
  });
  rows.push(['READY -> last CONN_ACK ms', ...cell((x) => f1(x.readyToLastAckMs), (e) => f2(e.ratio.readyToLastAck))]);
  rows.push(['READY -> last conn live ms', ...cell((x) => f1(x.readyToLastLiveMs), (e) => f2(e.ratio.readyToLastLive))]);
  rows.push(['connections/s (to last ACK)', ...cell((x) => Math.round(x.connectionsPerSecond))]);
  rows.push(['successor CPU ms', ...cell((x) => f1(x.successorCpuMs), (e) => f2(e.ratio.successorCpu))]);
  rows.push(['predecessor CPU ms', ...cell((x) => f1(x.predecessorCpuMs), (e) => f2(e.ratio.predecessorCpu))]);
  rows.push(['load p99 before the upgrade ms', ...cell((x) => f1(x.loadP99BeforeMs))]);
  rows.push(['load p99 during the move ms', ...cell((x) => f1(x.loadP99DuringMoveMs))]);
  rows.push(['load p99 then, while adopting ms', ...cell((x) => f1(x.loadP99WhileAdoptingMs))]);
  rows.push(['pred CPU READY -> last CONN ms', ...cell((x) => f1(x.predecessorCpuToLastConnMs))]);
  rows.push(['succ CPU READY -> last ACK ms', ...cell((x) => f1(x.successorCpuToLastAckMs))]);
  rows.push(['noise (other processes, cores)', ...cell((x) => f2(x.noiseCores))]);
  console.log(`\n${table(rows)}`);
  if (baseline) for (const n of sizes) console.log(`N=${n}: READY -> last ACK, current / baseline per interleaved pair: ${summary[`n${n}`].ratio.perPair.map(f2).join(', ')}`);
  for (const n of sizes) {
    const e = summary[`n${n}`];
    if (!e.mosn) continue;
    console.log(`N=${n} the MOSN way (one unix connection per moved connection, ${e.mosn.concurrency} at a time): start -> last id ${f1(e.mosn.startToLastIdMs)} ms (${Math.round(e.mosn.connectionsPerSecond)} conn/s), last live ${f1(e.mosn.startToLastLiveMs)} ms, CPU succ/pred ${f1(e.mosn.successorCpuMs)}/${f1(e.mosn.predecessorCpuMs)} ms, noise ${f2(e.mosn.noiseCores)}; our rate ${f2(e.rateVsMosn.toLastAck)}x to the last ACK, ${f2(e.rateVsMosn.toLastLive)}x to the last connection live`);
  }
}
const compact = (r) => ({
  n: r.n, run: r.run, tree: r.tree, ok: r.ok, readyToLastAckMs: r.readyToLastAckMs, readyToLastLiveMs: r.readyToLastLiveMs, readyToRetiredMs: r.readyToRetiredMs,
  successorCpuMs: r.successorCpuMs, predecessorCpuMs: r.predecessorCpuMs, moved: r.moved, closed: r.closed, batches: r.batches,
  loadMove: r.load.move, loadAdopting: r.load.adopting, loadBefore: r.load.before,
  predecessorCpuToLastConnMs: r.predecessorCpuToLastConnMs, successorCpuToLastAckMs: r.successorCpuToLastAckMs, loadErrors: r.load.errors, noiseCores: r.foreignCpu,
});
if (values.out && results.length > 0 && !values.profile) {
  const cpuModel = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const doc = {
    what: 'bench/move-connections.mjs: N idle keep-alive HTTP connections moved in one upgrade',
    generatedAt: new Date().toISOString(),
    command: `node bench/move-connections.mjs ${process.argv.slice(2).join(' ')}`.trim(),
    machine: { cpus: os.cpus().length, model: cpuModel, kernel: os.release(), node: process.version, fdLimit },
    library: gitHead,
    baseline: baseline ? { ref: baseline.ref, sha: baseline.sha } : null,
    load: { connections: loadConns, ratePerConnection: loadRate, order: loadOrder },
    noise: { medianCores: median(results.map((r) => r.foreignCpu)), perRun: results.map((r) => r.foreignCpu), meaning: 'CPU used by processes this bench did not start, in cores, over each run' },
    figures: summary,
    runs: results.map(compact),
    mosnRuns: mosnResults,
  };
  fs.mkdirSync(path.dirname(values.out), { recursive: true });
  fs.writeFileSync(values.out, `${JSON.stringify(doc, null, 2)}\n`);
  log(`# wrote ${values.out}`);
}
if (values.json) {
  const plain = results.map(({ profiles, ...rest }) => ({
    ...rest,
    ...(profiles ? { profiles: Object.fromEntries(Object.entries(profiles).map(([k, v]) => [k, { ...v }])) } : {}),
  }));
  fs.writeFileSync(values.json, JSON.stringify(plain, null, 2));
}
process.exit(failed || results.some((r) => !r.ok) || mosnResults.some((r) => !r.ok) ? 1 : 0);
