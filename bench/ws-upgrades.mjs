#!/usr/bin/env node
// WebSockets through upgrades: examples/ws-server.mjs upgraded U times while N `ws` clients each send
// a numbered message every 50 ms and check their echoes and ticks.
//   npm run bench:ws                           # 500 clients, 20 upgrades (the proof)
//   node bench/ws-upgrades.mjs --clients 100 --upgrades 5     # what test/ws.test.mjs runs
// Every 20 ms one client also sends `broadcast:b<k>`, which the example sends to every connection.
// Checked (exit code 1 and a list of problems otherwise): zero 'close' events; every broadcast
// received by every client exactly once, across the move windows too; every echo received
// exactly once and in order, and all of them by the end; ticks consecutive on every connection; the
// same TCP connections (local ports) at the end as at the start; after each upgrade, `pid` answered
// by the new pid on every connection; every retirement moved every connection (0 closed, 0 left).
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { openClients, summary } from './lib/ws-load.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const example = path.join(here, '..', 'examples', 'ws-server.mjs');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * wsUpgrades runs the example, the clients and the upgrades; resolves with the figures and the
 * problems found. Every process it started is killed (by pid) before it resolves.
 */
export async function wsUpgrades({ clients: count = 500, upgrades = 20, dwellMs = 300, broadcastEveryMs = 20, log = () => undefined } = {}) {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-ws-bench-'));
  const pids = new Set();
  const readyLines = [];
  const stderr = [];
  const waiters = [];
  const wake = () => {
    for (const waiter of waiters.splice(0)) waiter();
  };
  const until = async (condition, timeout, what) => {
    const deadline = Date.now() + timeout;
    while (!condition()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\nstderr:\n${stderr.join('').slice(-3000)}`);
      await Promise.race([new Promise((resolve) => waiters.push(resolve)), sleep(100)]);
    }
  };
  const child = spawn(process.execPath, [example, '--port', '0', '--host', '127.0.0.1', '--dir', path.join(base, 'ctl')], { stdio: ['ignore', 'pipe', 'pipe'] });
  pids.add(child.pid);
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const match = /^ready pid=(\d+) port=(\d+)/.exec(line);
    if (!match) return;
    pids.add(Number(match[1]));
    readyLines.push({ pid: Number(match[1]), port: Number(match[2]) });
    wake();
  });
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    stderr.push(`${line}\n`);
    wake();
  });
  let clients = [];
  const problems = [];
  const retirements = [];
  try {
    await until(() => readyLines.length > 0, 15_000, 'the first ready line');
    const { port } = readyLines[0];
    let pid = readyLines[0].pid;
    clients = await openClients(`ws://127.0.0.1:${port}/ws`, count);
    const startPorts = clients.map((c) => c.localPort);
    for (const c of clients) c.start();
    // Broadcasts from client to client, across every move window: each must reach every client once.
    const broadcasts = [];
    const broadcaster = setInterval(() => {
      const id = `b${broadcasts.length + 1}`;
      broadcasts.push(id);
      clients[broadcasts.length % clients.length].ws.send(`broadcast:${id}`);
    }, broadcastEveryMs);
    log(`${count} clients on pid ${pid}`);
    for (let i = 1; i <= upgrades; i++) {
      await sleep(dwellMs);
      const seen = readyLines.length;
      const old = pid;
      process.kill(old, 'SIGHUP');
      await until(() => readyLines.length > seen, 20_000, `generation ${i + 1} to be ready`);
      pid = readyLines[readyLines.length - 1].pid;
      const retired = new RegExp(`^\\[ws-server ${old}\\] retired: (\\d+) connections moved, (\\d+) closed, (\\d+) left`, 'm');
      let match = null;
      await until(() => (match = retired.exec(stderr.join(''))) !== null, 30_000, `pid ${old} to retire`);
      retirements.push({ pid: old, moved: Number(match[1]), closed: Number(match[2]), left: Number(match[3]) });
      if (Number(match[1]) !== count || Number(match[2]) !== 0 || Number(match[3]) !== 0) problems.push(`upgrade ${i}: ${match[0]}`);
      const answers = await Promise.all(clients.map((c) => c.askPid().catch((err) => err.message)));
      const wrong = answers.filter((answer) => answer !== pid).length;
      if (wrong > 0) problems.push(`upgrade ${i}: ${wrong} clients not answered by the new pid ${pid} (${[...new Set(answers.filter((a) => a !== pid))].slice(0, 3).join(', ')})`);
      log(`upgrade ${i}: pid ${old} -> ${pid}, ${match[1]} moved`);
    }
    for (const c of clients) c.stop();
    clearInterval(broadcaster);
    // The last echoes and broadcasts are on their way: every message sent gets exactly one.
    const arrived = (c) => c.closes.length > 0 || (c.allEchoed && broadcasts.every((id) => c.broadcasts.has(id)));
    await until(() => clients.every(arrived), 10_000, 'the last echoes and broadcasts').catch((err) => problems.push(err.message.split('\n')[0]));
    const result = summary(clients, startPorts, broadcasts);
    result.broadcasts = broadcasts.length;
    problems.push(...result.problems);
    for (const line of stderr.join('').split('\n')) if (/warning|failed|lost/.test(line) && problems.length < 40) problems.push(`logged: ${line}`);
    return { ...result, upgrades, pids: readyLines.map((r) => r.pid), retirements, problems };
  } finally {
    for (const c of clients) c.close();
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    fs.rmSync(base, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const { values } = parseArgs({ options: { clients: { type: 'string' }, upgrades: { type: 'string' }, 'dwell-ms': { type: 'string' } } });
  const started = Date.now();
  const result = await wsUpgrades({
    clients: Number(values.clients ?? 500),
    upgrades: Number(values.upgrades ?? 20),
    dwellMs: Number(values['dwell-ms'] ?? 300),
    log: (line) => console.log(line),
  });
  console.log(`${result.clients} clients, ${result.upgrades} upgrades in ${((Date.now() - started) / 1000).toFixed(1)} s: ${result.sent} messages sent, ${result.echoed} echoed, ${result.ticks} ticks, ${result.broadcasts} broadcasts to all, ${result.closes} closes`);
  if (result.problems.length > 0) {
    console.log(`FAILED:\n  ${result.problems.join('\n  ')}`);
    process.exit(1);
  }
  console.log('ok: no close, every echo once and in order, ticks consecutive, every broadcast once, same TCP connections, a new pid after each upgrade');
}
