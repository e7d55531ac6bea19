#!/usr/bin/env node
// An Express 5 server that upgrades itself with zero downtime.
//   node examples/express-server.mjs --port P [--host H] --dir D [--reuse-port]
// Express hands its server over as a request handler: http.createServer(app), given to
// upgrader.listen() in place of app.listen(). The rest is the contract of examples/http-server.mjs:
// `ready pid=<pid> port=<P>` on stdout when serving, SIGHUP upgrades, SIGTERM retires gracefully;
// every response is 200 with `x-pid`, GET /slow?ms=N answers after N ms.
import http from 'node:http';
import { parseArgs } from 'node:util';
import express from 'express';
import { createUpgrader } from 'handover';

const { values } = parseArgs({
  options: { port: { type: 'string' }, host: { type: 'string' }, dir: { type: 'string' }, 'reuse-port': { type: 'boolean' } },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/express-server.mjs --port P [--host H] --dir D [--reuse-port]');
  process.exit(2);
}
const log = (line) => console.error(`[express-server ${process.pid}] ${line}`);

const app = express();
app.use((req, res, next) => {
  res.set('x-pid', String(process.pid));
  next();
});
app.get('/slow', (req, res) => setTimeout(() => res.type('text').send(`hello from ${process.pid}\n`), Number(req.query.ms) || 0));
app.all('/{*path}', (req, res) => res.type('text').send(`hello from ${process.pid}\n`));

const upgrader = createUpgrader({ dir: values.dir });
const server = http.createServer(app); // what app.listen() would create, but listening through handover
try {
  await upgrader.listen(server, { port: Number(values.port), host: values.host, reusePort: values['reuse-port'] });
} catch (err) {
  log(`cannot listen (${err.code}): ${err.message}`);
  process.exit(1);
}

process.on('SIGHUP', () => {
  upgrader.upgrade().then(
    (pid) => log(`upgraded: pid ${pid} serves now`),
    (err) => log(`upgrade failed (${err.code}): ${err.message}; still serving`),
  );
});
process.on('SIGTERM', async () => {
  if (upgrader.state === 'retiring') return; // already on its way out
  upgrader.stop();
  server.close();
  const report = await upgrader.waitConnectionsDone();
  log(`closed (${report.closed} connections finished, ${report.remaining} cut)`);
  process.exit(0);
});
upgrader.on('rollback', ({ successorPid, reason }) => log(`successor ${successorPid} lost (${reason}); serving again`));
upgrader.on('retired', (report) => {
  log(`retired: ${report.closed} closed, ${report.moved} moved, ${report.remaining} left`);
  process.exit(0);
});

await upgrader.ready();
console.log(`ready pid=${process.pid} port=${server.address().port}`);
