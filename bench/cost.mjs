#!/usr/bin/env node
// What the library costs a server that never upgrades: the same node:http server
// (bench/lib/cost-server.mjs) with and without handover, measured interleaved in one run.
//   node bench/cost.mjs [--runs N] [--seconds S] [--only startup,cpu,rss] [--connections 10000] [--baseline REF]
// - start-up: spawn → the `ready` line, 1 and 10 listeners; the figure is the difference of medians.
// - CPU per request: the server's CPU time (/proc, user + system) over a wrk run divided by the
//   requests wrk completed, keep-alive and `Connection: close`; the figure is the ratio of medians.
// - RSS with N idle keep-alive connections (bench/lib/hold-client.mjs), with and without.
// --baseline REF adds the library as of git REF (built into a temporary directory) to the start-up
// and CPU comparisons, interleaved with the rest: before/after figures of one run.
// Writes bench/results/cost.json; `node bench/report.mjs` turns it into docs/benchmarks.md.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runWrk } from '../test/wrk.mjs';
import { NoiseMeter, Processes, cpuMsOf, freePorts, machine, median, nowMs, root, rssKbOf, saveResult, sleep, waitQuiet } from './lib/machine.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '7' },
    seconds: { type: 'string', default: '5' },
    only: { type: 'string', default: 'startup,cpu,rss' },
    connections: { type: 'string', default: '10000' },
    baseline: { type: 'string' },
  },
});
const runs = Number(values.runs);
const seconds = Number(values.seconds);
const only = new Set(values.only.split(','));
const server = path.join(root, 'bench', 'lib', 'cost-server.mjs');
const tmp = fs.mkdtempSync('/tmp/handover-bench-cost-');

/**
 * buildBaseline: the library as of git `ref`, compiled into tmp/baseline (its src/, the addon of
 * this checkout: native/ must not differ), with a copy of the cost server beside it so that
 * `import('handover')` resolves to that build.
 */
