#!/usr/bin/env node
// The same node:http server with and without the library, for bench/cost.mjs.
//   node bench/lib/cost-server.mjs --mode plain|handover --ports P1,P2,… [--dir D]
// One listener per port (127.0.0.1; distinct ports, as the library keys listeners by address).
// Prints `ready pid=<pid> port=<P1> cpu=<µs>` once every listener serves (cpu: this process's CPU
// time so far, user + system: less sensitive to a busy machine than wall time). Every response is 200 "ok".
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { mode: { type: 'string' }, ports: { type: 'string' }, dir: { type: 'string' } },
});
const ports = (values.ports ?? '0').split(',').map(Number);
const count = ports.length;
const body = Buffer.from('ok\n');
const handler = (req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
};
const servers = Array.from({ length: count }, () => {
  const server = http.createServer(handler);
  // Idle connections stay for the RSS measurement (the default keep-alive timeout is 5 s).
  server.keepAliveTimeout = 600_000;
  server.headersTimeout = 610_000;
  server.requestTimeout = 0;
  return server;
});
const portOf = (i) => ports[i];

if (values.mode === 'handover') {
  const { createUpgrader } = await import('handover');
  const upgrader = createUpgrader({ dir: values.dir });
  for (let i = 0; i < count; i++) await upgrader.listen(servers[i], { port: portOf(i), host: '127.0.0.1' });
  await upgrader.ready();
} else {
  for (let i = 0; i < count; i++) await new Promise((resolve) => servers[i].listen(portOf(i), '127.0.0.1', resolve));
}
process.on('SIGTERM', () => process.exit(0));
const { user, system } = process.cpuUsage();
console.log(`ready pid=${process.pid} port=${servers[0].address().port} cpu=${user + system}`);
