#!/usr/bin/env node
// Renders bench/results/{alternatives,rpc,ws,cost}.json into docs/benchmarks.md (between the
// `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` markers; the rest of the page is left as it is) and
// the timeline chart docs/benchmarks-timeline.svg (vega-lite, rendered headless).
//   node bench/report.mjs
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vega from 'vega';
import * as vl from 'vega-lite';
import { median, resultsDir, root } from './lib/machine.mjs';

const docPath = path.join(root, 'docs', 'benchmarks.md');
const chartPath = path.join(root, 'docs', 'benchmarks-timeline.svg');
const load = (name) => {
  const file = path.join(resultsDir, `${name}.json`);
  return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : undefined;
};
const alternatives = load('alternatives');
const rpc = load('rpc');
const ws = load('ws');
const cost = load('cost');

const int = (n) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '—');
const ms = (n, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '—');
const range = (values, f = int) => {
  const finite = values.filter(Number.isFinite);
  if (finite.length === 0) return '—';
  const lo = Math.min(...finite);
  const hi = Math.max(...finite);
  return lo === hi ? f(lo) : `${f(lo)}–${f(hi)}`;
};
const med = (cells, pick) => median(cells.map(pick));

const WHY = {
  handover: 'listening sockets and live connections pass to the successor (SCM_RIGHTS); nothing is closed',
  restart: 'the port is closed between the old process dying and the new one listening (connect: refused, counted by wrk as write errors, one per retry), and connections open at the kill are reset',
  pm2: 'each worker is replaced behind the cluster master; a replaced worker closes its keep-alive connections, and a request already sent on one fails (read error); no refused connects: the master keeps the port',
  reuseport: 'the old process closes its listener: connections the kernel had already queued to it (SO_REUSEPORT hashes new connections across both sockets) are reset, and its keep-alive connections are closed',
  nginx: 'old workers finish gracefully (WINCH) and close keep-alive connections after the request in progress; a request racing that close fails (read error)',
  haproxy: 'listeners pass to the new worker (expose-fd listeners); the old worker closes idle keep-alive connections on its way out, and a request racing that close fails',
};

// ---------- the chart ----------
function renderChart() {
  if (!alternatives) return undefined;
  const wanted = ['handover', 'restart', 'pm2'];
  const names = { handover: 'handover', restart: 'plain restart', pm2: 'PM2 reload' };
  const modeName = { 'keep-alive': 'keep-alive', close: 'Connection: close' };
  const points = [];
  const rules = [];
  for (const c of alternatives.cells) {
    if (c.run !== 0 || !c.timeline || !wanted.includes(c.variant)) continue;
    const row = `${modeName[c.mode]} · ${names[c.variant]}`;
    for (const p of c.timeline) {
      points.push({ row, t: p.t, metric: 'requests/s', value: p.rps });
      if (p.p99 !== null) points.push({ row, t: p.t, metric: 'p99 latency (ms)', value: p.p99 });
    }
    for (const [from] of c.marks) rules.push({ row, t: from });
  }
  const order = Object.values(modeName).flatMap((m) => wanted.map((v) => `${m} · ${names[v]}`));
  const row = { field: 'row', type: 'nominal', sort: order, title: null, header: { labelOrient: 'top', labelAnchor: 'start', labelAngle: 0, labelFontSize: 12, labelFontWeight: 'bold' } };
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: `Requests/s and p99 latency per 100 ms, ${alternatives.upgrades} upgrades each (grey rules), wrk -c${alternatives.connections}`, fontSize: 14 },
    background: 'white',
    config: { view: { stroke: '#ddd' }, axis: { labelFontSize: 10, titleFontSize: 11 } },
    hconcat: ['requests/s', 'p99 latency (ms)'].map((metric) => ({
      facet: { row },
      data: { values: [...points.filter((p) => p.metric === metric), ...rules.map((r) => ({ ...r, rule: true }))] },
      spec: {
        width: 380,
        height: 70,
        layer: [
          { transform: [{ filter: 'datum.rule' }], mark: { type: 'rule', color: '#bbb', strokeWidth: 1 }, encoding: { x: { field: 't', type: 'quantitative' } } },
          {
            transform: [{ filter: '!datum.rule' }],
            mark: { type: 'line', strokeWidth: 1, color: metric === 'requests/s' ? '#1f77b4' : '#d62728', interpolate: 'step-after' },
            encoding: {
              x: { field: 't', type: 'quantitative', title: 'seconds' },
              y: metric === 'requests/s' ? { field: 'value', type: 'quantitative', title: metric } : { field: 'value', type: 'quantitative', title: metric, scale: { type: 'symlog' } },
            },
          },
        ],
      },
      resolve: { scale: { x: 'independent' } },
    })),
  };
  return spec;
}

