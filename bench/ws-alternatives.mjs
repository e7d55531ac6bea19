#!/usr/bin/env node
// WebSockets through upgrades, against what users would pick instead: handover
// (examples/ws-server.mjs) vs a plain restart vs PM2 reload in cluster mode (bench/lib/ws-app.mjs:
// the same echo + tick app without the library), the same load, N upgrades per run.
//   node bench/ws-alternatives.mjs [--runs 3] [--upgrades 20] [--clients 500] [--gap 500] [--only handover,restart,pm2]
// The clients (bench/lib/ws-load.mjs ReconnectingWsClient, the npm `ws` client) each send a numbered
// message every 50 ms; a client whose connection closes counts the close and the messages whose
// echo never came (lost), and reconnects 100 ms later, as users' clients do. Per cell: closes (per
// upgrade), reconnects, lost and unsent messages, time offline. Writes bench/results/ws.json;
// bench/report.mjs renders it into docs/benchmarks.md. (bench/ws-upgrades.mjs checks handover's
// promise in depth: ticks, broadcasts, the same TCP connections.)
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { NoiseMeter, Processes, freePorts, machine, median, nowMs, root, saveResult, sleep, waitQuiet } from './lib/machine.mjs';
import { toolVersions, variants } from './lib/variants.mjs';
import { ReconnectingWsClient, openClients } from './lib/ws-load.mjs';

const { values } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    upgrades: { type: 'string', default: '20' },
    clients: { type: 'string', default: '500' },
    gap: { type: 'string', default: '500' },
    only: { type: 'string', default: 'handover,restart,pm2' },
  },
});
const runs = Number(values.runs);
const upgrades = Number(values.upgrades);
const count = Number(values.clients);
const gapMs = Number(values.gap);
const say = (line) => process.stdout.write(`${line}\n`);
const work = fs.mkdtempSync('/tmp/handover-bench-ws-');
const example = path.join(root, 'examples', 'ws-server.mjs');
const plainApp = path.join(root, 'bench', 'lib', 'ws-app.mjs');

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
  let clients = [];
  try {
    const [port] = await freePorts(1);
    await variant.start(port);
    clients = await openClients(`ws://127.0.0.1:${port}/ws`, count, { reconnectMs: 100 }, 50, ReconnectingWsClient);
    for (const c of clients) c.start();
    const t0 = nowMs();
    await sleep(2000);
    for (let i = 0; i < upgrades; i++) {
      const from = nowMs();
      await variant.upgrade();
      marks.push([from, nowMs()]);
      await sleep(gapMs);
    }
    await sleep(1500);
    for (const c of clients) c.stop();
    // The last echoes are on their way, and clients offline are reconnecting: wait for both (5 s at most).
    const settled = () => clients.every((c) => c.isOpen && c.allEchoed);
    for (const deadline = nowMs() + 5000; !settled() && nowMs() < deadline; ) await sleep(50);
    const result = analyse(clients, marks, t0);
    result.noiseCores = noise.stop();
    return result;
  } finally {
    noise.stop();
    for (const c of clients) c.close();
    try {
      await variant.stop?.();
    } catch (err) {
      say(`  stop: ${err.message}`);
    }
    await procs.cleanup();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function analyse(clients, marks, t0) {
  const sum = (pick) => clients.reduce((total, c) => total + pick(c), 0);
  const errors = {};
  for (const c of clients) for (const [k, n] of Object.entries(c.errors)) errors[k] = (errors[k] ?? 0) + n;
  const closeCodes = {};
  for (const c of clients) for (const code of c.closes) closeCodes[code] = (closeCodes[code] ?? 0) + 1;
  const problems = [];
  clients.forEach((c, i) => {
    for (const p of c.problems) if (problems.length < 20) problems.push(`client ${i}: ${p}`);
  });
  const closes = sum((c) => c.closes.length);
  const offline = clients.filter((c) => c.closes.length > 0).map((c) => c.offlineMs / c.closes.length);
  const upgradeMs = marks.map(([from, to]) => to - from);
  return {
    clients: clients.length,
    sent: sum((c) => c.sent),
    echoed: sum((c) => c.echoed),
    lost: sum((c) => c.lost + c.inFlight.size),
    unsent: sum((c) => c.unsent),
    closes,
    closesPerUpgrade: closes / marks.length,
    closeCodes,
    reconnects: sum((c) => c.reconnects),
    failedConnects: sum((c) => c.failedConnects),
    errors,
    stillOffline: clients.filter((c) => !c.isOpen).length,
    offlineMsPerClose: offline.length ? median(offline) : 0,
    problems,
    upgrades: marks.length,
    upgradeMs: { median: median(upgradeMs), max: Math.max(...upgradeMs) },
    durationS: (marks.at(-1)[1] - t0 + 1500) / 1000,
  };
}

const order = values.only.split(',');
const wsVersion = JSON.parse(fs.readFileSync(path.join(root, 'node_modules', 'ws', 'package.json'), 'utf8')).version;
const result = { bench: 'ws', machine: { ...machine(), ...toolVersions({}), ws: wsVersion }, runs, upgrades, clients: count, gapMs, everyMs: 50, reconnectMs: 100, quietBefore: await waitQuiet(0.3, 20_000), cells: [] };
try {
  for (let run = 0; run < runs; run++) {
    const rotated = order.slice(run % order.length).concat(order.slice(0, run % order.length));
    for (const name of rotated) {
      say(`run ${run + 1}/${runs} ws ${name}…`);
      try {
        const r = await cell(name);
        say(
          `  ${r.closes} closes (${r.closesPerUpgrade.toFixed(1)} per upgrade, codes ${JSON.stringify(r.closeCodes)}), ${r.reconnects} reconnects (${r.failedConnects} refused attempts), ` +
            `${r.lost} messages lost, ${r.unsent} unsent while offline, of ${r.sent} sent; offline ${r.offlineMsPerClose.toFixed(0)} ms per close; upgrade ${r.upgradeMs.median.toFixed(0)} ms; noise ${r.noiseCores.toFixed(2)} cores` +
            (r.problems.length ? `\n  problems: ${r.problems.slice(0, 5).join('; ')}` : ''),
        );
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
say(`wrote ${saveResult('ws', result)}`);
