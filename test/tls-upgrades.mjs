// Shared by the TLS and HTTP/2 drain tests: an example server started in a ProcessGroup, upgraded
// N times while clients run, each upgrade waiting for the predecessor before to have retired.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProcessGroup, root, tmpDir } from './helpers.mjs';

export const tlsCa = fs.readFileSync(path.join(root, 'test', 'fixtures', 'tls-cert.pem'));

/**
 * load runs `clients` loops of back-to-back calls until stop(); `send(i)` resolves with the pid that
 * answered, or rejects (counted by its code, or its message). Returns the tally and the pids seen.
 */
export function load(clients, send) {
  const tally = new Tally();
  const pids = new Set();
  let stopped = false;
  const loops = Array.from({ length: clients }, async (_, i) => {
    while (!stopped) {
      try {
        pids.add(await send(i));
        tally.add('ok');
      } catch (err) {
        tally.add(err.code ?? err.message);
      }
    }
  });
  return {
    tally,
    pids,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

/** startExample starts examples/<name> on a free port; returns { group, base, pid, port }. */
export async function startExample(name, extraArgs = []) {
  const group = new ProcessGroup();
  const base = tmpDir();
  group.start([path.join(root, 'examples', name), '--port', '0', '--host', '127.0.0.1', '--dir', path.join(base, 'ctl'), ...extraArgs]);
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { group, base, pid: Number(pid), port: Number(port) };
}

/** retiredLines: the `retired: C closed, M moved, R left` reports on stderr, by pid. */
export function retirements(group, tag) {
  const reports = new Map();
  for (const m of group.stderr.join('').matchAll(new RegExp(`\\[${tag} (\\d+)\\] retired: (\\d+) closed, (\\d+) moved, (\\d+) left`, 'g'))) {
    reports.set(Number(m[1]), { closed: Number(m[2]), moved: Number(m[3]), remaining: Number(m[4]) });
  }
  return reports;
}

/**
 * upgradeTimes: SIGHUP the serving process `count` times; each time wait for the successor's ready
 * line, then for the predecessor's retirement (the next upgrade is possible only then). Returns
 * every pid that served, first to last.
 */
export async function upgradeTimes(group, tag, firstPid, count, { pause = 300 } = {}) {
  const pids = [firstPid];
  for (let i = 0; i < count; i++) {
    await new Promise((resolve) => setTimeout(resolve, pause));
    const since = group.lines.length;
    process.kill(pids.at(-1), 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout: 15_000 });
    pids.push(Number(next));
    await waitRetired(group, tag, pids.at(-2));
  }
  return pids;
}

export function waitRetired(group, tag, pid, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  return new Promise((resolve, reject) => {
    const check = () => {
      if (retirements(group, tag).has(pid)) resolve();
      else if (Date.now() > deadline) reject(new Error(`pid ${pid} did not retire within ${timeout} ms:\n${group.stderr.join('').slice(-3000)}`));
      else setTimeout(check, 20);
    };
    check();
  });
}

/** tally counts outcomes by name (`ok`, or an error's code). */
export class Tally {
  constructor() {
    this.counts = new Map();
  }
  add(name) {
    this.counts.set(name, (this.counts.get(name) ?? 0) + 1);
  }
  get(name) {
    return this.counts.get(name) ?? 0;
  }
  failures() {
    return [...this.counts].filter(([name]) => name !== 'ok');
  }
  toString() {
    return [...this.counts].map(([name, n]) => `${name}=${n}`).join(' ');
  }
}
