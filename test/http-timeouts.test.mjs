// Timers of adopted HTTP connections (issue 7, defect 4): an adopted idle keep-alive connection
// is not answered 408 for staying idle, but once its client starts a request and trickles its
// headers, Node's headers timeout applies from that request's first byte, as on a fresh connection.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { Sandbox, fixtures, sleep } from './helpers.mjs';

const sandbox = new Sandbox();
afterEach(() => sandbox.cleanup());

function request(socket) {
  return new Promise((resolve, reject) => {
    let data = '';
    const onData = (chunk) => {
      data += chunk;
      const end = data.indexOf('\r\n\r\n');
      if (end < 0 || !/\r\n0\r\n\r\n$|content-length: 0/i.test(data)) return;
      socket.removeListener('data', onData);
      resolve({ status: Number(data.slice(9, 12)), pid: Number(/x-pid: (\d+)/i.exec(data)?.[1]) });
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  });
}

test('an adopted idle connection stays open past the headers timeout; once it trickles a request, it gets its 408', { timeout: 30_000 }, async () => {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir(), 'ctl');
  const headersTimeout = 800;
  const env = { HANDOVER_DIR: dir, KEEPALIVE_TIMEOUT: '5000', HEADERS_TIMEOUT: String(headersTimeout), REQUEST_TIMEOUT: '6000', CONNECTIONS_CHECKING_INTERVAL: '100' };
  group.start([path.join(fixtures, 'server.mjs')], { env });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const socket = net.connect(Number(port), '127.0.0.1');
  socket.setEncoding('latin1');
  await new Promise((resolve) => socket.once('connect', resolve));
  assert.equal((await request(socket)).pid, Number(firstPid));
  let bytes = '';
  socket.on('data', (chunk) => (bytes += chunk));
  const closed = new Promise((resolve) => socket.once('close', () => resolve(Date.now())));
  const since = group.lines.length;
  process.kill(Number(firstPid), 'SIGHUP');
  await group.waitForLine(/^ready pid=(\d+)/, { since });
  await group.waitForLine(/^retired closed=0 moved=1 remaining=0/, { since });

  // Idle on the successor for more than twice the headers timeout: nothing, not even a 408.
  await sleep(headersTimeout * 2.5);
  assert.equal(bytes, '', 'no 408 on an idle adopted keep-alive connection');

  // A request begins and its headers trickle in, never complete.
  const began = Date.now();
  socket.write('GET / HTTP/1.1\r\n');
  const trickle = setInterval(() => {
    if (!socket.destroyed) socket.write('X-Slow: 1\r\n');
  }, 100);
  try {
    const closedAt = await Promise.race([closed, sleep(5000).then(() => undefined)]);
    assert.ok(closedAt !== undefined, `no 408 within 5 s of the request's first byte (headers timeout ${headersTimeout} ms); got ${JSON.stringify(bytes)}`);
    assert.match(bytes, /^HTTP\/1\.1 408 /);
    // Node's timer starts at the request's first byte (not at the adoption, long past).
    assert.ok(closedAt - began >= headersTimeout - 50, `408 after ${closedAt - began} ms, before the headers timeout`);
  } finally {
    clearInterval(trickle);
    socket.destroy();
  }
});
