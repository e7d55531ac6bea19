// https keep-alive through upgrades: a TLS connection cannot move, so the retiring process answers
// each connection's next request with `Connection: close` and leaves idle ones to the server's own
// keep-alive timeout. It never closes a connection a request may be arriving on: 16 keep-alive
// clients hammering through 3 upgrades see no reset and no failed request (Node's https.Agent and
// undici; wrk over TLS with 32 connections; and HTTP/1.1 clients of an HTTP/2 server with
// allowHTTP1).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { Agent as UndiciAgent, request as undiciRequest } from 'undici';
import { ProcessGroup, fixtures, tmpDir } from './helpers.mjs';
import { load, retirements, startExample, tlsCa, upgradeTimes } from './tls-upgrades.mjs';
import { runWrk } from './wrk.mjs';

const CLIENTS = 16;
const UPGRADES = 3;
let server;
afterEach(async () => {
  await server?.group.cleanup();
  if (server) fs.rmSync(server.base, { recursive: true, force: true });
});

function httpsGet(port, agent) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', agent, ca: tlsCa }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode, pid: Number(res.headers['x-pid']) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

/** answeredBy: the pid of a 200 response, for load(); another status is a failure, counted as `status N`. */
function answeredBy({ status, pid }) {
  if (status === 200) return pid;
  throw Object.assign(new Error(`status ${status}`), { code: `status ${status}` });
}

async function throughUpgrades(send) {
  server = await startExample('https-server.mjs');
  const running = load(CLIENTS, async (i) => answeredBy(await send(i)));
  const pids = await upgradeTimes(server.group, 'https-server', server.pid, UPGRADES);
  await new Promise((resolve) => setTimeout(resolve, 300));
  await running.stop();
  console.log(`${running.tally}; answered by ${[...running.pids].join(' ')}`);
  assert.deepEqual(running.tally.failures(), [], `failed requests: ${running.tally}`);
  assert.ok(running.tally.get('ok') > 100, `${running.tally}`);
  // Every generation served, and every predecessor ended with nothing cut.
  for (const pid of pids) assert.ok(running.pids.has(pid), `pid ${pid} never answered`);
  const reports = retirements(server.group, 'https-server');
  for (const pid of pids.slice(0, -1)) assert.equal(reports.get(pid)?.remaining, 0, `pid ${pid}: ${JSON.stringify(reports.get(pid))}`);
}

test(`https.Agent keep-alive, ${CLIENTS} clients, ${UPGRADES} upgrades: no reset, no failed request`, { timeout: 60_000 }, async () => {
  const agents = Array.from({ length: CLIENTS }, () => new https.Agent({ keepAlive: true, maxSockets: 1 }));
  try {
    await throughUpgrades((i) => httpsGet(server.port, agents[i]));
  } finally {
    for (const agent of agents) agent.destroy();
  }
});

test(`undici keep-alive, ${CLIENTS} clients, ${UPGRADES} upgrades: no reset, no failed request`, { timeout: 60_000 }, async () => {
  const dispatchers = Array.from({ length: CLIENTS }, () => new UndiciAgent({ connections: 1, connect: { ca: tlsCa } }));
  try {
    await throughUpgrades(async (i) => {
      const res = await undiciRequest(`https://127.0.0.1:${server.port}/`, { dispatcher: dispatchers[i] });
      await res.body.dump();
      return { status: res.statusCode, pid: Number(res.headers['x-pid']) };
    });
  } finally {
    await Promise.all(dispatchers.map((d) => d.close()));
  }
});

test(`wrk over TLS, 32 keep-alive connections, ${UPGRADES} upgrades: no socket error`, { timeout: 60_000 }, async () => {
  server = await startExample('https-server.mjs');
  const wrk = runWrk({ url: `https://127.0.0.1:${server.port}/`, connections: 32, duration: 30 });
  try {
    await new Promise((resolve) => setTimeout(resolve, 500));
    await upgradeTimes(server.group, 'https-server', server.pid, UPGRADES);
    await new Promise((resolve) => setTimeout(resolve, 300));
  } finally {
    wrk.stop();
  }
  const report = await wrk.result;
  const summary = `wrk: ${report.requests} requests, errors connect ${report.connect} read ${report.read} write ${report.write} timeout ${report.timeout}, non-2xx ${report.non2xx}`;
  console.log(summary);
  assert.ok(report.requests > 100, summary);
  assert.deepEqual([report.connect, report.read, report.write, report.timeout, report.non2xx], [0, 0, 0, 0, 0], `${summary}\n${report.raw}`);
});

test(`an HTTP/2 server's HTTP/1.1 fallback (allowHTTP1), ${CLIENTS} https.Agent keep-alive clients, 2 upgrades: no failed request`, { timeout: 60_000 }, async () => {
  const group = new ProcessGroup();
  server = { group, base: tmpDir() };
  group.start([path.join(fixtures, 'tls-server.mjs')], { env: { HANDOVER_DIR: path.join(server.base, 'ctl'), KIND: 'http2-allow-http1' } });
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  server.port = Number(port);
  const agents = Array.from({ length: CLIENTS }, () => new https.Agent({ keepAlive: true, maxSockets: 1 }));
  const running = load(CLIENTS, async (i) => answeredBy(await httpsGet(server.port, agents[i])));
  try {
    let current = Number(firstPid);
    for (let i = 0; i < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 300));
      const since = group.lines.length;
      process.kill(current, 'SIGHUP');
      const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
      // The predecessor retires once each fallback connection closed after its next response.
      await group.waitForLine(/^retired closed=\d+ moved=0 remaining=0/, { since });
      current = Number(next);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  } finally {
    await running.stop();
    for (const agent of agents) agent.destroy();
  }
  console.log(`${running.tally}; answered by ${[...running.pids].join(' ')}`);
  assert.deepEqual(running.tally.failures(), [], `failed requests: ${running.tally}`);
  assert.equal(running.pids.size, 3);
});