async function writeChart() {
  const spec = renderChart();
  if (!spec) return false;
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  fs.writeFileSync(chartPath, `${await view.toSVG()}\n`);
  await view.finalize();
  return true;
}

// ---------- the sections ----------
function machineLines(m, extra = '') {
  return `Measured ${m.date} on ${m.cpus} vCPUs (${m.cpu}), Linux ${m.kernel}, Node ${m.node}, commit ${m.commit}${extra}.`;
}

function alternativesSection() {
  if (!alternatives) return '_No results yet: run `node bench/alternatives.mjs`._';
  const a = alternatives;
  const out = [];
  out.push(
    machineLines(a.machine, `; wrk ${a.machine.wrk.replace(/ Copyright.*/, '')} (niced), PM2 ${a.machine.pm2}, ${a.machine.nginxVersion}, ${a.machine.haproxyVersion.replace(/ - http\S*$/, '')}, reusePort on Node ${a.machine.node24}`),
    '',
    `\`node bench/alternatives.mjs --runs ${a.runs} --upgrades ${a.upgrades} --connections ${a.connections}\`: per cell, the app serves under \`wrk -t${a.connections} -c${a.connections}\` (one connection per wrk thread, so that bench/lib/timeline.lua pairs each response with its request), 2 s steady, then ${a.upgrades} upgrades one after the other (${a.gapMs} ms apart, each counted from its signal until the old process is gone and the new one serves), then 1.5 s. Medians over ${a.runs} runs (ranges in brackets where runs differ). *During* = requests that overlap an upgrade; *steady* = the others. Errors are wrk's: *connect* (refused), *read* (the connection closed or reset while a response was awaited), *write* (wrk counts a failed connect on a closed port here, once per retry), *timeout* (no answer in 2 s), *non-2xx*.`,
    '',
  );
  for (const mode of ['keep-alive', 'close']) {
    const cells = a.cells.filter((c) => c.mode === mode && !c.failed);
    if (cells.length === 0) continue;
    out.push(`#### HTTP ${mode === 'close' ? '`Connection: close` (a new connection per request)' : 'keep-alive'}`, '');
    out.push('| variant | errors (all kinds) | connect / read / write / timeout / non-2xx | requests | req/s | steady p50 / p99 / max ms | during upgrades p50 / p99 / max ms | upgrade ms | noise (cores) |');
    out.push('|---|---:|---|---:|---:|---|---|---:|---:|');
    const variantsSeen = [...new Set(cells.map((c) => c.variant))];
    for (const v of variantsSeen) {
      const cs = cells.filter((c) => c.variant === v);
      const kinds = ['connect', 'read', 'write', 'timeout', 'non2xx'].map((k) => int(med(cs, (c) => c.errors[k]))).join(' / ');
      const total = med(cs, (c) => c.errorTotal);
      const bold = v === 'handover' ? '**' : '';
      out.push(
        `| ${bold}${cs[0].label}${bold} | ${bold}${int(total)}${bold} [${range(cs.map((c) => c.errorTotal))}] | ${kinds} | ${int(med(cs, (c) => c.requests))} | ${int(med(cs, (c) => c.requests / c.durationS))} | ` +
          `${ms(med(cs, (c) => c.steady.p50))} / ${ms(med(cs, (c) => c.steady.p99))} / ${ms(med(cs, (c) => c.steady.max))} | ${ms(med(cs, (c) => c.during.p50))} / ${ms(med(cs, (c) => c.during.p99))} / ${ms(med(cs, (c) => c.during.max))} | ` +
          `${int(med(cs, (c) => c.upgradeMs.median))} | ${range(cs.map((c) => c.noiseCores), (n) => n.toFixed(2))} |`,
      );
    }
    const failed = a.cells.filter((c) => c.mode === mode && c.failed);
    for (const f of failed) out.push('', `Run ${f.run + 1}, ${f.label}: the cell failed (${f.failed}).`);
    out.push('');
  }
  out.push('Why a cell is not zero:', '');
  const present = [...new Set(a.cells.map((c) => c.variant))];
  for (const v of present) {
    const cells = a.cells.filter((c) => c.variant === v && !c.failed);
    const zero = cells.length > 0 && cells.every((c) => c.errorTotal === 0);
    out.push(`- **${cells[0]?.label ?? v}**: ${zero ? 'zero errors in every run' : WHY[v] ?? ''}${zero && v !== 'handover' ? ` (${WHY[v]})` : ''}.`);
  }
  out.push('- WebSockets (handover vs restart vs PM2 reload): see [WebSockets](#websockets) below.');
  return out.join('\n');
}