function buildBaseline(ref) {
  const dir = path.join(tmp, 'baseline');
  fs.mkdirSync(path.join(dir, 'bench', 'lib'), { recursive: true });
  const nativeDiff = execFileSync('git', ['diff', '--stat', ref, 'HEAD', '--', 'native', 'binding.gyp'], { cwd: root, encoding: 'utf8' }).trim();
  if (nativeDiff) throw new Error(`--baseline ${ref}: native/ differs from HEAD; build that checkout yourself`);
  execFileSync('bash', ['-c', `git -C "${root}" archive "${ref}" package.json tsconfig.json src | tar -x -C "${dir}"`]);
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  fs.mkdirSync(path.join(dir, 'build', 'Release'), { recursive: true });
  fs.copyFileSync(path.join(root, 'build', 'Release', 'handover.node'), path.join(dir, 'build', 'Release', 'handover.node'));
  execFileSync(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', path.join(dir, 'tsconfig.json')]);
  fs.copyFileSync(server, path.join(dir, 'bench', 'lib', 'cost-server.mjs'));
  const sha = execFileSync('git', ['rev-parse', '--short', ref], { cwd: root, encoding: 'utf8' }).trim();
  return { dir, sha, server: path.join(dir, 'bench', 'lib', 'cost-server.mjs') };
}
const baseline = values.baseline ? buildBaseline(values.baseline) : undefined;
const MODES = baseline ? ['plain', 'handover', 'baseline'] : ['plain', 'handover'];
// Enough load that the server (one thread) stays busy: its CPU per request then does not depend on
// how many events each wakeup brings.
const WRK_THREADS = 2;
const WRK_CONNECTIONS = 64;
const say = (line) => process.stdout.write(`${line}\n`);

/** startServer: one cost-server, through a shell that raises its fd limit (10,000 connections). */
async function startServer(procs, mode, ports) {
  const dir = path.join(tmp, `ctl-${mode}-${ports[0]}`);
  const args = mode === 'baseline' ? [baseline.server, '--mode', 'handover', '--ports', ports.join(','), '--dir', dir] : [server, '--mode', mode, '--ports', ports.join(','), '--dir', dir];
  const t0 = nowMs();
  const child = procs.start('bash', ['-c', 'ulimit -n $(ulimit -Hn) && exec "$0" "$@"', process.execPath, ...args]);
  const [match, t] = await procs.waitForLine(/^ready pid=(\d+)\S* port=\d+ cpu=(\d+)/);
  return { pid: Number(match[1]), child, startMs: t - t0, cpuMs: Number(match[2]) / 1000 };
}

/** rotate: which mode goes first changes from run to run (and in which order the rest follow). */
function rotate(modes, run) {
  const turned = modes.slice(run % modes.length).concat(modes.slice(0, run % modes.length));
  return Math.floor(run / modes.length) % 2 ? turned.reverse() : turned;
}

async function startup(listeners) {
  const samples = { plain: [], handover: [], baseline: [] };
  const cpu = { plain: [], handover: [], baseline: [] };
  const basePairs = [];
  // Pairs: each run starts both, one right after the other; the cost is the median of the pairs' differences.
  const pairs = [];
  const cpuPairs = [];
  for (let run = 0; run < runs * 2; run++) {
    const pair = {};
    for (const mode of rotate(MODES, run)) {
      const procs = new Processes();
      try {
        const { startMs, cpuMs } = await startServer(procs, mode, await freePorts(listeners));
        samples[mode].push(startMs);
        cpu[mode].push(cpuMs);
        pair[mode] = { startMs, cpuMs };
      } finally {
        await procs.cleanup();
      }
    }
    pairs.push(pair.handover.startMs - pair.plain.startMs);
    cpuPairs.push(pair.handover.cpuMs - pair.plain.cpuMs);
    if (pair.baseline) basePairs.push({ startMs: pair.baseline.startMs - pair.plain.startMs, cpuMs: pair.baseline.cpuMs - pair.plain.cpuMs });
  }
  const plain = median(samples.plain);
  const handover = median(samples.handover);
  const extraMs = median(pairs);
  const extraCpuMs = median(cpuPairs);
  say(`start-up, ${listeners} listener(s): plain ${plain.toFixed(1)} ms, handover ${handover.toFixed(1)} ms: +${extraMs.toFixed(1)} ms wall, +${extraCpuMs.toFixed(1)} ms CPU (medians of ${pairs.length} pairs; CPU plain ${median(cpu.plain).toFixed(1)}, handover ${median(cpu.handover).toFixed(1)} ms)`);
  const result = { listeners, plainMs: plain, handoverMs: handover, extraMs, plainCpuMs: median(cpu.plain), handoverCpuMs: median(cpu.handover), extraCpuMs, samples, cpu, pairs, cpuPairs };
  if (baseline) {
    result.baseline = { ref: values.baseline, sha: baseline.sha, startMs: median(samples.baseline), extraMs: median(basePairs.map((p) => p.startMs)), extraCpuMs: median(basePairs.map((p) => p.cpuMs)) };
    say(`  baseline ${values.baseline} (${baseline.sha}): +${result.baseline.extraMs.toFixed(1)} ms wall, +${result.baseline.extraCpuMs.toFixed(1)} ms CPU`);
  }
  return result;
}

async function cpuPerRequest(keepAlive) {
  const samples = { plain: [], handover: [], baseline: [] };
  for (let run = 0; run < runs; run++) {
    for (const mode of rotate(MODES, run)) {
      const procs = new Processes();
      try {
        const [port] = await freePorts(1);
        const { pid } = await startServer(procs, mode, [port]);
        // Warm up (JIT, parser pool), then measure.
        await runWrk({ url: `http://127.0.0.1:${port}/`, threads: WRK_THREADS, connections: WRK_CONNECTIONS, duration: 1, headers: keepAlive ? [] : ['Connection: close'] }).result;
        const before = cpuMsOf(pid);
        const startMs = nowMs();
        const { result } = runWrk({ url: `http://127.0.0.1:${port}/`, threads: WRK_THREADS, connections: WRK_CONNECTIONS, duration: seconds, headers: keepAlive ? [] : ['Connection: close'] });
        const report = await result;
        const cpuMs = cpuMsOf(pid) - before;
        // busy: the share of a core the server used. Below ~0.9 it waited for the client, and the CPU
        // per request then includes more per-wakeup overhead (fewer events per epoll_wait).
        const busy = cpuMs / (nowMs() - startMs);
        const errors = report.connect + report.read + report.write + report.timeout + report.non2xx;
        samples[mode].push({ usPerRequest: (cpuMs * 1000) / report.requests, requests: report.requests, cpuMs, busy, errors });
      } finally {
        await procs.cleanup();
      }
    }
  }
  const plain = median(samples.plain.map((s) => s.usPerRequest));
  const handover = median(samples.handover.map((s) => s.usPerRequest));
  const name = keepAlive ? 'keep-alive' : 'Connection: close';
  const busy = (m) => median(samples[m].map((s) => s.busy));
  say(`server CPU per request, ${name}: plain ${plain.toFixed(1)} µs, handover ${handover.toFixed(1)} µs: ratio ${(handover / plain).toFixed(3)} (medians of ${runs}; server busy ${busy('plain').toFixed(2)} / ${busy('handover').toFixed(2)} of a core)`);
  const result = { mode: name, plainUs: plain, handoverUs: handover, ratio: handover / plain, plainBusy: busy('plain'), handoverBusy: busy('handover'), samples };
  if (baseline) {
    const baseUs = median(samples.baseline.map((s) => s.usPerRequest));
    result.baseline = { ref: values.baseline, sha: baseline.sha, us: baseUs, ratio: baseUs / plain };
    say(`  baseline ${values.baseline} (${baseline.sha}): ${baseUs.toFixed(1)} µs: ratio ${(baseUs / plain).toFixed(3)}`);
  }
  return result;
}

async function rssIdle(n) {
  const samples = { plain: [], handover: [] };
  for (let run = 0; run < 2; run++) {
    for (const mode of rotate(['plain', 'handover'], run)) {
      const procs = new Processes();
      try {
        const [port] = await freePorts(1);
        const { pid } = await startServer(procs, mode, [port]);
        await sleep(300);
        const emptyKb = rssKbOf(pid);
        const hold = procs.start('bash', ['-c', 'ulimit -n $(ulimit -Hn) && exec "$0" "$@"', process.execPath, path.join(root, 'bench', 'lib', 'hold-client.mjs'), '--port', String(port), '--n', String(n)], { stdin: 'pipe' });
        const [held] = await procs.waitForLine(/^held n=(\d+) failed=(\d+)/, { timeout: 120_000 });
        await sleep(1000);
        const heldKb = rssKbOf(pid);
        samples[mode].push({ emptyKb, heldKb, held: Number(held[1]), failed: Number(held[2]) });
        hold.stdin.end('quit\n');
      } finally {
        await procs.cleanup();
      }
    }
  }
  const plain = median(samples.plain.map((s) => s.heldKb));
  const handover = median(samples.handover.map((s) => s.heldKb));
  say(`RSS with ${n} idle connections: plain ${(plain / 1024).toFixed(1)} MB, handover ${(handover / 1024).toFixed(1)} MB: ratio ${(handover / plain).toFixed(3)}`);
  return { connections: n, plainKb: plain, handoverKb: handover, ratio: handover / plain, samples };
}

const result = { bench: 'cost', machine: machine(), quietBefore: await waitQuiet(0.3, 20_000), runs, seconds };
const noise = new NoiseMeter({ tags: [tmp] });
try {
  if (only.has('startup')) result.startup = [await startup(1), await startup(10)];
  if (only.has('cpu')) result.cpu = [await cpuPerRequest(true), await cpuPerRequest(false)];
  if (only.has('rss')) result.rss = await rssIdle(Number(values.connections));
} finally {
  result.noiseCores = noise.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
}
say(`other processes on the CPUs: ${result.noiseCores.toFixed(2)} cores (machine busy before: ${result.quietBefore.toFixed(2)} cores)`);
// A run of some parts (--only) keeps the other parts of the last full run; each part says when it was measured.
const measured = { date: result.machine.date, commit: result.machine.commit, noiseCores: result.noiseCores, runs, seconds };
result.parts = {};
for (const part of ['startup', 'cpu', 'rss']) if (result[part]) result.parts[part] = measured;
const previousFile = path.join(root, 'bench', 'results', 'cost.json');
if (fs.existsSync(previousFile) && only.size < 3) {
  const previous = JSON.parse(fs.readFileSync(previousFile, 'utf8'));
  for (const part of ['startup', 'cpu', 'rss']) {
    if (result[part] || !previous[part]) continue;
    result[part] = previous[part];
    result.parts[part] = previous.parts?.[part] ?? { date: previous.machine.date, commit: previous.machine.commit, noiseCores: previous.noiseCores, runs: previous.runs, seconds: previous.seconds };
  }
}
say(`wrote ${saveResult('cost', result)}`);
