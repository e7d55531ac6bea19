// Upgrading example servers one after another, as an operator (or `handover upgrade`) does: SIGHUP
// a generation, wait for its successor's ready line, and read the predecessor's retirement report.
import * as fs from 'node:fs';
import { waitUntil } from './helpers.mjs';

/**
 * upgrade sends SIGHUP to `pid` (one of the example servers started in `group`) and resolves with
 * its successor's pid once the successor printed its ready line. Only one upgrade may run at a
 * time in a group, so the next ready line is that successor's.
 */
export async function upgrade(group, pid, { timeout = 15_000 } = {}) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout });
  return Number(next);
}

/** retirement resolves with `{ closed, moved, left }` once the example server `pid` reported its retirement. */
export async function retirement(group, pid, timeout = 35_000) {
  const pattern = new RegExp(`\\[[\\w-]+ ${pid}\\] retired: (\\d+) closed, (\\d+) moved, (\\d+) left`);
  let match;
  await waitUntil(() => (match = pattern.exec(group.stderr.join(''))), timeout, `pid ${pid} to retire`);
  const [closed, moved, left] = match.slice(1).map(Number);
  return { closed, moved, left };
}

/**
 * serving resolves once the servers on 127.0.0.1:`port` hold at least `connections` established
 * connections and have accepted every one (the accept queues of their listening sockets are
 * empty), read from /proc/net/tcp: a load generator's connections are then all the servers' own.
 */
export async function serving(port, connections, timeout = 15_000) {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  await waitUntil(() => {
    let established = 0;
    let queued = 0;
    for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const [, address, , state, queues] = line.trim().split(/\s+/);
      if (address !== local) continue;
      if (state === '01') established++; // ESTABLISHED
      if (state === '0A') queued += parseInt(queues.split(':')[1], 16); // LISTEN: rx_queue is the accept queue
    }
    return established >= connections && queued === 0;
  }, timeout, `${connections} connections accepted on port ${port}`);
}
