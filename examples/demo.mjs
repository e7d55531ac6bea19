#!/usr/bin/env node
// `npm start`: the two example servers upgraded 5 times under load, with a report anyone can read.
//   HTTP (examples/http-server.mjs): 16 keep-alive connections (Node's own http.Agent) and 4 clients
//   opening a new connection per request.
//   RPC (examples/rpc-server.mjs, SOFA Bolt): 4 sofa-rpc-node clients, one TCP connection each,
//   calling echo() and slow(200) without pause, so calls are in flight at every upgrade.
//   WebSocket (examples/ws-server.mjs): 8 `ws` clients, each sending a numbered message every 50 ms
//   and checking its echoes (once each, in order) and its ticks (no gap).
// Every failed request or call is counted; the pid in each answer shows who served it.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { openClients, summary } from '../bench/lib/ws-load.mjs';

const require = createRequire(import.meta.url);
const here = path.dirname(fileURLToPath(import.meta.url));
const UPGRADES = 5;
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-demo-'));
const pids = new Set();
let stopping = false;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts an example server and follows its generations (ready lines) and retirements (stderr). */
function startExample(name) {
  const child = spawn(process.execPath, [path.join(here, `${name}.mjs`), '--port', '0', '--host', '127.0.0.1', '--dir', path.join(base, name)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  pids.add(child.pid);
  const example = { generations: [], retirements: new Map(), waiters: [] };
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const match = /^ready pid=(\d+) port=(\d+)/.exec(line);
    if (!match) return;
    pids.add(Number(match[1]));
    example.generations.push({ pid: Number(match[1]), port: Number(match[2]) });
    for (const waiter of example.waiters.splice(0)) waiter();
  });
  readline.createInterface({ input: child.stderr }).on('line', (line) => {
    const moved = /^\[\S+ (\d+)\] retired: .*?(\d+) (?:keep-alive )?connections? moved|^\[\S+ (\d+)\] retired: (\d+) closed, (\d+) moved/.exec(line);
    if (!moved) return;
    const pid = Number(moved[1] ?? moved[3]);
    const count = Number(moved[2] ?? moved[5]);
    example.retirements.set(pid, count);
    for (const waiter of example.waiters.splice(0)) waiter();
  });
  example.until = async (condition) => {
    while (!condition()) await new Promise((resolve) => example.waiters.push(resolve));
  };
  return example;
}

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

// ---- HTTP load ----
const httpStats = { requests: 0, keepAlive: 0, fresh: 0, failed: 0, kinds: new Map() };
const keepAlivePorts = new Set();
function httpRequest(port, agent) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      res.resume();
      if (agent) keepAlivePorts.add(res.socket.localPort);
      res.on('end', () => {
        httpStats.requests++;
        if (res.statusCode !== 200) httpFail(`HTTP ${res.statusCode}`);
        resolve();
      });
    });
    req.on('error', (err) => {
      httpFail(err.code ?? err.message);
      resolve();
    });
  });
}
function httpFail(kind) {
  httpStats.failed++;
  httpStats.kinds.set(kind, (httpStats.kinds.get(kind) ?? 0) + 1);
}
async function httpLoop(port, agent, counter) {
  while (!stopping) {
    await httpRequest(port, agent);
    httpStats[counter]++;
  }
}

// ---- RPC load: the real sofa-rpc-node client ----
const rpcStats = { calls: 0, slow: 0, failed: 0, kinds: new Map() };
async function rpcClient(port) {
  const { RpcClient } = require('sofa-rpc-node').client;
  const quiet = () => undefined;
  const client = new RpcClient({ logger: { info: quiet, debug: quiet, warn: quiet, error: quiet } });
  const consumer = client.createConsumer({ interfaceName: 'com.example.Echo', serverHost: `127.0.0.1:${port}`, responseTimeout: 5000, retryFaultInterval: 200 });
  await consumer.ready();
  const [connection] = client.connectionManager.connections.values();
  return { client, consumer, localPort: connection._socket.localPort, connection };
}
async function rpcCall(consumer, method, args, expected) {
  rpcStats.calls++;
  try {
    const value = await consumer.invoke(method, args);
    if (value !== expected) throw new Error(`wrong answer ${value}`);
  } catch (err) {
    rpcStats.failed++;
    rpcStats.kinds.set(err.name, (rpcStats.kinds.get(err.name) ?? 0) + 1);
  }
}
async function rpcLoop(consumer, method) {
  for (let i = 0; !stopping; i++) {
    if (method === 'slow') {
      rpcStats.slow++;
      await rpcCall(consumer, 'slow', [200], 200);
    } else await rpcCall(consumer, 'echo', [`hello ${i}`], `hello ${i}`);
  }
}

