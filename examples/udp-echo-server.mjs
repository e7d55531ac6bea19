#!/usr/bin/env node
// A UDP echo server that upgrades itself with zero downtime: the successor receives on the very
// same kernel socket, so datagrams queued while the two generations hand over are not lost.
//   node examples/udp-echo-server.mjs --port P [--host H] --dir D
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Every datagram is answered with `<pid> <the datagram>`.
import dgram from 'node:dgram';
import { parseArgs } from 'node:util';
import { createUpgrader } from 'handover';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    dir: { type: 'string' },
  },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/udp-echo-server.mjs --port P [--host H] --dir D');
  process.exit(2);
}
const port = Number(values.port);
const log = (line) => console.error(`[udp-echo-server ${process.pid}] ${line}`);

const upgrader = createUpgrader({ dir: values.dir });

const socket = dgram.createSocket(values.host?.includes(':') ? 'udp6' : 'udp4');
socket.on('message', (message, from) => socket.send(Buffer.concat([Buffer.from(`${process.pid} `), message]), from.port, from.address));

// The same call as for a TCP server: the inherited socket (key udp:HOST:PORT), or a fresh bind.
await upgrader.listen(socket, { port, host: values.host });

process.on('SIGHUP', () => {
  upgrader.upgrade().then(
    (pid) => log(`upgraded: pid ${pid} serves now`),
    (err) => log(`upgrade failed (${err.code}): ${err.message}; still serving`),
  );
});

process.on('SIGTERM', () => {
  if (upgrader.state === 'retiring') return; // already on its way out
  log('SIGTERM: closing');
  upgrader.stop();
  socket.close(() => process.exit(0));
});

upgrader.on('upgradeFailed', (err) => log(`upgrade failed (${err.code}): ${err.message}`));
upgrader.on('rollback', ({ successorPid, reason }) => log(`successor ${successorPid} lost (${reason}); serving again`));
upgrader.on('retired', (report) => {
  log(`retired: ${report.closed} closed, ${report.moved} moved, ${report.remaining} left`);
  // The successor receives on the socket now; replies already handed to the kernel are out.
  socket.close(() => process.exit(0));
});

// Ready last: whoever reads this line may signal at once, so every handler is in place.
await upgrader.ready();
console.log(`ready pid=${process.pid} port=${socket.address().port}`);
