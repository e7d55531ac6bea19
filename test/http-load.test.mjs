// The promises under real load: wrk through 20 upgrades of the example HTTP server, with
// `Connection: close` (every request a new connection: the listener handover) and with keep-alive
// (live connections move): zero socket errors, zero non-2xx, a new pid serving at the end.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProcessGroup, get, root, tmpDir } from './helpers.mjs';
import { runWrk } from './wrk.mjs';

let group;
let base;
afterEach(async () => {
  await group?.cleanup();
  fs.rmSync(base, { recursive: true, force: true });
});

async function upgradesUnderLoad({ headers, connections, duration }) {
  group = new ProcessGroup();
  base = tmpDir();
  const dir = path.join(base, 'ctl');
  group.start([path.join(root, 'examples', 'http-server.mjs'), '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const { result } = runWrk({ url: `http://127.0.0.1:${port}/`, connections, duration, headers });
  await new Promise((resolve) => setTimeout(resolve, 500));
  let current = Number(firstPid);
  const pids = [current];
  for (let i = 0; i < 20; i++) {
    const since = group.lines.length;
    process.kill(current, 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout: 10_000 });
    current = Number(next);
    pids.push(current);
    // The next upgrade is possible once this generation's predecessor has retired.
    await new Promise((resolve) => {
      const check = () => (group.stderr.join('').includes(`[http-server ${pids.at(-2)}] retired`) ? resolve() : setTimeout(check, 10));
      check();
    });
  }
  const report = await result;
  const summary = `wrk: ${report.requests} requests, errors connect ${report.connect} read ${report.read} write ${report.write} timeout ${report.timeout}, non-2xx ${report.non2xx}`;
  console.log(summary);
  assert.ok(report.requests > 1000, summary);
  assert.deepEqual([report.connect, report.read, report.write, report.timeout, report.non2xx], [0, 0, 0, 0, 0], `${summary}\n${report.raw}`);
  assert.equal((await get(Number(port))).headers['x-pid'], String(current));
  assert.equal(new Set(pids).size, 21);
  const retirements = [...group.stderr.join('').matchAll(/retired: (\d+) closed, (\d+) moved, (\d+) left/g)].map((m) => m.slice(1).map(Number));
  assert.equal(retirements.length, 20, group.stderr.join(''));
  return retirements;
}

test('20 upgrades under wrk with Connection: close: no failed request', { timeout: 120_000 }, async () => {
  await upgradesUnderLoad({ headers: ['Connection: close'], connections: 16, duration: 14 });
});

test('20 upgrades under wrk with keep-alive: no failed request, the connections moved', { timeout: 120_000 }, async () => {
  const retirements = await upgradesUnderLoad({ headers: [], connections: 32, duration: 14 });
  const moved = retirements.map(([, movedCount]) => movedCount);
  const left = retirements.map(([, , leftCount]) => leftCount);
  console.log(`moved per upgrade: ${moved.join(' ')}`);
  // Every one of wrk's 32 connections moved at every upgrade: none was closed to make the client reconnect.
  assert.deepEqual(moved, Array(20).fill(32));
  assert.deepEqual(left, Array(20).fill(0));
});
