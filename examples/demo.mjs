#!/usr/bin/env node
// `npm start`: the example HTTP server upgraded 5 times under load, with a report anyone can read.
// Load: 16 keep-alive connections (Node's own http.Agent) and 4 clients opening a new connection
// per request. Every failed request is counted; the server's pid in each answer shows who served it.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const UPGRADES = 5;
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-demo-'));
const pids = new Set();
const keepAlivePorts = new Set();
const stats = { requests: 0, keepAlive: 0, fresh: 0, errors: 0, errorKinds: new Map(), servedBy: new Map() };
let stopping = false;

const server = spawn(process.execPath, [path.join(here, 'http-server.mjs'), '--port', '0', '--host', '127.0.0.1', '--dir', path.join(base, 'ctl')], {
  stdio: ['ignore', 'pipe', 'pipe'],
});
pids.add(server.pid);
const readyLines = [];
let onReady;
readline.createInterface({ input: server.stdout }).on('line', (line) => {
  const match = /^ready pid=(\d+) port=(\d+)/.exec(line);
  if (!match) return;
  pids.add(Number(match[1]));
  readyLines.push({ pid: Number(match[1]), port: Number(match[2]) });
  onReady?.();
});
const retirements = new Map();
readline.createInterface({ input: server.stderr }).on('line', (line) => {
  const match = /^\[http-server (\d+)\] retired: (\d+) closed, (\d+) moved, (\d+) left/.exec(line);
  if (match) retirements.set(Number(match[1]), { closed: Number(match[2]), moved: Number(match[3]), left: Number(match[4]) });
});

function nextReady(count) {
  return new Promise((resolve) => {
    onReady = () => readyLines.length >= count && resolve(readyLines[count - 1]);
    onReady();
  });
}

function request(port, agent) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      res.resume();
      if (agent) keepAlivePorts.add(res.socket.localPort);
      res.on('end', () => {
        stats.requests++;
        const pid = res.headers['x-pid'];
        stats.servedBy.set(pid, (stats.servedBy.get(pid) ?? 0) + 1);
        if (res.statusCode !== 200) fail(`HTTP ${res.statusCode}`);
        resolve();
      });
    });
    req.on('error', (err) => {
      fail(err.code ?? err.message);
      resolve();
    });
  });
}

function fail(kind) {
  stats.errors++;
  stats.errorKinds.set(kind, (stats.errorKinds.get(kind) ?? 0) + 1);
}

async function loop(port, agent, counter) {
  while (!stopping) {
    await request(port, agent);
    stats[counter]++;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cleanup = () => {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  fs.rmSync(base, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const first = await nextReady(1);
console.log(`handover demo: example HTTP server pid ${first.pid} on 127.0.0.1:${first.port}`);
console.log('load: 16 keep-alive connections + 4 clients with a new connection per request\n');
const keepAliveAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const loops = [];
for (let i = 0; i < 16; i++) loops.push(loop(first.port, keepAliveAgent, 'keepAlive'));
for (let i = 0; i < 4; i++) loops.push(loop(first.port, false, 'fresh'));
await sleep(1000);

let current = first.pid;
for (let i = 1; i <= UPGRADES; i++) {
  const started = Date.now();
  process.kill(current, 'SIGHUP');
  const next = await nextReady(i + 1);
  while (!retirements.has(current)) await sleep(10);
  const retired = retirements.get(current);
  console.log(
    `upgrade ${i}/${UPGRADES}: pid ${current} -> ${next.pid} in ${Date.now() - started} ms; ` +
      `${retired.moved} keep-alive connections moved, ${retired.closed} closed; ` +
      `${stats.requests} requests so far, ${stats.errors} failed`,
  );
  current = next.pid;
  await sleep(1000);
}
stopping = true;
await Promise.all(loops);
keepAliveAgent.destroy();

console.log('\nreport');
console.log(`  requests:  ${stats.requests} (${stats.keepAlive} on keep-alive connections, ${stats.fresh} on new connections)`);
console.log(`  failed:    ${stats.errors}${stats.errors ? ` (${[...stats.errorKinds].map(([k, n]) => `${k}: ${n}`).join(', ')})` : ''}`);
console.log(`  upgrades:  ${UPGRADES}`);
console.log(`  served by: ${[...stats.servedBy].map(([pid, n]) => `pid ${pid}: ${n}`).join(', ')}`);
console.log(`  keep-alive connections opened by the client: ${keepAlivePorts.size} (16 means not one was dropped and reopened)`);
process.exit(stats.errors === 0 ? 0 : 1);
