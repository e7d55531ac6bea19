// The soak (bench/soak.mjs, `npm run soak` for 200 upgrades), short: 15 upgrades of one server that
// serves HTTP keep-alive to wrk and Bolt to sofa-rpc-node with slow calls in flight. No failed
// request or call, every connection moved at every upgrade, fds and RSS flat, no process left.
// (bench/soak.mjs says how each is measured; it checks them and returns what went wrong.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { soak } from '../bench/soak.mjs';

const UPGRADES = 15;

test(`soak: ${UPGRADES} upgrades under wrk keep-alive and sofa-rpc-node slow calls, nothing fails, leaks or grows`, { timeout: 120_000 }, async () => {
  const { summary, generations, problems } = await soak({ upgrades: UPGRADES, log: (line) => console.log(line) });
  assert.deepEqual(problems, []);
  assert.equal(generations.length, UPGRADES + 1);
  assert.equal(new Set(generations.map((g) => g.pid)).size, UPGRADES + 1, 'a new process at every upgrade');
  // The load really ran through every upgrade, slow calls included.
  assert.ok(summary.wrk.requests > 1000, `wrk: only ${summary.wrk.requests} requests`);
  assert.ok(summary.rpc.slow.ok >= UPGRADES * 4, `only ${summary.rpc.slow.ok} slow calls`);
  assert.equal(summary.fds.last, summary.fds.afterUpgrade1);
});
