#!/usr/bin/env node
// A UDP echo server that upgrades itself with zero downtime: the successor receives on the very
// same kernel socket, so datagrams queued while the two generations hand over are not lost.
//   node examples/udp-echo-server.mjs --port P [--host H] --dir D
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Every datagram is answered with `<pid> <the datagram>`.
import dgram from 'node:dgram';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('udp-echo-server');

const upgrader = createUpgrader({ dir: args.dir });

const socket = dgram.createSocket(args.host?.includes(':') ? 'udp6' : 'udp4');
socket.on('message', (message, from) => socket.send(Buffer.concat([Buffer.from(`${process.pid} `), message]), from.port, from.address));

// The same call as for a TCP server: the inherited socket (key udp:HOST:PORT), or a fresh bind.
await upgrader.listen(socket, { port: args.port, host: args.host }).catch(cannotListen);

const close = () => new Promise((resolve) => socket.close(resolve));
await serve(upgrader, {
  log,
  server: socket,
  close,
  // The successor receives on the socket now; replies already handed to the kernel are out.
  beforeExit: close,
});
