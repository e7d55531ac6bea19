// Connections whose state cannot move (TLS, HTTP/2) are drained at retirement: the request in
// flight is answered by the old process, then the connection ends gracefully (`Connection: close`,
// GOAWAY) and the client's next request reaches the new process. No request fails.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as https from 'node:https';
import * as path from 'node:path';
import { ProcessGroup, fixtures, tmpDir } from './helpers.mjs';

let group;
let base;
afterEach(async () => {
  await group?.cleanup();
  fs.rmSync(base, { recursive: true, force: true });
});

async function start(kind) {
  group = new ProcessGroup();
  base = tmpDir();
  group.start([path.join(fixtures, 'tls-server.mjs')], { env: { HANDOVER_DIR: path.join(base, 'ctl'), KIND: kind } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { pid: Number(pid), port: Number(port) };
}

function httpsGet(port, pathname, agent) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: pathname, agent, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, pid: Number(res.headers['x-pid']), connection: res.headers.connection, localPort: req.socket.localPort }));
    });
    req.on('error', reject);
  });
}

test('https keep-alive: the response in flight says Connection: close, the next request goes to the new process', { timeout: 30_000 }, async () => {
  const server = await start('https');
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const first = await httpsGet(server.port, '/', agent);
  assert.equal(first.pid, server.pid);
  // In flight until retirement has begun, however long the successor takes to start.
  const since = group.lines.length;
  const slow = httpsGet(server.port, '/until-retiring', agent);
  await group.waitForLine(new RegExp(`^held pid=${server.pid}$`), { since });
  process.kill(server.pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  const inFlight = await slow;
  assert.equal(inFlight.pid, server.pid, 'the old process answers what it had started');
  assert.equal(inFlight.connection, 'close');
  await group.waitForLine(/^retired closed=1 moved=0 remaining=0/, { since });
  const after = await httpsGet(server.port, '/', agent);
  assert.equal(after.pid, Number(next));
  agent.destroy();
});

for (const kind of ['http2', 'h2c']) {
test(`${kind}: the session gets GOAWAY, its stream in flight completes, a new session reaches the new process`, { timeout: 30_000 }, async () => {
  const server = await start(kind);
  const origin = `${kind === 'h2c' ? 'http' : 'https'}://127.0.0.1:${server.port}`;
  const session = http2.connect(origin, { rejectUnauthorized: false });
  session.on('error', () => undefined);
  let goaway = false;
  session.on('goaway', () => (goaway = true));
  const request = (s, pathname) =>
    new Promise((resolve, reject) => {
      const stream = s.request({ ':path': pathname });
      let headers;
      stream.on('response', (h) => (headers = h));
      stream.on('data', () => undefined);
      stream.on('end', () => resolve({ status: headers[':status'], pid: Number(headers['x-pid']) }));
      stream.on('error', reject);
      stream.end();
    });
  assert.equal((await request(session, '/')).pid, server.pid);
  // In flight until retirement has begun, however long the successor takes to start.
  const since = group.lines.length;
  const slow = request(session, '/until-retiring');
  await group.waitForLine(new RegExp(`^held pid=${server.pid}$`), { since });
  process.kill(server.pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  const inFlight = await slow;
  assert.equal(inFlight.status, 200);
  assert.equal(inFlight.pid, server.pid);
  await group.waitForLine(/^retired closed=1 moved=0 remaining=0/, { since });
  assert.equal(goaway, true, 'the client was told to go away');
  const fresh = http2.connect(origin, { rejectUnauthorized: false });
  assert.equal((await request(fresh, '/')).pid, Number(next));
  fresh.close();
  session.destroy();
});
}
