// Express 5, Fastify 5 and Koa 3 through upgrades under wrk keep-alive: each framework's example
// server (examples/<name>-server.mjs) is upgraded 10 times; no request fails and every one of
// wrk's connections moves at every upgrade (none is closed for the client to reconnect).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { Sandbox, get, root } from './helpers.mjs';
import { runWrk } from './wrk.mjs';
import { retirement, serving, upgrade } from './rolling.mjs';

const UPGRADES = 10;
const CONNECTIONS = 16;

const sandbox = new Sandbox();
const loads = [];
after(async () => {
  for (const load of loads) load.stop();
  await sandbox.cleanup();
});

for (const framework of ['express', 'fastify', 'koa']) {
  test(`${framework}: ${UPGRADES} upgrades under wrk keep-alive: no failed request, every connection moved`, { timeout: 60_000 }, async () => {
    const group = sandbox.group();
    group.start([path.join(root, 'examples', `${framework}-server.mjs`), '--port', '0', '--host', '127.0.0.1', '--dir', path.join(sandbox.dir(), 'ctl')]);
    const [, firstPid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const slow = await get(Number(port), '/slow?ms=20');
    assert.deepEqual([slow.status, slow.headers['x-pid'], slow.body], [200, firstPid, `hello from ${firstPid}\n`]);

    const load = runWrk({ url: `http://127.0.0.1:${port}/`, connections: CONNECTIONS, threads: 2, duration: 300 });
    loads.push(load);
    await serving(Number(port), CONNECTIONS);
    let current = Number(firstPid);
    const retirements = [];
    for (let i = 0; i < UPGRADES; i++) {
      const predecessor = current;
      current = await upgrade(group, predecessor);
      // The next upgrade is possible once this one's predecessor has retired.
      retirements.push(await retirement(group, predecessor));
    }
    load.stop();
    const report = await load.result;
    const summary = `${framework}: wrk ${report.requests} requests, errors connect ${report.connect} read ${report.read} write ${report.write} timeout ${report.timeout}, non-2xx ${report.non2xx}; moved per upgrade ${retirements.map((r) => r.moved).join(' ')}`;
    console.log(summary);
    assert.ok(report.requests > 1000, summary);
    assert.deepEqual([report.connect, report.read, report.write, report.timeout, report.non2xx], [0, 0, 0, 0, 0], `${summary}\n${report.raw}`);
    assert.deepEqual(retirements, Array(UPGRADES).fill({ closed: 0, moved: CONNECTIONS, left: 0 }), summary);
    assert.equal((await get(Number(port))).headers['x-pid'], String(current));
  });
}