const web = startExample('http-server');
const rpc = startExample('rpc-server');
const wsx = startExample('ws-server');
await web.until(() => web.generations.length >= 1);
await rpc.until(() => rpc.generations.length >= 1);
await wsx.until(() => wsx.generations.length >= 1);
const webPort = web.generations[0].port;
const rpcPort = rpc.generations[0].port;
const wsPort = wsx.generations[0].port;
console.log(`handover demo: HTTP server pid ${web.generations[0].pid} on 127.0.0.1:${webPort}, Bolt RPC server pid ${rpc.generations[0].pid} on 127.0.0.1:${rpcPort}, WebSocket server pid ${wsx.generations[0].pid} on 127.0.0.1:${wsPort}`);
console.log('load: HTTP 16 keep-alive connections + 4 clients opening a new connection per request;');
console.log('      RPC 4 sofa-rpc-node clients (one connection each) calling echo() and slow(200);');
console.log(`      WebSocket 8 ws clients sending a message every 50 ms (open http://127.0.0.1:${wsPort}/ to watch one ride along)\n`);

const keepAliveAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });
const loops = [];
for (let i = 0; i < 16; i++) loops.push(httpLoop(webPort, keepAliveAgent, 'keepAlive'));
for (let i = 0; i < 4; i++) loops.push(httpLoop(webPort, false, 'fresh'));
const rpcClients = await Promise.all([0, 1, 2, 3].map(() => rpcClient(rpcPort)));
for (const { consumer } of rpcClients) loops.push(rpcLoop(consumer, 'echo'), rpcLoop(consumer, 'slow'), rpcLoop(consumer, 'slow'));
const wsClients = await openClients(`ws://127.0.0.1:${wsPort}/ws`, 8);
const wsPorts = wsClients.map((c) => c.localPort);
for (const c of wsClients) c.start();
await sleep(1000);

for (let i = 1; i <= UPGRADES; i++) {
  const started = Date.now();
  const from = { web: web.generations.at(-1).pid, rpc: rpc.generations.at(-1).pid, ws: wsx.generations.at(-1).pid };
  process.kill(from.web, 'SIGHUP');
  process.kill(from.rpc, 'SIGHUP');
  process.kill(from.ws, 'SIGHUP');
  // Each server's retired line (stderr) and its successor's ready line (stdout) come on two pipes,
  // in either order: wait for both.
  await web.until(() => web.retirements.has(from.web) && web.generations.at(-1).pid !== from.web);
  await rpc.until(() => rpc.retirements.has(from.rpc) && rpc.generations.at(-1).pid !== from.rpc);
  await wsx.until(() => wsx.retirements.has(from.ws) && wsx.generations.at(-1).pid !== from.ws);
  const wsNow = summary(wsClients, wsPorts);
  console.log(
    `upgrade ${i}/${UPGRADES} (${Date.now() - started} ms): ` +
      `HTTP pid ${from.web} -> ${web.generations.at(-1).pid}, ${web.retirements.get(from.web)} connections moved; ` +
      `RPC pid ${from.rpc} -> ${rpc.generations.at(-1).pid}, ${rpc.retirements.get(from.rpc)} connections moved; ` +
      `WebSocket pid ${from.ws} -> ${wsx.generations.at(-1).pid}, ${wsx.retirements.get(from.ws)} moved; ` +
      `${httpStats.requests + rpcStats.calls + wsNow.echoed} requests, calls and messages so far, ${httpStats.failed + rpcStats.failed + wsNow.closes} failed`,
  );
  await sleep(1000);
}
stopping = true;
await Promise.all(loops);
keepAliveAgent.destroy();
for (const c of wsClients) c.stop();
const wsDeadline = Date.now() + 5000;
while (!wsClients.every((c) => c.allEchoed || c.closes.length > 0) && Date.now() < wsDeadline) await sleep(50);
const wsResult = summary(wsClients, wsPorts);
const lastWsPid = await wsClients[0].askPid().catch(() => 'no answer');
const rpcPortsKept = rpcClients.filter(({ connection, localPort }) => connection._socket.localPort === localPort && !connection._socket.destroyed).length;
const lastRpcPid = await rpcClients[0].consumer.invoke('pid', []);

const kinds = (map) => (map.size ? ` (${[...map].map(([k, n]) => `${k}: ${n}`).join(', ')})` : '');
console.log('\nreport');
console.log(`  upgrades:          ${UPGRADES} of each server`);
console.log(`  HTTP requests:     ${httpStats.requests} (${httpStats.keepAlive} keep-alive, ${httpStats.fresh} on new connections), failed: ${httpStats.failed}${kinds(httpStats.kinds)}`);
console.log(`  keep-alive:        the client opened ${keepAlivePorts.size} connections in all (16 means not one was dropped and reopened)`);
console.log(`  RPC calls:         ${rpcStats.calls} (${rpcStats.slow} slow ones, in flight across upgrades), failed: ${rpcStats.failed}${kinds(rpcStats.kinds)}`);
console.log(`  RPC connections:   ${rpcPortsKept} of 4 are the very same TCP connections as at the start; pid() now answers ${lastRpcPid}`);
console.log(`  WebSocket:         ${wsResult.sent} messages sent, ${wsResult.echoed} echoed (each once, in order), ${wsResult.ticks} ticks without a gap, ${wsResult.closes} closes; \`pid\` now answers ${lastWsPid}`);
if (wsResult.problems.length > 0) console.log(`  WebSocket problems: ${wsResult.problems.join('; ')}`);
for (const { client } of rpcClients) client.close();
for (const c of wsClients) c.close();
process.exit(httpStats.failed + rpcStats.failed + wsResult.problems.length === 0 ? 0 : 1);
