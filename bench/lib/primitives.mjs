#!/usr/bin/env node
// Per-connection cost of the primitives a move is made of, in one process, on real TCP sockets:
// what the successor pays per adopted connection and what the predecessor pays per moved one.
//   node bench/lib/primitives.mjs [--n 4000] [--rounds 3]
// (needs ~3n+100 fds: client, server and a dup of each server socket.)
import * as http from 'node:http';
import * as net from 'node:net';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';

const require = createRequire(import.meta.url);
const native = require('../../dist/native.js').binding();
const { values } = parseArgs({ options: { n: { type: 'string', default: '4000' }, rounds: { type: 'string', default: '3' } } });
const n = Number(values.n);
const us = (start) => Number(process.hrtime.bigint() - start) / 1000;
const tick = () => new Promise((resolve) => setImmediate(resolve));

// n real connections: accepted server-side sockets, plus the clients.
const accepted = [];
const listener = net.createServer((socket) => accepted.push(socket));
await new Promise((resolve) => listener.listen(0, '127.0.0.1', resolve));
const { port } = listener.address();
const clients = [];
for (let i = 0; i < n; i += 200) {
  const wave = [];
  for (let j = i; j < Math.min(n, i + 200); j++) {
    const client = net.connect({ port, host: '127.0.0.1' });
    clients.push(client);
    wave.push(new Promise((resolve) => client.once('connect', resolve)));
  }
  await Promise.all(wave);
}
while (accepted.length < n) await tick();
for (const socket of accepted) socket.pause();
const fds = accepted.map((socket) => socket._handle.fd);

const results = {};
const record = (name, totalUs) => {
  (results[name] ??= []).push(totalUs / n);
};

for (let round = 0; round < Number(values.rounds); round++) {
  // dup (the predecessor's copy that travels) and close.
  let start = process.hrtime.bigint();
  const dups = fds.map((fd) => native.dup(fd));
  record('dup', us(start));

  // new net.Socket({ fd }) as the adopter does (manualStart: no read yet).
  start = process.hrtime.bigint();
  const sockets = dups.map((fd) => new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: false, manualStart: true }));
  record('new net.Socket({ fd })', us(start));

  // Inject into an http.Server: 'connection' (parser, timers, connections list) and start reading.
  const server = http.createServer(() => undefined);
  server.keepAliveTimeout = 600_000;
  start = process.hrtime.bigint();
  for (const socket of sockets) server.emit('connection', socket);
  record("http server.emit('connection')", us(start));
  start = process.hrtime.bigint();
  for (const socket of sockets) socket.setTimeout(600_000);
  record('socket.setTimeout (afterAdopt)', us(start));
  start = process.hrtime.bigint();
  for (const socket of sockets) socket.resume();
  record('socket.resume (readStart)', us(start));
  await tick();

  // A uv_poll_t per fd: the price of watching an idle connection without a net.Socket.
  const extra = fds.map((fd) => native.dup(fd));
  start = process.hrtime.bigint();
  const pollers = extra.map((fd) => {
    const poller = native.createPoller(fd, () => undefined);
    poller.start(true, false);
    return poller;
  });
  record('createPoller + start (lazy adoption)', us(start));
  for (const poller of pollers) poller.close();
  for (const fd of extra) native.close(fd);

  // The predecessor's release of its copy after the ACK: destroy() (closes only this fd).
  start = process.hrtime.bigint();
  let closed = 0;
  const allClosed = new Promise((resolve) => {
    for (const socket of sockets) socket.once('close', () => ++closed === n && resolve());
  });
  for (const socket of sockets) socket.destroy();
  record('socket.destroy() (sync part)', us(start));
  await allClosed;
  record("socket.destroy() until 'close'", us(start));
  server.close();
}

for (const socket of accepted) socket.destroy();
for (const client of clients) client.destroy();
listener.close();
console.log(`per connection, µs (n=${n}, ${values.rounds} rounds: min / median):`);
for (const [name, list] of Object.entries(results)) {
  const sorted = [...list].sort((a, b) => a - b);
  console.log(`  ${name.padEnd(40)} ${sorted[0].toFixed(1).padStart(6)} / ${sorted[Math.floor(sorted.length / 2)].toFixed(1).padStart(6)}`);
}
