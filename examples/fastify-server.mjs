#!/usr/bin/env node
// A Fastify 5 server that upgrades itself with zero downtime.
//   node examples/fastify-server.mjs --port P [--host H] --dir D [--reuse-port]
// Fastify creates its http.Server itself: load the plugins with `await app.ready()`, then give
// `app.server` to upgrader.listen() in place of app.listen(). The rest is the contract of
// examples/http-server.mjs: `ready pid=<pid> port=<P>` on stdout when serving, SIGHUP upgrades,
// SIGTERM retires gracefully; every response is 200 with `x-pid`, GET /slow?ms=N answers after N ms.
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import Fastify from 'fastify';
import { createUpgrader } from 'handover';

const { values } = parseArgs({
  options: { port: { type: 'string' }, host: { type: 'string' }, dir: { type: 'string' }, 'reuse-port': { type: 'boolean' } },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/fastify-server.mjs --port P [--host H] --dir D [--reuse-port]');
  process.exit(2);
}
const log = (line) => console.error(`[fastify-server ${process.pid}] ${line}`);

const app = Fastify();
app.addHook('onRequest', async (request, reply) => {
  reply.header('x-pid', String(process.pid));
});
app.get('/slow', async (request, reply) => {
  await sleep(Number(request.query.ms) || 0);
  return reply.type('text/plain').send(`hello from ${process.pid}\n`);
});
app.all('/*', async (request, reply) => reply.type('text/plain').send(`hello from ${process.pid}\n`));

const upgrader = createUpgrader({ dir: values.dir });
await app.ready(); // plugins loaded, routes compiled: app.server answers requests from now on
try {
  await upgrader.listen(app.server, { port: Number(values.port), host: values.host, reusePort: values['reuse-port'] });
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
  await app.close(); // onClose hooks, then the server closes
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
console.log(`ready pid=${process.pid} port=${app.server.address().port}`);
