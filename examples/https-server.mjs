#!/usr/bin/env node
// An https server that upgrades itself with zero downtime.
//   node examples/https-server.mjs --port P [--host H] --dir D [--cert C --key K]
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Every response is 200 with `x-pid`; GET /slow?ms=N answers after N ms. Without --cert/--key it
// uses the test certificate for 127.0.0.1/localhost in test/fixtures/.
//
// A TLS connection cannot move to another process (its keys and sequence numbers live in this
// one's OpenSSL state), so at an upgrade this process drains instead: every connection's next
// response says `Connection: close` and the client's next request opens a connection to the
// successor; a connection that stays idle goes by the server's keep-alive timeout. No connection
// is closed under a request that may be on its way (see docs/http2-and-tls.md).
import fs from 'node:fs';
import https from 'node:https';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('https-server', {
  options: {
    cert: { type: 'string', default: new URL('../test/fixtures/tls-cert.pem', import.meta.url).pathname },
    key: { type: 'string', default: new URL('../test/fixtures/tls-key.pem', import.meta.url).pathname },
  },
  usage: '[--cert C --key K]',
});

const upgrader = createUpgrader({ dir: args.dir });

const server = https.createServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) }, (req, res) => {
  const url = new URL(req.url ?? '/', 'https://localhost');
  const answer = () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-pid': String(process.pid) });
    res.end(`hello from ${process.pid}\n`);
  };
  if (url.pathname === '/slow') setTimeout(answer, Number(url.searchParams.get('ms')) || 0);
  else answer();
});

await upgrader.listen(server, { port: args.port, host: args.host }).catch(cannotListen);

await serve(upgrader, { log, server });
