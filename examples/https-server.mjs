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
import { parseArgs } from 'node:util';
import { createUpgrader } from 'handover';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    dir: { type: 'string' },
    cert: { type: 'string', default: new URL('../test/fixtures/tls-cert.pem', import.meta.url).pathname },
    key: { type: 'string', default: new URL('../test/fixtures/tls-key.pem', import.meta.url).pathname },
  },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/https-server.mjs --port P [--host H] --dir D [--cert C --key K]');
  process.exit(2);
}
const port = Number(values.port);
const log = (line) => console.error(`[https-server ${process.pid}] ${line}`);

const upgrader = createUpgrader({ dir: values.dir });

const server = https.createServer({ cert: fs.readFileSync(values.cert), key: fs.readFileSync(values.key) }, (req, res) => {
  const url = new URL(req.url ?? '/', 'https://localhost');
  const answer = () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-pid': String(process.pid) });
    res.end(`hello from ${process.pid}\n`);
  };
  if (url.pathname === '/slow') setTimeout(answer, Number(url.searchParams.get('ms')) || 0);
  else answer();
});

await upgrader.listen(server, { port, host: values.host });

process.on('SIGHUP', () => {
  upgrader.upgrade().then(
    (pid) => log(`upgraded: pid ${pid} serves now`),
    (err) => log(`upgrade failed (${err.code}): ${err.message}; still serving`),
  );
});

process.on('SIGTERM', async () => {
  if (upgrader.state === 'retiring') return; // already on its way out
  log('SIGTERM: closing');
  upgrader.stop();
  server.close();
  const report = await upgrader.waitConnectionsDone();
  log(`closed (${report.closed} connections finished, ${report.remaining} cut)`);
  process.exit(0);
});

upgrader.on('upgradeFailed', (err) => log(`upgrade failed (${err.code}): ${err.message}`));
upgrader.on('rollback', ({ successorPid, reason }) => log(`successor ${successorPid} lost (${reason}); serving again`));
upgrader.on('retired', (report) => {
  log(`retired: ${report.closed} closed, ${report.moved} moved, ${report.remaining} left`);
  process.exit(0);
});

// Ready last: whoever reads this line may signal at once, so every handler is in place.
await upgrader.ready();
console.log(`ready pid=${process.pid} port=${server.address().port}`);
