#!/usr/bin/env node
// What the library costs a server that never upgrades: the same node:http server
// (bench/lib/cost-server.mjs) with and without handover, measured interleaved in one run.
//   node bench/cost.mjs [--runs N] [--seconds S] [--only startup,cpu,rss] [--connections 10000]
// - start-up: spawn → the `ready` line, 1 and 10 listeners; the figure is the difference of medians.
// - CPU per request: the server's CPU time (/proc, user + system) over a wrk run divided by the
//   requests wrk completed, keep-alive and `Connection: close`; the figure is the ratio of medians.
// - RSS with N idle keep-alive connections (bench/lib/hold-client.mjs), with and without.
// Writes bench/results/cost.json; `node bench/report.mjs` turns it into docs/benchmarks.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runWrk } from './lib/wrk.mjs';
import { NoiseMeter, Processes, cpuMsOf, freePorts, machine, median, nowMs, root, rssKbOf, saveResult, sleep, waitQuiet } from './lib/machine.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '7' },
    seconds: { type: 'string', default: '5' },
    only: { type: 'string', default: 'startup,cpu,rss' },
    connections: { type: 'string', default: '10000' },
  },
});
const runs = Number(values.runs);
const seconds = Number(values.seconds);
const only = new Set(values.only.split(','));
const server = path.join(root, 'bench', 'lib', 'cost-server.mjs');
const MODES = ['plain', 'handover'];
const tmp = fs.mkdtempSync('/tmp/handover-bench-cost-');
const say = (line) => process.stdout.write(`${line}\n`);

/** startServer: one cost-server, through a shell that raises its fd limit (10,000 connections). */
async function startServer(procs, mode, ports) {
  const dir = path.join(tmp, `ctl-${mode}-${ports[0]}`);
  const args = [server, '--mode', mode, '--ports', ports.join(','), '--dir', dir];
  const t0 = nowMs();
  const child = procs.start('bash', ['-c', 'ulimit -n $(ulimit -Hn) && exec "$0" "$@"', process.execPath, ...args]);
  const [match, t] = await procs.waitForLine(/^ready pid=(\d+)/);
  return { pid: Number(match[1]), child, startMs: t - t0 };
}

async function startup(listeners) {
  const samples = { plain: [], handover: [] };
  for (let run = 0; run < runs * 2; run++) {
    for (const mode of run % 2 ? MODES : [...MODES].reverse()) {
      const procs = new Processes();
      try {
        const { startMs } = await startServer(procs, mode, await freePorts(listeners));
        samples[mode].push(startMs);
      } finally {
        await procs.cleanup();
      }
    }
  }
  const plain = median(samples.plain);
  const handover = median(samples.handover);
  say(`start-up, ${listeners} listener(s): plain ${plain.toFixed(1)} ms, handover ${handover.toFixed(1)} ms: +${(handover - plain).toFixed(1)} ms (medians of ${samples.plain.length})`);
  return { listeners, plainMs: plain, handoverMs: handover, extraMs: handover - plain, samples };
}

async function cpuPerRequest(keepAlive) {
  const samples = { plain: [], handover: [] };
  for (let run = 0; run < runs; run++) {
    for (const mode of run % 2 ? MODES : [...MODES].reverse()) {
      const procs = new Processes();
      try {
        const [port] = await freePorts(1);
        const { pid } = await startServer(procs, mode, [port]);
        // Warm up (JIT, parser pool), then measure.
        await runWrk({ url: `http://127.0.0.1:${port}/`, threads: 1, connections: 16, duration: 1, headers: keepAlive ? [] : ['Connection: close'] }).result;
        const before = cpuMsOf(pid);
        const { result } = runWrk({ url: `http://127.0.0.1:${port}/`, threads: 1, connections: 16, duration: seconds, headers: keepAlive ? [] : ['Connection: close'] });
        const report = await result;
        const cpuMs = cpuMsOf(pid) - before;
        const errors = report.connect + report.read + report.write + report.timeout + report.non2xx;
        samples[mode].push({ usPerRequest: (cpuMs * 1000) / report.requests, requests: report.requests, cpuMs, errors });
      } finally {
        await procs.cleanup();
      }
    }
  }
  const plain = median(samples.plain.map((s) => s.usPerRequest));
  const handover = median(samples.handover.map((s) => s.usPerRequest));
  const name = keepAlive ? 'keep-alive' : 'Connection: close';
  say(`server CPU per request, ${name}: plain ${plain.toFixed(1)} µs, handover ${handover.toFixed(1)} µs: ratio ${(handover / plain).toFixed(3)} (medians of ${runs})`);
  return { mode: name, plainUs: plain, handoverUs: handover, ratio: handover / plain, samples };
}

async function rssIdle(n) {
  const samples = { plain: [], handover: [] };
  for (let run = 0; run < 2; run++) {
    for (const mode of run % 2 ? MODES : [...MODES].reverse()) {
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
say(`wrote ${saveResult('cost', result)}`);
