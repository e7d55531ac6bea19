// UDP listeners (dgram) are inherited like TCP ones: the successor receives on the very same kernel
// socket. A UDP echo keeps answering through upgrades with no datagram lost: a client keeps 8
// datagrams in flight through 3 upgrades and gets every echo, from every generation. Run on every
// Node of the matrix (Node 26 hides dgram's handle: the fd is found another way, src/datagram.ts).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProcessGroup, fixtures, tmpDir } from './helpers.mjs';
import { retirements, startExample, upgradeTimes } from './tls-upgrades.mjs';

const WINDOW = 8;
/** How long an echo may take before its datagram counts as lost (never reached on a healthy run). */
const LOST_AFTER_MS = 5000;
let server;
let client;
afterEach(async () => {
  client?.close();
  client = undefined;
  await server?.group.cleanup();
  if (server) fs.rmSync(server.base, { recursive: true, force: true });
  server = undefined;
});

/**
 * echoClient keeps WINDOW datagrams in flight to `port`, sending the next when an echo arrives.
 * finish() stops sending, waits for the echoes still due (or LOST_AFTER_MS) and tells what happened.
 */
async function echoClient(port) {
  client = dgram.createSocket('udp4');
  await new Promise((resolve) => client.bind(0, '127.0.0.1', resolve));
  const pending = new Map(); // sequence number -> time sent
  const answeredBy = new Map(); // pid -> echoes
  const duplicates = [];
  let next = 0;
  let sending = true;
  let lost = [];
  let drained;
  const allAnswered = new Promise((resolve) => (drained = resolve));
  const send = () => {
    const seq = next++;
    pending.set(seq, Date.now());
    client.send(`seq ${seq}`, port, '127.0.0.1');
  };
  client.on('message', (message) => {
    const [pid, , seq] = message.toString().split(' ');
    if (!pending.delete(Number(seq))) duplicates.push(seq);
    answeredBy.set(Number(pid), (answeredBy.get(Number(pid)) ?? 0) + 1);
    if (sending) send();
    else if (pending.size === 0) drained();
  });
  const watchdog = setInterval(() => {
    lost = [...pending].filter(([, sent]) => Date.now() - sent > LOST_AFTER_MS).map(([seq]) => seq);
    if (lost.length > 0) drained();
  }, 250);
  for (let i = 0; i < WINDOW; i++) send();
  return {
    answeredBy,
    finish: async () => {
      sending = false;
      if (pending.size > 0) await allAnswered;
      clearInterval(watchdog);
      const summary = `${next} sent; answered by ${[...answeredBy].map(([pid, n]) => `${pid}:${n}`).join(' ')}`;
      console.log(summary);
      assert.deepEqual(lost, [], `lost datagrams: ${lost.join(' ')}; ${summary}`);
      assert.equal(pending.size, 0, summary);
      assert.deepEqual(duplicates, [], summary);
      return summary;
    },
  };
}

test(`a UDP echo answers every datagram through 3 upgrades (${WINDOW} in flight)`, { timeout: 60_000 }, async () => {
  server = await startExample('udp-echo-server.mjs');
  const echoes = await echoClient(server.port);
  const pids = await upgradeTimes(server.group, 'udp-echo-server', server.pid, 3);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const summary = await echoes.finish();
  for (const pid of pids) assert.ok(echoes.answeredBy.get(pid) > 0, `pid ${pid} never answered; ${summary}`);
  const reports = retirements(server.group, 'udp-echo-server');
  for (const pid of pids.slice(0, -1)) assert.ok(reports.has(pid), `pid ${pid} did not retire`);
});

test('a successor killed after READY: the predecessor receives on its UDP socket again, no datagram lost meanwhile', { timeout: 60_000 }, async () => {
  const group = new ProcessGroup();
  server = { group, base: tmpDir() };
  group.start([path.join(fixtures, 'udp-fault-server.mjs')], { env: { HANDOVER_DIR: path.join(server.base, 'ctl'), FAULT_AT: 'successor:ready-acked' } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  const echoes = await echoClient(Number(port));
  await new Promise((resolve) => setTimeout(resolve, 300));
  const since = group.lines.length;
  process.kill(Number(pid), 'SIGHUP');
  await group.waitForLine(/^rollback successor=\d+/, { since });
  const before = echoes.answeredBy.get(Number(pid));
  await new Promise((resolve) => setTimeout(resolve, 500));
  // It answers again: the datagrams queued while it had stopped receiving included.
  assert.ok(echoes.answeredBy.get(Number(pid)) > before, 'the predecessor answers again after the rollback');
  await echoes.finish(); // (the successor answered too: it received from its listen() until it died)
});
