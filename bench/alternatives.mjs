#!/usr/bin/env node
// Zero downtime under load, against what users would pick instead: the same app
// (bench/lib/app-server.mjs), the same wrk load, N upgrades during the run, for handover, a plain
// restart, PM2 reload (cluster mode), Node's reusePort overlap (Node ≥ 23.1), an nginx binary
// upgrade in front of the app, and a HAProxy seamless reload; keep-alive and `Connection: close`.
//   node bench/alternatives.mjs [--runs 3] [--upgrades 20] [--connections 16] [--only a,b] [--modes keep-alive,close]
// Per cell: wrk's error kinds and requests, latency p50/p99/max of the requests overlapping an
// upgrade and of the others (bench/lib/timeline.lua logs every response), a timeline (requests/s
// and p99 per 100 ms), the noise. Writes bench/results/alternatives.json; bench/report.mjs renders
// docs/benchmarks.md and the chart.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { runWrk } from '../test/wrk.mjs';
import { NoiseMeter, Processes, freePorts, machine, median, nowMs, percentile, root, saveResult, sleep, waitQuiet } from './lib/machine.mjs';
import { NODE24_HINT, debianTool, node24, toolVersions, variants } from './lib/variants.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    upgrades: { type: 'string', default: '20' },
    connections: { type: 'string', default: '16' },
    only: { type: 'string', default: 'handover,restart,pm2,reuseport,nginx,haproxy' },
    modes: { type: 'string', default: 'keep-alive,close' },
    gap: { type: 'string', default: '500' },
    node24: { type: 'string' },
  },
});
const runs = Number(values.runs);
const upgrades = Number(values.upgrades);
const connections = Number(values.connections);
const gapMs = Number(values.gap);
const say = (line) => process.stdout.write(`${line}\n`);
const BUCKET_MS = 100;
/** The variants the chart shows (bench/report.mjs): their first run's timeline is kept in the JSON. */
const CHARTED = ['handover', 'restart', 'pm2'];

const work = fs.mkdtempSync('/tmp/handover-bench-alt-');
const nodeReuse = node24(values.node24);
if (!nodeReuse) say(`no Node ≥ 23.1 for the reusePort variant: ${NODE24_HINT} (or --node24 PATH)`);
const nginx = values.only.includes('nginx') ? debianTool('nginx', 'nginx-light', say) : undefined;
const haproxy = values.only.includes('haproxy') ? debianTool('haproxy', 'haproxy', say) : undefined;
const appScript = path.join(root, 'bench', 'lib', 'app-server.mjs');

