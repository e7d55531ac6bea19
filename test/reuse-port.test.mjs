// Every core: four copies of the example HTTP server, each its own generation with its own dir,
// serve one port through SO_REUSEPORT (Node >= 22.12), and are upgraded one at a time, round after
// round, under wrk keep-alive. Each worker's socket passes to its own successor, so the kernel's
// reuseport group keeps every member: no failed request, and every connection moves (none is
// closed for the client to reconnect). On an older Node, `reusePort` is refused with a clear error.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { Sandbox, get, root } from './helpers.mjs';
import { runWrk } from './wrk.mjs';
import { retirement, serving, upgrade } from './rolling.mjs';

const require = createRequire(import.meta.url);
const { reusePortSupported } = require('../dist/listeners.js');

const WORKERS = 4;
const ROUNDS = 5;
const CONNECTIONS = 32;
const example = path.join(root, 'examples', 'http-server.mjs');

const sandbox = new Sandbox();
let stopLoad = () => {};
after(async () => {
  stopLoad();
  await sandbox.cleanup();
});

test('reusePortSupported: Node 22.12 and 23.1 on', () => {
  assert.equal(reusePortSupported('20.20.2'), false);
  assert.equal(reusePortSupported('22.11.0'), false);
  assert.equal(reusePortSupported('22.12.0'), true);
  assert.equal(reusePortSupported('23.0.0'), false);
  assert.equal(reusePortSupported('23.1.0'), true);
  assert.equal(reusePortSupported('24.0.0'), true);
  assert.equal(reusePortSupported('26.12.1'), true);
});

if (!reusePortSupported()) {
  test(`--reuse-port on Node ${process.versions.node}: refused with ERR_HANDOVER_UNSUPPORTED_RUNTIME, nothing bound`, async () => {
    const group = sandbox.group();
    const child = group.start([example, '--port', '0', '--host', '127.0.0.1', '--dir', path.join(sandbox.dir(), 'w'), '--reuse-port']);
    const { code } = await child.exited;
    assert.equal(code, 1);
    assert.match(group.stderr.join(''), /cannot listen \(ERR_HANDOVER_UNSUPPORTED_RUNTIME\): options\.reusePort needs Node\.js 22\.12 or later/);
    assert.deepEqual(group.lines, []);
  });
} else {
  test(`${WORKERS} workers on one port, ${ROUNDS} rolling upgrades of all of them under wrk keep-alive: no failed request, every connection kept`, { timeout: 90_000 }, async () => {
    const group = sandbox.group();
    const base = sandbox.dir();
    const start = async (i, port) => {
      const since = group.lines.length;
      group.start([example, '--port', String(port), '--host', '127.0.0.1', '--dir', path.join(base, `worker-${i}`), '--reuse-port']);
      const [, pid, bound] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/, { since });
      return { pid: Number(pid), port: Number(bound) };
    };
    // The first worker picks the port; the others join its reuseport group.
    const first = await start(0, 0);
    const port = first.port;
    const workers = [first.pid];
    for (let i = 1; i < WORKERS; i++) workers.push((await start(i, port)).pid);

    const load = runWrk({ url: `http://127.0.0.1:${port}/`, connections: CONNECTIONS, threads: 2, duration: 300 });
    stopLoad = load.stop;
    await serving(port, CONNECTIONS);
    // Fresh connections too, one at a time, all through the upgrades: none refused or reset.
    let probing = true;
    let probes = 0;
    const probeFailures = [];
    const prober = (async () => {
      while (probing) {
        try {
          const { status } = await get(port);
          if (status !== 200) probeFailures.push(`status ${status}`);
        } catch (err) {
          probeFailures.push(err.code ?? err.message);
        }
        probes++;
      }
    })();

    const rounds = [];
    for (let round = 0; round < ROUNDS; round++) {
      const pending = [];
      for (let i = 0; i < WORKERS; i++) {
        const predecessor = workers[i];
        workers[i] = await upgrade(group, predecessor);
        pending.push(retirement(group, predecessor));
      }
      // Before the next round, each worker's predecessor has retired (one upgrade at a time per dir).
      rounds.push(await Promise.all(pending));
    }
    probing = false;
    await prober;
    load.stop();
    const report = await load.result;
    const summary = `wrk: ${report.requests} requests, errors connect ${report.connect} read ${report.read} write ${report.write} timeout ${report.timeout}, non-2xx ${report.non2xx}; ${probes} fresh connections, ${probeFailures.length} failed`;
    console.log(summary);
    for (const [n, retirements] of rounds.entries()) {
      console.log(`round ${n + 1}: moved ${retirements.map((r) => r.moved).join(' + ')}, closed ${retirements.map((r) => r.closed).join(' ')}, left ${retirements.map((r) => r.left).join(' ')}`);
    }
    assert.ok(report.requests > 1000, summary);
    assert.deepEqual([report.connect, report.read, report.write, report.timeout, report.non2xx], [0, 0, 0, 0, 0], `${summary}\n${report.raw}`);
    assert.deepEqual(probeFailures, []);
    for (const retirements of rounds) {
      // Every one of wrk's connections moved once per round (a worker holds the ones the kernel
      // gave it); at most one more per worker: the prober's connection, caught in flight.
      const moved = retirements.reduce((sum, r) => sum + r.moved, 0);
      assert.ok(moved >= CONNECTIONS && moved <= CONNECTIONS + WORKERS, `moved ${moved} in a round, wrk holds ${CONNECTIONS}`);
      assert.deepEqual(retirements.map((r) => r.left), Array(WORKERS).fill(0));
    }

    // All the last generation share the port: fresh connections reach every one of them.
    const served = new Set();
    for (let i = 0; i < 64; i++) served.add(Number((await get(port)).headers['x-pid']));
    assert.deepEqual([...served].sort(), [...workers].sort());
  });
}