function rpcSection() {
  if (!rpc) return '_No results yet: run `node bench/rpc.mjs`._';
  const out = [];
  out.push(
    machineLines(rpc.machine, `; PM2 ${rpc.machine.pm2}`),
    '',
    `\`node bench/rpc.mjs --runs ${rpc.runs} --upgrades ${rpc.upgrades}\`: ${rpc.clients} real sofa-rpc-node clients (one TCP connection each), each with a loop of \`echo\` calls and two loops of \`slow(${rpc.slowMs})\` half a call apart (a slow call is in flight on every connection at any moment), ${rpc.upgrades} upgrades per run. handover runs examples/rpc-server.mjs; restart and PM2 run the same Bolt server without the library (bench/lib/rpc-app.mjs; under PM2 it answers its calls in flight before it exits). Medians over ${rpc.runs} runs, [ranges].`,
    '',
    '| variant | failed calls [runs] | of them slow calls | errors | reconnects | echo during upgrades p99 / max ms | echo steady p99 / max ms | calls | upgrade ms | noise (cores) |',
    '|---|---:|---:|---|---:|---|---|---:|---:|---:|',
  );
  const labels = { handover: 'handover', restart: 'plain restart', pm2: 'PM2 reload (cluster, 2 workers)' };
  for (const v of [...new Set(rpc.cells.map((c) => c.variant))]) {
    // A cell that crashed has `crashed` (older results: `failed` as a message); `failed` counts failed calls.
    const cs = rpc.cells.filter((c) => c.variant === v && !c.crashed && typeof c.failed === 'number');
    if (cs.length === 0) continue;
    const errors = {};
    for (const c of cs) for (const [k, n] of Object.entries(c.errors)) errors[k] = (errors[k] ?? 0) + n;
    const bold = v === 'handover' ? '**' : '';
    out.push(
      `| ${bold}${labels[v]}${bold} | ${bold}${int(med(cs, (c) => c.failed))}${bold} [${range(cs.map((c) => c.failed))}] | ${int(med(cs, (c) => c.failedSlow))} | ${Object.entries(errors).map(([k, n]) => `${k} ×${n}`).join(', ') || '—'} | ${int(med(cs, (c) => c.reconnects))} | ` +
        `${ms(med(cs, (c) => c.echoDuring.p99))} / ${ms(med(cs, (c) => c.echoDuring.max))} | ${ms(med(cs, (c) => c.echoSteady.p99))} / ${ms(med(cs, (c) => c.echoSteady.max))} | ${int(med(cs, (c) => c.calls))} | ${int(med(cs, (c) => c.upgradeMs.median))} | ${range(cs.map((c) => c.noiseCores), (n) => n.toFixed(2))} |`,
    );
  }
  out.push('', 'Errors are summed over the runs. A failed call of a plain restart or PM2 is a call whose connection closed under it (RpcSocketCloseError) or that found no connection (RpcNoProviderError, while the port was closed); the client then reconnects. Echo latency counts answered calls only.');
  return out.join('\n');
}

