#!/usr/bin/env node
// Holds N idle keep-alive HTTP connections, each after one request, and checks them on command.
//   node bench/lib/hold-client.mjs --port P --n N
// stdout: `held n=N ok=K pids={...} t=NS` once every connection answered its first request;
//         on stdin `check`: one request on every connection, then `checked {json}`.
// stdin `quit` (or stdin closing) destroys every connection and exits.
import * as readline from 'node:readline';
import { parseArgs } from 'node:util';
import { Conn, histogram } from './http1.mjs';

const { values } = parseArgs({ options: { port: { type: 'string' }, n: { type: 'string' }, concurrency: { type: 'string' } } });
const port = Number(values.port);
const n = Number(values.n);
const concurrency = Number(values.concurrency ?? 200);
const now = () => process.hrtime.bigint();
const say = (line) => process.stdout.write(`${line}\n`);

const conns = [];
const closedWhileHeld = [];
let holding = false;

async function openOne() {
  const conn = new Conn(port);
  conn.onClose = (reason) => {
    if (holding) closedWhileHeld.push({ t: String(now()), reason });
  };
  await conn.connected;
  const answer = await conn.request();
  conns.push(conn);
  return answer.pid;
}

const pids = [];
let next = 0;
const failures = [];
async function worker() {
  while (next < n) {
    next++;
    try {
      pids.push(await openOne());
    } catch (err) {
      failures.push(err.message);
    }
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
holding = true;
say(`held n=${conns.length} failed=${failures.length} pids=${JSON.stringify(histogram(pids))} t=${now()}`);

async function check() {
  const start = now();
  const results = await Promise.all(
    conns.map((conn) =>
      conn.request().then(
        (answer) => ({ pid: answer.pid, status: answer.status }),
        (err) => ({ error: err.message }),
      ),
    ),
  );
  const end = now();
  const pidsAfter = histogram(results.filter((r) => r.pid).map((r) => r.pid));
  const statuses = histogram(results.filter((r) => r.status).map((r) => r.status));
  const errors = histogram(results.filter((r) => r.error).map((r) => r.error));
  const unsolicited = conns.reduce((sum, conn) => sum + (conn.unsolicited ?? 0), 0);
  say(`checked ${JSON.stringify({ n: conns.length, pids: pidsAfter, statuses, errors, unsolicited, closedWhileHeld: closedWhileHeld.length, closeReasons: histogram(closedWhileHeld.map((c) => c.reason)), firstClose: closedWhileHeld[0]?.t, ms: Number(end - start) / 1e6 })}`);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  if (line.trim() === 'check') void check();
  if (line.trim() === 'quit') quit();
});
rl.on('close', quit);
function quit() {
  holding = false;
  for (const conn of conns) conn.destroy();
  process.exit(0);
}
