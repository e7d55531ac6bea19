#!/usr/bin/env node
// Bolt RPC through upgrades, with slow calls in flight on every connection: handover
// (examples/rpc-server.mjs) vs a plain restart vs PM2 reload in cluster mode (bench/lib/rpc-app.mjs),
// the same load (bench/lib/rpc-load.mjs: real sofa-rpc-node clients), N upgrades per run.
//   node bench/rpc.mjs [--runs 3] [--upgrades 20] [--clients 8] [--slow-ms 300] [--only handover,restart,pm2]
// Per cell: calls, failed calls by error, reconnects, echo latency (p99, max) during upgrades and
// steady. Writes bench/results/rpc.json; bench/report.mjs renders it into docs/benchmarks.md.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { NoiseMeter, Processes, freePorts, machine, median, nowMs, percentile, root, saveResult, sleep, waitQuiet } from './lib/machine.mjs';
import { toolVersions, variants } from './lib/variants.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    upgrades: { type: 'string', default: '20' },
    clients: { type: 'string', default: '8' },
    'slow-ms': { type: 'string', default: '300' },
    gap: { type: 'string', default: '500' },
    only: { type: 'string', default: 'handover,restart,pm2' },
  },
});
const runs = Number(values.runs);
const upgrades = Number(values.upgrades);
const gapMs = Number(values.gap);
const say = (line) => process.stdout.write(`${line}\n`);
const work = fs.mkdtempSync('/tmp/handover-bench-rpc-');
const example = path.join(root, 'examples', 'rpc-server.mjs');
const plainApp = path.join(root, 'bench', 'lib', 'rpc-app.mjs');

async function cell(variantName) {
  const procs = new Processes();
  const dir = path.join(work, `${variantName}-${Date.now()}`);
  fs.mkdirSync(dir, { recursive: true });
  const variant = variants({
    procs,
    work: dir,
    app: (mode, port) =>
      mode === 'handover'
        ? [process.execPath, [example, '--port', String(port), '--host', '127.0.0.1', '--dir', path.join(dir, 'ctl')]]
        : [process.execPath, [plainApp, '--mode', mode, '--port', String(port)]],
    appFile: (mode, port) => [plainApp, ['--mode', mode, '--port', String(port)]],
  })[variantName];
  const noise = new NoiseMeter({ tags: [dir] });
  const marks = [];
  try {
    const [port] = await freePorts(1);
    await variant.start(port);
    const out = path.join(dir, 'calls.json');
    const load = procs.start(process.execPath, [path.join(root, 'bench', 'lib', 'rpc-load.mjs'), '--port', String(port), '--clients', values.clients, '--slow-ms', values['slow-ms'], '--out', out], { stdin: 'pipe' });
    await procs.waitForLine(/^loading pid=/);
    const t0 = nowMs();
    await sleep(2000);
    for (let i = 0; i < upgrades; i++) {
      const from = nowMs();
      await variant.upgrade();
      marks.push([from, nowMs()]);
      await sleep(gapMs);
    }
    await sleep(1500);
    const since = procs.lines.length;
    load.stdin.write('stop\n');
    await procs.waitForLine(/^stopped/, { since, timeout: 30_000 });
    const result = analyse(JSON.parse(fs.readFileSync(out, 'utf8')), marks, t0);
    result.noiseCores = noise.stop();
    return result;
  } finally {
    noise.stop();
    try {
      await variant.stop?.();
    } catch (err) {
      say(`  stop: ${err.message}`);
    }
    await procs.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function analyse({ reconnects, calls }, marks, t0) {
  const windows = marks.map(([from, to]) => [from * 1000, to * 1000]);
  const echo = { during: [], steady: [] };
  const errors = {};
  let failed = 0;
  let failedSlow = 0;
  for (const [start, end, method, error] of calls) {
    if (error) {
      failed++;
      if (method === 'slow') failedSlow++;
      errors[error] = (errors[error] ?? 0) + 1;
      continue;
    }
    if (method !== 'echo') continue;
    (windows.some(([from, to]) => start <= to && end >= from) ? echo.during : echo.steady).push((end - start) / 1000);
  }
  const stats = (latencies) => {
    latencies.sort((a, b) => a - b);
    return { count: latencies.length, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) ?? NaN };
  };
  const upgradeMs = marks.map(([from, to]) => to - from);
  return {
    calls: calls.length,
    failed,
    failedSlow,
    errors,
    reconnects,
    echoSteady: stats(echo.steady),
    echoDuring: stats(echo.during),
    upgrades: marks.length,
    upgradeMs: { median: median(upgradeMs), max: Math.max(...upgradeMs) },
    durationS: (marks.at(-1)[1] - t0 + 1500) / 1000,
  };
}

const order = values.only.split(',');
const result = { bench: 'rpc', machine: { ...machine(), ...toolVersions({}) }, runs, upgrades, clients: Number(values.clients), slowMs: Number(values['slow-ms']), gapMs, quietBefore: await waitQuiet(0.3, 20_000), cells: [] };
try {
  for (let run = 0; run < runs; run++) {
    const rotated = order.slice(run % order.length).concat(order.slice(0, run % order.length));
    for (const name of rotated) {
      say(`run ${run + 1}/${runs} rpc ${name}…`);
      try {
        const r = await cell(name);
        say(`  ${r.calls} calls, ${r.failed} failed (${r.failedSlow} slow) ${JSON.stringify(r.errors)}, ${r.reconnects} reconnects, echo max during upgrades ${r.echoDuring.max.toFixed(1)} ms (p99 ${r.echoDuring.p99.toFixed(1)}), steady max ${r.echoSteady.max.toFixed(1)} ms, upgrade ${r.upgradeMs.median.toFixed(0)} ms, noise ${r.noiseCores.toFixed(2)} cores`);
        result.cells.push({ run, variant: name, ...r });
      } catch (err) {
        say(`  failed: ${err.stack}`);
        result.cells.push({ run, variant: name, crashed: err.message });
      }
    }
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
say(`wrote ${saveResult('rpc', result)}`);