/** One cell: a variant under one kind of load, `upgrades` upgrades. */
async function cell(variantName, mode) {
  const procs = new Processes();
  const dir = path.join(work, `${variantName}-${mode}-${Date.now()}`);
  fs.mkdirSync(path.join(dir, 'wrk'), { recursive: true });
  const list = variants({
    procs,
    work: dir,
    app: (appMode, port) => [appMode === 'reuseport' ? nodeReuse.path : process.execPath, [appScript, '--mode', appMode, '--port', String(port), '--dir', path.join(dir, 'ctl')]],
    appFile: (appMode, port) => [appScript, ['--mode', appMode, '--port', String(port)]],
    nodeReuse,
    nginx,
    haproxy,
  });
  const variant = list[variantName];
  const noise = new NoiseMeter({ tags: [dir] });
  const marks = [];
  let wrk;
  try {
    const [port, appPort] = await freePorts(2);
    await variant.start(port, appPort);
    const t0 = nowMs();
    wrk = runWrk({
      url: `http://127.0.0.1:${port}/`,
      threads: connections,
      connections,
      duration: 3600,
      headers: mode === 'close' ? ['Connection: close'] : [],
      script: path.join(root, 'bench', 'lib', 'timeline.lua'),
      scriptArgs: [path.join(dir, 'wrk')],
      nice: 10,
    });
    wrk.result.catch(() => undefined); // awaited below; an upgrade that throws first must not leave it unhandled
    await sleep(2000);
    for (let i = 0; i < upgrades; i++) {
      const from = nowMs();
      await variant.upgrade();
      marks.push([from, nowMs()]);
      await sleep(gapMs);
    }
    await sleep(1500);
    wrk.child.kill('SIGINT');
    const report = await wrk.result;
    const result = analyse(report, path.join(dir, 'wrk'), marks, t0);
    result.noiseCores = noise.stop();
    return result;
  } finally {
    noise.stop();
    if (wrk && wrk.child.exitCode === null) wrk.child.kill('SIGKILL');
    try {
      await variant.stop?.();
    } catch (err) {
      say(`  stop: ${err.message}`);
    }
    await procs.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function latencyStats(latencies) {
  latencies.sort((a, b) => a - b);
  return { count: latencies.length, p50: percentile(latencies, 50), p99: percentile(latencies, 99), max: latencies.at(-1) ?? NaN };
}

/** analyse: wrk's counts, latencies during upgrades and steady, and the timeline, from the Lua logs. */
function analyse(report, logDir, marks, t0) {
  const during = [];
  const steady = [];
  const buckets = new Map();
  const windows = marks.map(([from, to]) => [from * 1000, to * 1000]);
  let non200 = 0;
  for (const file of fs.readdirSync(logDir)) {
    for (const line of fs.readFileSync(path.join(logDir, file), 'utf8').split('\n')) {
      if (!line) continue;
      const [start, end, status] = line.split(' ').map(Number);
      if (status !== 200) non200++;
      const latencyMs = (end - start) / 1000;
      (windows.some(([from, to]) => start <= to && end >= from) ? during : steady).push(latencyMs);
      const bucket = Math.floor((end / 1000 - t0) / BUCKET_MS);
      if (!buckets.has(bucket)) buckets.set(bucket, []);
      buckets.get(bucket).push(latencyMs);
    }
  }
  const last = Math.max(...buckets.keys());
  const timeline = [];
  for (let b = 0; b <= last; b++) {
    const latencies = (buckets.get(b) ?? []).sort((x, y) => x - y);
    timeline.push({ t: (b * BUCKET_MS) / 1000, rps: (latencies.length * 1000) / BUCKET_MS, p99: latencies.length ? percentile(latencies, 99) : null });
  }
  const upgradeMs = marks.map(([from, to]) => to - from);
  return {
    requests: report.requests,
    errors: { connect: report.connect, read: report.read, write: report.write, timeout: report.timeout, non2xx: report.non2xx },
    errorTotal: report.connect + report.read + report.write + report.timeout + report.non2xx,
    logged: during.length + steady.length,
    non200,
    steady: latencyStats(steady),
    during: latencyStats(during),
    upgrades: marks.length,
    upgradeMs: { median: median(upgradeMs), max: Math.max(...upgradeMs) },
    durationS: (marks.at(-1)[1] - t0 + 1500) / 1000,
    marks: marks.map(([from, to]) => [(from - t0) / 1000, (to - t0) / 1000]),
    timeline,
  };
}

const order = values.only.split(',').filter((name) => name);
const modes = values.modes.split(',');
const result = { bench: 'alternatives', machine: { ...machine(), nginx: nginx ? 'nginx-light' : 'missing', haproxy: haproxy ? 'haproxy' : 'missing', node24: nodeReuse?.version ?? 'missing' }, runs, upgrades, connections, gapMs, quietBefore: await waitQuiet(0.3, 20_000), cells: [] };
Object.assign(result.machine, toolVersions({ nginx, haproxy }));
try {
  for (let run = 0; run < runs; run++) {
    for (const mode of modes) {
      // Rotate the order between runs so that no variant always runs first (or last) on a drifting machine.
      const rotated = order.slice(run % order.length).concat(order.slice(0, run % order.length));
      for (const name of rotated) {
        const probe = variants({ procs: null, work, app: () => [], appFile: () => [], nodeReuse, nginx, haproxy })[name];
        if (!probe) continue;
        say(`run ${run + 1}/${runs} ${mode} ${name}…`);
        try {
          const r = await cell(name, mode);
          say(
            `  ${r.requests} requests, errors ${JSON.stringify(r.errors)}, steady p50/p99/max ${fmt(r.steady)}, during upgrades ${fmt(r.during)} ms, ` +
              `upgrade ${r.upgradeMs.median.toFixed(0)} ms (median), noise ${r.noiseCores.toFixed(2)} cores`,
          );
          result.cells.push({ run, mode, variant: name, label: probe.label, ...r, timeline: run === 0 && CHARTED.includes(name) ? r.timeline : undefined });
        } catch (err) {
          say(`  failed: ${err.stack}`);
          result.cells.push({ run, mode, variant: name, label: probe.label, failed: err.message });
        }
      }
    }
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
function fmt(s) {
  return `${s.p50?.toFixed(1)}/${s.p99?.toFixed(1)}/${s.max?.toFixed(1)}`;
}
say(`wrote ${saveResult('alternatives', result)}`);
