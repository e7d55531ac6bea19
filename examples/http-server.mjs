#!/usr/bin/env node
// A plain node:http server that upgrades itself with zero downtime.
//   node examples/http-server.mjs --port P [--host H] --dir D [--reuse-port]
// --reuse-port: N copies, each with its own --dir, serve one port (SO_REUSEPORT, Node >= 22.12).
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Every response is 200 with `x-pid`; GET /slow?ms=N answers after N ms.
import http from 'node:http';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('http-server', {
  options: { 'reuse-port': { type: 'boolean' } },
  usage: '[--reuse-port]',
});

const upgrader = createUpgrader({ dir: args.dir });

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const answer = () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-pid': String(process.pid) });
    res.end(`hello from ${process.pid}\n`);
  };
  if (url.pathname === '/slow') setTimeout(answer, Number(url.searchParams.get('ms')) || 0);
  else answer();
});

await upgrader.listen(server, { port: args.port, host: args.host, reusePort: args['reuse-port'] }).catch(cannotListen);

await serve(upgrader, { log, server });
