// UDP listeners (dgram) are inherited like TCP ones: the successor receives on the very same kernel
// socket. A UDP echo keeps answering through upgrades with no datagram lost: a client keeps 8
// datagrams in flight through 3 upgrades and gets every echo, from every generation. Run on every
// Node of the matrix (Node 26 hides dgram's handle: the fd is found another way, src/datagram.ts).
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
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

test(`a UDP echo answers every datagram through 3 upgrades (${WINDOW} in flight)`, { timeout: 60_000 }, async () => {
  server = await startExample('udp-echo-server.mjs');
  client = dgram.createSocket('udp4');
  await new Promise((resolve) => client.bind(0, '127.0.0.1', resolve));
  const pending = new Map(); // sequence number -> time sent
  const answeredBy = new Map(); // pid -> echoes
  const duplicates = [];
  let next = 0;
  let sending = true;
  let lost = [];
  const send = () => {
    const seq = next++;
    pending.set(seq, Date.now());
    client.send(`seq ${seq}`, server.port, '127.0.0.1');
  };
  let drained;
  const allAnswered = new Promise((resolve) => (drained = resolve));
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
  const pids = await upgradeTimes(server.group, 'udp-echo-server', server.pid, 3);
  await new Promise((resolve) => setTimeout(resolve, 300));
  sending = false;
  if (pending.size > 0) await allAnswered;
  clearInterval(watchdog);
  const summary = `${next} sent; answered by ${[...answeredBy].map(([pid, n]) => `${pid}:${n}`).join(' ')}`;
  console.log(summary);
  assert.deepEqual(lost, [], `lost datagrams: ${lost.join(' ')}; ${summary}`);
  assert.equal(pending.size, 0, summary);
  assert.deepEqual(duplicates, [], summary);
  for (const pid of pids) assert.ok(answeredBy.get(pid) > 0, `pid ${pid} never answered; ${summary}`);
  const reports = retirements(server.group, 'udp-echo-server');
  for (const pid of pids.slice(0, -1)) assert.ok(reports.has(pid), `pid ${pid} did not retire`);
});
