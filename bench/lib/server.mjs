#!/usr/bin/env node
// The bench server: one generation of a plain node:http server that upgrades itself through the
// public API only (createUpgrader, listen, ready, upgrade, events). It prints timestamped lines on
// stdout for bench/move-connections.mjs; every timestamp is process.hrtime.bigint() in ns
// (CLOCK_MONOTONIC, the same clock in every process of the machine).
//   node bench/lib/server.mjs --port P --dir D
// Lines: `ready pid=N port=P gen=first|successor t=NS ready_called=NS`,
//        `retiring pid=N successor=N t=NS`, `retired pid=N closed=C moved=M remaining=R timed_out=B t=NS`,
//        `marks pid=N {json}` (control-channel messages, see below), `adopted pid=N {json}`.
//
// Instrumentation without touching src/: the addon object is a plain, writable object shared by
// every FdChannel, so wrapping its sendmsg/recvmsg gives the exact time each control message
// (READY, READY_ACK, CONN, CONN_ACK, BYE) left or arrived. Chunk layout (src/channel.ts): a
// 12-byte header (flags at byte 3, bit 1 = first chunk), then the message; byte 0 of the message
// is its type (src/protocol.ts).
import http from 'node:http';
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { createUpgrader } from 'handover';

const require = createRequire(import.meta.url);
const now = () => process.hrtime.bigint();
const say = (line) => process.stdout.write(`${line}\n`);
/** CPU time (user + system) this process used so far, in µs: less sensitive to a noisy machine than wall time. */
const cpu = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};

const { values } = parseArgs({ options: { port: { type: 'string' }, dir: { type: 'string' } } });
const TYPES = { 1: 'HELLO', 2: 'LISTENERS', 3: 'REFUSED', 4: 'READY', 5: 'READY_ACK', 6: 'CONN', 7: 'CONN_ACK', 8: 'WRITE', 9: 'WRITE_ACK', 10: 'BYE' };

/** Control-channel messages: [t_ns (string), 'send'|'recv', type, fds, CPU µs used so far]. */
const marks = [];
{
  const native = require('../../dist/native.js').binding();
  const { sendmsg, recvmsg } = native;
  native.sendmsg = function (fd, data, fds) {
    const written = sendmsg.call(this, fd, data, fds);
    if (written >= 0 && data.length > 12 && (data[3] & 1)) marks.push([String(now()), 'send', TYPES[data[12]] ?? data[12], fds.length, cpu()]);
    return written;
  };
  native.recvmsg = function (fd, buffer, maxFds) {
    const message = recvmsg.call(this, fd, buffer, maxFds);
    if (message && message.bytes > 12 && (buffer[3] & 1)) marks.push([String(now()), 'recv', TYPES[buffer[12]] ?? buffer[12], message.fds.length, cpu()]);
    return message;
  };
}

const upgrader = createUpgrader({ dir: values.dir, readyTimeout: 30_000, gracefulTimeout: 60_000 });
const body = Buffer.from(`${process.pid}\n`);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, 'x-pid': String(process.pid) });
  res.end(body);
});
// Idle connections must survive the whole bench (the default keep-alive timeout is 5 s).
server.keepAliveTimeout = 600_000;
server.headersTimeout = 610_000;
server.requestTimeout = 0;

// Every 'connection' in a successor comes from the predecessor (the clients connect before the
// upgrade): record them in runs, one run per turn of the event loop (= one adopted CONN batch).
// A run ends when the loop gets to its check phase (after every connection of the batch was
// emitted and set reading). Kept cheap: one increment per connection.
const runs = [];
let run;
let connections = 0;
const endRun = () => {
  run.end = now();
  if (gen === "successor") run.cpu = cpu();
  run = undefined;
};
server.on('connection', () => {
  connections++;
  if (run) {
    run.count++;
    return;
  }
  run = { start: now(), end: 0n, count: 1 };
  runs.push(run);
  setImmediate(endRun);
});

await upgrader.inheritListeners();
const gen = upgrader.hasPredecessor ? 'successor' : 'first';
await upgrader.listen(server, { port: Number(values.port), host: '127.0.0.1' });
const readyCalled = now();
const readyCpu = cpu();
await upgrader.ready();
say(`ready pid=${process.pid} port=${server.address().port} gen=${gen} t=${now()} ready_called=${readyCalled} cpu=${readyCpu}`);
// (No reset here: the first adopted batch may already have been emitted before ready() resolved;
// no client connects between listen() and READY in this bench, so everything counted is adopted.)

const printAdopted = () => {
  say(`adopted pid=${process.pid} ${JSON.stringify({ connections, runs: runs.map((r) => [String(r.start), String(r.end), r.count, r.cpu]) })}`);
  say(`marks pid=${process.pid} ${JSON.stringify(marks)}`);
};

upgrader.on('predecessorRetired', ({ clean }) => {
  say(`predecessor-retired pid=${process.pid} clean=${clean} t=${now()} cpu=${cpu()}`);
  // Connections acknowledged last may still be parked (the successor starts idle ones in slices
  // once CONN frames stopped for a while): report once no connection arrived for 300 ms.
  const since = now();
  const settle = () => {
    const last = runs.length > 0 ? runs[runs.length - 1].end : 0n;
    const quietSince = last > since ? last : since;
    if (run || now() - quietSince < 300_000_000n) setTimeout(settle, 20);
    else printAdopted();
  };
  settle();
});
upgrader.on('retiring', ({ successorPid }) => say(`retiring pid=${process.pid} successor=${successorPid} t=${now()} cpu=${cpu()}`));
upgrader.on('retired', (report) => {
  const t = now();
  say(`retired pid=${process.pid} closed=${report.closed} moved=${report.moved} remaining=${report.remaining} timed_out=${report.timedOut} t=${t} cpu=${cpu()}`);
  say(`marks pid=${process.pid} ${JSON.stringify(marks)}`);
  process.exit(0);
});
upgrader.on('warning', (err) => say(`warning pid=${process.pid} code=${err.code} ${JSON.stringify(err.message)}`));
upgrader.on('rollback', ({ reason }) => say(`rollback pid=${process.pid} ${JSON.stringify(reason)}`));
upgrader.on('upgradeFailed', (err) => say(`upgrade-failed pid=${process.pid} code=${err.code} ${JSON.stringify(err.message)}`));

process.on('SIGHUP', () => {
  say(`sighup pid=${process.pid} t=${now()}`);
  upgrader.upgrade().catch(() => undefined); // failures arrive as 'upgradeFailed'
});
// SIGTERM: leave through process.exit so that --cpu-prof writes its profile.
process.on('SIGTERM', () => {
  upgrader.stop();
  process.exit(0);
});
