#!/usr/bin/env node
// Continuous requests on C keep-alive connections, each at a fixed rate (one request in flight per
// connection): the latency other clients see while the upgrade runs.
//   node bench/lib/load-client.mjs --port P --c 16 --rate 100 --out FILE
// Every request is recorded as (sent_us, latency_us, pid, scheduled_us) with hrtime (CLOCK_MONOTONIC).
// stdout: `loading c=C t=NS` once every connection is open; on stdin `stop` it writes FILE (JSON) and
// prints `stopped requests=N errors=E`.
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { parseArgs } from 'node:util';
import { Conn } from './http1.mjs';

const { values } = parseArgs({ options: { port: { type: 'string' }, c: { type: 'string' }, rate: { type: 'string' }, out: { type: 'string' } } });
const port = Number(values.port);
const c = Number(values.c ?? 16);
const period = 1000 / Number(values.rate ?? 100); // ms between requests on one connection
const us = () => Number(process.hrtime.bigint() / 1000n);
const say = (line) => process.stdout.write(`${line}\n`);

const records = []; // flat: sent, latency, pid, scheduled
const errors = [];
let running = true;

let open = 0;
async function loop(index) {
  let conn = new Conn(port);
  await conn.connected;
  if (++open === c) say(`loading c=${c} t=${process.hrtime.bigint()}`);
  let scheduled = us();
  while (running) {
    const sent = us();
    try {
      const answer = await conn.request();
      records.push(sent, us() - sent, answer.status === 200 ? answer.pid : -answer.status, scheduled);
    } catch (err) {
      errors.push({ t: sent, conn: index, error: err.message });
      if (conn.closed) {
        conn = new Conn(port); // count the failure, then go on like a real client would
        await conn.connected.catch(() => undefined);
      }
    }
    scheduled += period * 1000;
    const wait = scheduled - us();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait / 1000));
    else scheduled = us(); // late: no catch-up burst
  }
  conn.destroy();
}

const loops = Array.from({ length: c }, (_, i) => loop(i));

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  if (line.trim() !== 'stop') return;
  running = false;
  await Promise.race([Promise.all(loops), new Promise((resolve) => setTimeout(resolve, 2000))]);
  fs.writeFileSync(values.out, JSON.stringify({ records, errors }));
  say(`stopped requests=${records.length / 4} errors=${errors.length}`);
  process.exit(0);
});
rl.on('close', () => process.exit(0));
