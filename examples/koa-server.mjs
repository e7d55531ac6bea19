#!/usr/bin/env node
// A Koa 3 server that upgrades itself with zero downtime.
//   node examples/koa-server.mjs --port P [--host H] --dir D [--reuse-port]
// Koa hands its server over as a request handler: http.createServer(app.callback()), given to
// upgrader.listen() in place of app.listen(). The rest is the contract of examples/http-server.mjs:
// `ready pid=<pid> port=<P>` on stdout when serving, SIGHUP upgrades, SIGTERM retires gracefully;
// every response is 200 with `x-pid`, GET /slow?ms=N answers after N ms.
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import Koa from 'koa';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('koa-server', {
  options: { 'reuse-port': { type: 'boolean' } },
  usage: '[--reuse-port]',
});

const app = new Koa();
app.use(async (ctx) => {
  if (ctx.path === '/slow') await sleep(Number(ctx.query.ms) || 0);
  ctx.set('x-pid', String(process.pid));
  ctx.type = 'text';
  ctx.body = `hello from ${process.pid}\n`;
});

const upgrader = createUpgrader({ dir: args.dir });
const server = http.createServer(app.callback()); // what app.listen() would create, but listening through handover
await upgrader.listen(server, { port: args.port, host: args.host, reusePort: args['reuse-port'] }).catch(cannotListen);

await serve(upgrader, { log, server });
