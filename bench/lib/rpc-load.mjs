#!/usr/bin/env node
// The Bolt RPC load for bench/rpc.mjs: C real sofa-rpc-node clients (one TCP connection each), each
// with one loop of echo calls and two loops of slow(ms) calls half a call apart, so that a slow
// call is in flight on every connection at any moment. Every call is logged: start and end
// (CLOCK_MONOTONIC µs), method, ok or the error. A connection whose socket changes is a reconnect.
//   node bench/lib/rpc-load.mjs --port P [--clients 8] [--slow-ms 300] --out FILE
// Prints `loading pid=<pid>` once every client is connected; on stdin `stop`: stops, writes FILE
// (JSON), prints `stopped`, exits.
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const { RpcClient } = require('sofa-rpc-node').client;
const { values } = parseArgs({ options: { port: { type: 'string' }, clients: { type: 'string', default: '8' }, 'slow-ms': { type: 'string', default: '300' }, out: { type: 'string' } } });
const port = Number(values.port);
const slowMs = Number(values['slow-ms']);
const nowUs = () => Number(process.hrtime.bigint() / 1000n);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const calls = []; // [startUs, endUs, method, error|null]
const logger = { info() {}, debug() {}, warn() {}, error() {} };
const clients = [];
for (let i = 0; i < Number(values.clients); i++) {
  const client = new RpcClient({ logger });
  const consumer = client.createConsumer({ interfaceName: 'com.example.Echo', serverHost: `127.0.0.1:${port}`, responseTimeout: 5000, retryFaultInterval: 200 });
  await consumer.ready();
  clients.push({ client, consumer, sockets: new Set() });
}
let reconnects = 0;
const watch = setInterval(() => {
  for (const c of clients) {
    for (const connection of c.client.connectionManager.connections.values()) {
      const socket = connection._socket;
      if (socket && !c.sockets.has(socket)) {
        if (c.sockets.size > 0) reconnects++;
        c.sockets.add(socket);
      }
    }
  }
}, 20);

let running = true;
async function call(consumer, method, args, expected) {
  const start = nowUs();
  let error = null;
  try {
    const value = await consumer.invoke(method, args);
    if (value !== expected) error = `wrong answer`;
  } catch (err) {
    error = err.name === 'Error' ? err.message.slice(0, 60) : err.name;
  }
  calls.push([start, nowUs(), method, error]);
  if (error) await sleep(20); // a refused call fails at once: do not spin
}
const loops = [];
clients.forEach((c, i) => {
  loops.push((async () => {
    for (let n = 0; running; n++) await call(c.consumer, 'echo', [`c${i}-${n}`], `c${i}-${n}`);
  })());
  for (let s = 0; s < 2; s++) {
    loops.push((async () => {
      if (s === 1) await sleep(slowMs / 2);
      while (running) await call(c.consumer, 'slow', [slowMs], slowMs);
    })());
  }
});
console.log(`loading pid=${process.pid}`);

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  if (line.trim() !== 'stop') return;
  running = false;
  await Promise.all(loops);
  clearInterval(watch);
  fs.writeFileSync(values.out, JSON.stringify({ reconnects, calls }));
  console.log('stopped');
  await Promise.all(clients.map((c) => c.client.close().catch(() => undefined)));
  process.exit(0);
});