function wsSection() {
  if (!ws) return '_No results yet: run `node bench/ws-alternatives.mjs`._';
  const out = [];
  out.push(
    machineLines(ws.machine, `; PM2 ${ws.machine.pm2}, ws ${ws.machine.ws ?? ''}`.replace(/, ws $/, '')),
    '',
    `\`node bench/ws-alternatives.mjs --runs ${ws.runs} --upgrades ${ws.upgrades} --clients ${ws.clients}\`: ${ws.clients} WebSocket clients (the npm \`ws\` client, bench/lib/ws-load.mjs), each sending a numbered message every ${ws.everyMs} ms and receiving a tick every 100 ms, through ${ws.upgrades} upgrades per run (${ws.gapMs} ms apart, each counted from its signal until the old process is gone and the new one serves). handover runs examples/ws-server.mjs; restart and PM2 run the same echo + tick app without the library (bench/lib/ws-app.mjs; under PM2 it closes its WebSockets with 1001 Going Away on SIGINT, then exits). A client whose connection closes does what users' clients do: it reconnects ${ws.reconnectMs} ms later (and every ${ws.reconnectMs} ms while the port refuses). *Lost*: messages sent on a connection that closed before their echo came back; *unsent*: messages the client could not send while it had no connection (one per 50 ms). Medians over ${ws.runs} runs, [ranges].`,
    '',
    '| variant | connections closed per upgrade [runs] | close codes | reconnects | refused reconnect attempts | messages lost [runs] | unsent while offline | offline per close ms | messages sent | upgrade ms | noise (cores) |',
    '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  const labels = { handover: 'handover', restart: 'plain restart', pm2: 'PM2 reload (cluster, 2 workers)' };
  for (const v of [...new Set(ws.cells.map((c) => c.variant))]) {
    const cs = ws.cells.filter((c) => c.variant === v && !c.crashed);
    if (cs.length === 0) continue;
    const codes = {};
    for (const c of cs) for (const [k, n] of Object.entries(c.closeCodes)) codes[k] = (codes[k] ?? 0) + n;
    const bold = v === 'handover' ? '**' : '';
    out.push(
      `| ${bold}${labels[v]}${bold} | ${bold}${ms(med(cs, (c) => c.closesPerUpgrade))}${bold} [${range(cs.map((c) => c.closesPerUpgrade), (n) => n.toFixed(1))}] | ${Object.entries(codes).map(([k, n]) => `${k} ×${int(n)}`).join(', ') || '—'} | ${int(med(cs, (c) => c.reconnects))} | ${int(med(cs, (c) => c.failedConnects))} | ` +
        `${bold}${int(med(cs, (c) => c.lost))}${bold} [${range(cs.map((c) => c.lost))}] | ${int(med(cs, (c) => c.unsent))} | ${int(med(cs, (c) => c.offlineMsPerClose))} | ${int(med(cs, (c) => c.sent))} | ${int(med(cs, (c) => c.upgradeMs.median))} | ${range(cs.map((c) => c.noiseCores), (n) => n.toFixed(2))} |`,
    );
  }
  for (const c of ws.cells.filter((c) => c.crashed)) out.push('', `Run ${c.run + 1}, ${labels[c.variant]}: the cell failed (${c.crashed.split('\n')[0]}).`);
  const problems = ws.cells.filter((c) => c.problems?.length);
  if (problems.length) out.push('', `Problems the clients saw: ${problems.map((c) => `run ${c.run + 1} ${labels[c.variant]}: ${c.problems.slice(0, 3).join('; ')}`).join(' · ')}.`);
  out.push('', 'Close codes are summed over the runs: 1006 = the connection dropped with no close frame (the process was killed), 1001 = Going Away (the app closed it on its way out).');
  return out.join('\n');
}

function costSection() {
  if (!cost) return '_No results yet: run `node bench/cost.mjs`._';
  const out = [];
  out.push(machineLines(cost.machine), '', `\`node bench/cost.mjs --runs ${cost.runs} --seconds ${cost.seconds}${cost.startup?.[0]?.baseline ? ` --baseline ${cost.startup[0].baseline.ref}` : ''}\` (bench/lib/cost-server.mjs: the same node:http server with and without the library, interleaved).`, '');
  const parts = cost.parts ?? {};
  const partNames = { startup: 'start-up', cpu: 'CPU per request', rss: 'RSS' };
  const partLines = Object.entries(parts).map(([part, m]) => `${partNames[part]}: ${m.date}, commit ${m.commit}, other processes ${m.noiseCores.toFixed(2)} cores on average`);
  out.push(partLines.length ? `Measured (noise = CPU of other processes during that run): ${partLines.join('; ')}.` : `Other processes used ${cost.noiseCores.toFixed(2)} cores on average during the run.`, '');
  if (cost.startup) {
    out.push('| start-up: spawn → `ready` line | plain ms | with handover ms | **cost ms** | target | CPU until ready: plain / handover ms | CPU cost ms |', '|---|---:|---:|---:|---|---|---:|');
    for (const s of cost.startup) {
      const met = s.extraMs <= 20;
      out.push(
        `| ${s.listeners} listener${s.listeners > 1 ? 's' : ''} | ${ms(s.plainMs)} | ${ms(s.handoverMs)} | **+${ms(s.extraMs)}** | ≤ 20 ms: ${met ? 'met' : `missed by ${ms(s.extraMs - 20)} ms`} | ` +
          `${ms(s.plainCpuMs)} / ${ms(s.handoverCpuMs)} | +${ms(s.extraCpuMs)} |`,
      );
      if (s.baseline) out.push(`| · the library as of ${s.baseline.ref} (${s.baseline.sha}), same run | | ${ms(s.baseline.startMs)} | +${ms(s.baseline.extraMs)} | | | +${ms(s.baseline.extraCpuMs)} |`);
    }
    out.push(
      '',
      `${cost.startup[0].pairs?.length ?? cost.startup[0].samples.plain.length} pairs per row: each pair starts the plain server and the one with handover one right after the other (which goes first rotates), through \`bash -c 'ulimit -n …; exec node …'\` for both; *cost* is the median of the pairs' differences (wall: spawn → the ready line read by the bench; CPU: the server's own \`process.cpuUsage()\` when it prints the line, V8's background threads included). Plain and handover columns: medians of each.`,
      '',
    );
  }
  if (cost.cpu) {
    out.push('| server CPU per request (wrk -t2 -c64) | plain µs | with handover µs | ratio | target |', '|---|---:|---:|---:|---|');
    for (const c of cost.cpu) {
      const met = c.ratio <= 1.02;
      out.push(`| ${c.mode} | ${ms(c.plainUs, 2)} | ${ms(c.handoverUs, 2)} | **${c.ratio.toFixed(3)}** | ≤ 1.02: ${met ? 'met' : `missed by ${((c.ratio - 1.02) * 100).toFixed(1)} points`} |`);
      if (c.baseline) out.push(`| · the library as of ${c.baseline.ref} (${c.baseline.sha}), same run | | ${ms(c.baseline.us, 2)} | ${c.baseline.ratio.toFixed(3)} | |`);
    }
    const spread = (c, m) => range(c.samples[m].map((s) => s.usPerRequest), (n) => n.toFixed(1));
    out.push('', `The server was busy ${cost.cpu.map((c) => `${ms(c.plainBusy, 2)} / ${ms(c.handoverBusy, 2)} (${c.mode}, plain / handover)`).join(' and ')} of a core during the measurements.`);
    out.push('', `Medians of ${cost.runs} interleaved ${cost.seconds}-s runs after a 1-s warm-up; per run (µs): ${cost.cpu.map((c) => `${c.mode} plain ${spread(c, 'plain')}, handover ${spread(c, 'handover')}`).join('; ')}.`, '');
  }
  if (cost.rss) {
    const r = cost.rss;
    out.push(`| RSS, ${int(r.connections)} idle keep-alive connections | plain MB | with handover MB | ratio |`, '|---|---:|---:|---:|');
    out.push(`| after one request on each | ${ms(r.plainKb / 1024)} | ${ms(r.handoverKb / 1024)} | ${r.ratio.toFixed(3)} |`);
    out.push(`| empty (before the connections) | ${ms(median(r.samples.plain.map((s) => s.emptyKb)) / 1024)} | ${ms(median(r.samples.handover.map((s) => s.emptyKb)) / 1024)} | |`);
  }
  return out.join('\n');
}

function summarySection() {
  const rows = ['| target | measured | |', '|---|---|---|'];
  if (alternatives) {
    for (const mode of ['keep-alive', 'close']) {
      const cs = alternatives.cells.filter((c) => c.variant === 'handover' && c.mode === mode && !c.failed);
      if (cs.length === 0) continue;
      const errors = cs.map((c) => c.errorTotal);
      const zero = errors.every((n) => n === 0);
      rows.push(`| HTTP ${mode}, ${alternatives.upgrades} upgrades under wrk: zero errors | ${errors.join(', ')} errors in ${cs.length} runs | ${zero ? 'met' : '**missed**'} |`);
    }
  }
  if (rpc) {
    const cs = rpc.cells.filter((c) => c.variant === 'handover' && !c.crashed && typeof c.failed === 'number');
    if (cs.length) {
      const zero = cs.every((c) => c.failed === 0 && c.reconnects === 0);
      rows.push(`| Bolt RPC, ${rpc.upgrades} upgrades, slow calls in flight: zero failed calls, zero reconnects | ${cs.map((c) => `${c.failed} / ${c.reconnects}`).join(', ')} (failed / reconnects, per run) | ${zero ? 'met' : '**missed**'} |`);
    }
  }
  if (ws) {
    const cs = ws.cells.filter((c) => c.variant === 'handover' && !c.crashed);
    if (cs.length) {
      const zero = cs.every((c) => c.closes === 0 && c.lost === 0 && c.reconnects === 0);
      rows.push(`| WebSocket, ${ws.clients} \`ws\` clients, ${ws.upgrades} upgrades: zero connections closed, zero messages lost | ${cs.map((c) => `${c.closes} / ${c.lost}`).join(', ')} (closed / lost, per run) | ${zero ? 'met' : '**missed**'} |`);
    }
  } else {
    rows.push('| WebSocket: zero connections closed, zero messages lost | not measured yet (`node bench/ws-alternatives.mjs`) | — |');
  }
  if (cost?.startup) {
    for (const st of cost.startup) {
      const wallMet = st.extraMs <= 20;
      rows.push(`| start-up with ${st.listeners} listener${st.listeners > 1 ? 's' : ''}, spawn → ready line: ≤ 20 ms over the plain server | +${ms(st.extraMs)} ms${st.baseline ? ` (before this work: +${ms(st.baseline.extraMs)} ms, same run)` : ''} | ${wallMet ? 'met' : `**missed** by ${ms(st.extraMs - 20)} ms`} |`);
    }
  }
  if (cost?.cpu) {
    for (const c of cost.cpu) {
      rows.push(`| server CPU per request, ${c.mode}: ≤ 1.02 × plain | ${c.ratio.toFixed(3)}${c.baseline ? ` (before: ${c.baseline.ratio.toFixed(3)})` : ''} | ${c.ratio <= 1.02 ? 'met' : `**missed** by ${((c.ratio - 1.02) * 100).toFixed(1)} points`} |`);
    }
  }
  return rows.join('\n');
}

function replaceSection(doc, name, body) {
  const start = `<!-- bench:${name} -->`;
  const end = `<!-- /bench:${name} -->`;
  const block = `${start}\n${body}\n${end}`;
  const i = doc.indexOf(start);
  const j = doc.indexOf(end);
  if (i >= 0 && j > i) return doc.slice(0, i) + block + doc.slice(j + end.length);
  return `${doc.trimEnd()}\n\n${block}\n`;
}

const charted = await writeChart();
let doc = fs.readFileSync(docPath, 'utf8');
doc = replaceSection(doc, 'summary', summarySection());
doc = replaceSection(doc, 'alternatives', alternativesSection());
doc = replaceSection(doc, 'chart', charted ? '![Requests/s and p99 latency per 100 ms through upgrades: handover, plain restart, PM2 reload](benchmarks-timeline.svg)' : '_No chart yet: run `node bench/alternatives.mjs`._');
doc = replaceSection(doc, 'rpc', rpcSection());
doc = replaceSection(doc, 'ws', wsSection());
doc = replaceSection(doc, 'cost', costSection());
fs.writeFileSync(docPath, doc);
console.log(`wrote ${docPath}${charted ? ` and ${chartPath}` : ''}`);
