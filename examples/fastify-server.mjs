#!/usr/bin/env node
// A Fastify 5 server that upgrades itself with zero downtime.
//   node examples/fastify-server.mjs --port P [--host H] --dir D [--reuse-port]
// Fastify creates its http.Server itself: load the plugins with `await app.ready()`, then give
// `app.server` to upgrader.listen() in place of app.listen(). The rest is the contract of
// examples/http-server.mjs: `ready pid=<pid> port=<P>` on stdout when serving, SIGHUP upgrades,
// SIGTERM retires gracefully; every response is 200 with `x-pid`, GET /slow?ms=N answers after N ms.
import { setTimeout as sleep } from 'node:timers/promises';
import Fastify from 'fastify';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('fastify-server', {
  options: { 'reuse-port': { type: 'boolean' } },
  usage: '[--reuse-port]',
});

const app = Fastify();
app.addHook('onRequest', async (request, reply) => {
  reply.header('x-pid', String(process.pid));
});
app.get('/slow', async (request, reply) => {
  await sleep(Number(request.query.ms) || 0);
  return reply.type('text/plain').send(`hello from ${process.pid}\n`);
});
app.all('/*', async (request, reply) => reply.type('text/plain').send(`hello from ${process.pid}\n`));

const upgrader = createUpgrader({ dir: args.dir });
await app.ready(); // plugins loaded, routes compiled: app.server answers requests from now on
await upgrader.listen(app.server, { port: args.port, host: args.host, reusePort: args['reuse-port'] }).catch(cannotListen);

// SIGTERM closes through Fastify: its onClose hooks run, then the server closes.
await serve(upgrader, { log, server: app.server, close: () => app.close() });
