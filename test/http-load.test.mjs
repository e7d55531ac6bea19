// The promise under real load: wrk with `Connection: close` through 20 upgrades of the example
// HTTP server: zero socket errors, zero non-2xx, and a new pid serving at the end.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProcessGroup, get, root, tmpDir } from './helpers.mjs';
import { runWrk } from './wrk.mjs';

const group = new ProcessGroup();
const base = tmpDir();
after(async () => {
  await group.cleanup();
  fs.rmSync(base, { recursive: true, force: true });
});

test('20 upgrades under wrk (Connection: close): no failed request', { timeout: 120_000 }, async () => {
  const dir = path.join(base, 'ctl');
  group.start([path.join(root, 'examples', 'http-server.mjs'), '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
  const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const { result } = runWrk({ url: `http://127.0.0.1:${port}/`, connections: 16, duration: 14, headers: ['Connection: close'] });
  await new Promise((resolve) => setTimeout(resolve, 500));
  let current = Number(firstPid);
  const pids = [current];
  for (let i = 0; i < 20; i++) {
    const since = group.lines.length;
    process.kill(current, 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout: 10_000 });
    current = Number(next);
    pids.push(current);
  }
  const report = await result;
  const summary = `wrk: ${report.requests} requests, errors connect ${report.connect} read ${report.read} write ${report.write} timeout ${report.timeout}, non-2xx ${report.non2xx}`;
  console.log(summary);
  assert.ok(report.requests > 1000, summary);
  assert.deepEqual([report.connect, report.read, report.write, report.timeout, report.non2xx], [0, 0, 0, 0, 0], `${summary}\n${report.raw}`);
  const res = await get(Number(port));
  assert.equal(res.headers['x-pid'], String(current));
  assert.notEqual(current, Number(firstPid));
  assert.equal(new Set(pids).size, 21);
});
