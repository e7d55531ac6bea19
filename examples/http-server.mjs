#!/usr/bin/env node
// A plain node:http server that upgrades itself with zero downtime.
//   node examples/http-server.mjs --port P [--host H] --dir D [--reuse-port]
// --reuse-port: N copies, each with its own --dir, serve one port (SO_REUSEPORT, Node >= 22.12).
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Every response is 200 with `x-pid`; GET /slow?ms=N answers after N ms.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { createUpgrader } from 'handover';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    dir: { type: 'string' },
    'reuse-port': { type: 'boolean' },
  },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/http-server.mjs --port P [--host H] --dir D [--reuse-port]');
  process.exit(2);
}
const port = Number(values.port);
const log = (line) => console.error(`[http-server ${process.pid}] ${line}`);

const upgrader = createUpgrader({ dir: values.dir });

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const answer = () => {
    res.writeHead(200, { 'content-type': 'text/plain', 'x-pid': String(process.pid) });
    res.end(`hello from ${process.pid}\n`);
  };
  if (url.pathname === '/slow') setTimeout(answer, Number(url.searchParams.get('ms')) || 0);
  else answer();
});

try {
  await upgrader.listen(server, { port, host: values.host, reusePort: values['reuse-port'] });
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
