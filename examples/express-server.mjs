#!/usr/bin/env node
// An Express 5 server that upgrades itself with zero downtime.
//   node examples/express-server.mjs --port P [--host H] --dir D [--reuse-port]
// Express hands its server over as a request handler: http.createServer(app), given to
// upgrader.listen() in place of app.listen(). The rest is the contract of examples/http-server.mjs:
// `ready pid=<pid> port=<P>` on stdout when serving, SIGHUP upgrades, SIGTERM retires gracefully;
// every response is 200 with `x-pid`, GET /slow?ms=N answers after N ms.
import http from 'node:http';
import express from 'express';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('express-server', {
  options: { 'reuse-port': { type: 'boolean' } },
  usage: '[--reuse-port]',
});

const app = express();
app.use((req, res, next) => {
  res.set('x-pid', String(process.pid));
  next();
});
app.get('/slow', (req, res) => setTimeout(() => res.type('text').send(`hello from ${process.pid}\n`), Number(req.query.ms) || 0));
app.all('/{*path}', (req, res) => res.type('text').send(`hello from ${process.pid}\n`));

const upgrader = createUpgrader({ dir: args.dir });
const server = http.createServer(app); // what app.listen() would create, but listening through handover
await upgrader.listen(server, { port: args.port, host: args.host, reusePort: args['reuse-port'] }).catch(cannotListen);

await serve(upgrader, { log, server });
