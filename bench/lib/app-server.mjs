#!/usr/bin/env node
// The one app every HTTP comparison serves (bench/alternatives.mjs): 200 with `x-pid` and a short
// body. What differs is only how it takes part in an upgrade:
//   --mode handover   the library: SIGHUP upgrades (a successor takes the sockets and connections)
//   --mode plain      nothing: SIGTERM kills it (Node's default), a new one is started afterwards;
//                     also the app behind nginx and HAProxy, which stays up while they reload
//   --mode reuseport  Node ≥ 23.1's listen({ reusePort }): a new process binds the same port beside
//                     it; on SIGTERM it closes its listener and idle connections, finishes the busy
//                     ones, and exits
//   --mode pm2        under PM2's cluster mode: listens on the port PM2's master shares; on SIGINT
//                     (PM2's stop signal) closes like reuseport
//   node bench/lib/app-server.mjs --mode M --port P [--dir D]
// Prints `ready pid=<pid> port=<P>` when it serves.
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { mode: { type: 'string' }, port: { type: 'string' }, dir: { type: 'string' } } });
const mode = values.mode ?? process.env.APP_MODE ?? 'plain';
const port = Number(values.port ?? process.env.APP_PORT);
const body = Buffer.from(`hello from ${process.pid}\n`);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, 'x-pid': String(process.pid) });
  res.end(body);
});
const ready = () => console.log(`ready pid=${process.pid} port=${port}`);

/** closeGracefully: stop accepting, close idle keep-alive connections, let busy ones finish, exit. */
function closeGracefully() {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}

if (mode === 'handover') {
  const { createUpgrader } = await import('handover');
  const upgrader = createUpgrader({ dir: values.dir });
  await upgrader.listen(server, { port, host: '127.0.0.1' });
  process.on('SIGHUP', () => upgrader.upgrade().catch((err) => console.error(`upgrade failed: ${err.code} ${err.message}`)));
  upgrader.on('retired', () => process.exit(0));
  await upgrader.ready();
  ready();
} else if (mode === 'reuseport') {
  server.listen({ port, host: '127.0.0.1', reusePort: true }, ready);
  process.on('SIGTERM', closeGracefully);
} else if (mode === 'pm2') {
  server.listen(port, '127.0.0.1', ready);
  process.on('SIGINT', closeGracefully);
} else {
  server.listen(port, '127.0.0.1', ready);
}
