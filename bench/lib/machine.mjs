// What the benches share: the machine's description, the noise (CPU used by processes the bench did
// not start), statistics, free ports, processes started and ended by pid, and the JSON results.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const resultsDir = path.join(root, 'bench', 'results');
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
export const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

/** TICK: USER_HZ, the unit of /proc's CPU times (100 on Linux). */
const TICK_MS = 10;

function readStat(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(fields[1]), cpuMs: (Number(fields[11]) + Number(fields[12])) * TICK_MS };
}

/** cpuMsOf: CPU time (user + system) a process used so far, in ms; NaN once it is gone. */
export function cpuMsOf(pid) {
  try {
    return readStat(pid).cpuMs;
  } catch {
    return NaN;
  }
}

/** rssKbOf: a process's resident set, in kB. */
export function rssKbOf(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? NaN);
}

function cmdline(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

/**
 * NoiseMeter measures the CPU used by processes this bench did not start (other sessions' tests on
 * the same cores), by sampling /proc: a process is ours when it descends from this bench or its
 * command line names one of `tags` (PM2's daemon, nginx, HAProxy: they leave our process tree), or
 * descends from such a process. Ours, once seen, stay ours. A foreign process that starts and ends
 * between two samples is missed, so the figure is a lower bound.
 */
export class NoiseMeter {
  constructor({ tags = [], intervalMs = 250 } = {}) {
    this.tags = tags;
    this.ours = new Set([process.pid]);
    this.last = new Map();
    this.foreignMs = 0;
    this.startMs = nowMs();
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
  }

  sample() {
    const stats = new Map();
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        stats.set(Number(entry), readStat(entry));
      } catch {
        // gone meanwhile
      }
    }
    // Fixed point over the parent links: descendants of ours (or of a tagged process) are ours.
    let grew = true;
    while (grew) {
      grew = false;
      for (const [pid, { ppid }] of stats) {
        if (this.ours.has(pid)) continue;
        if (this.ours.has(ppid) || (this.tags.length > 0 && this.tags.some((tag) => cmdline(pid).includes(tag)))) {
          this.ours.add(pid);
          grew = true;
        }
      }
    }
    for (const [pid, { cpuMs }] of stats) {
      const before = this.last.get(pid);
      if (!this.ours.has(pid) && before !== undefined) this.foreignMs += Math.max(0, cpuMs - before);
      this.last.set(pid, cpuMs);
    }
  }

  /** stop ends the sampling; returns the cores' worth of CPU others used meanwhile. */
  stop() {
    clearInterval(this.timer);
    this.sample();
    return this.foreignMs / (nowMs() - this.startMs);
  }
}

/** busyCores: cores' worth of CPU in use over `ms` on the whole machine (from /proc/stat). */
export async function busyCores(ms = 1000) {
  const read = () => {
    const [, ...fields] = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
    const values = fields.map(Number);
    const idle = values[3] + values[4];
    return { idle, total: values.reduce((a, b) => a + b, 0) };
  };
  const a = read();
  await sleep(ms);
  const b = read();
  return ((b.total - a.total - (b.idle - a.idle)) * TICK_MS) / ms;
}

/** waitQuiet waits (at most maxMs) until the machine runs less than `cores` of CPU; returns what it saw. */
export async function waitQuiet(cores = 0.3, maxMs = 0) {
  const deadline = nowMs() + maxMs;
  let busy = await busyCores(500);
  while (busy > cores && nowMs() < deadline) busy = await busyCores(1000);
  return busy;
}

export function median(values) {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** freePort asks the kernel for a free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** freePorts: n distinct free ports. */
export async function freePorts(n) {
  const ports = new Set();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/**
 * alive: the process exists and is not a zombie. A successor's parent is its predecessor: once that
 * exits, the exited successor waits as a zombie for init (pid 1 here) to reap it, which can take
 * seconds; it serves nothing meanwhile.
 */
export function alive(pid) {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** waitGone polls until a pid is gone (or `ms` passed); true if gone. */
export async function waitGone(pid, ms = 5000) {
  const deadline = nowMs() + ms;
  while (alive(pid) && nowMs() < deadline) await sleep(10);
  return !alive(pid);
}

/**
 * Processes: every process a bench starts (and every pid it learns of: successors, workers) is
 * ended by pid in `cleanup()`. Lines of stdout are kept and can be awaited.
 */
export class Processes {
  constructor() {
    this.pids = new Set();
    this.lines = [];
    this.waiters = [];
    this.stderr = '';
  }

  start(command, args, { env = {}, cwd = root, stdin = 'ignore' } = {}) {
    const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: [stdin, 'pipe', 'pipe'] });
    this.pids.add(child.pid);
    const lines = readline.createInterface({ input: child.stdout });
    lines.on('line', (line) => this.onLine(line));
    child.stderr.on('data', (chunk) => {
      this.stderr = (this.stderr + chunk).slice(-20_000);
    });
    return child;
  }

  onLine(line) {
    const t = nowMs();
    this.lines.push({ line, t });
    const pid = /\bpid=(\d+)/.exec(line)?.[1];
    if (pid) this.pids.add(Number(pid));
    for (const waiter of [...this.waiters]) waiter();
  }

  /** waitForLine resolves with [match, t] for the first line from index `since` matching `regex`. */
  waitForLine(regex, { since = 0, timeout = 20_000 } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = since; i < this.lines.length; i++) {
          const match = regex.exec(this.lines[i].line);
          if (match) {
            this.waiters = this.waiters.filter((w) => w !== check);
            clearTimeout(timer);
            resolve([match, this.lines[i].t]);
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== check);
        reject(new Error(`timed out waiting for ${regex}\nstderr: ${this.stderr.slice(-3000)}`));
      }, timeout);
      this.waiters.push(check);
      check();
    });
  }

  adopt(pid) {
    this.pids.add(pid);
  }

  async cleanup() {
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
    for (const pid of this.pids) {
      if (!(await waitGone(pid, 3000))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    this.pids.clear();
  }
}

/** machine describes where and with what the figures were taken. */
export function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  const version = (command, args) => {
    const result = spawnSync(command, args, { encoding: 'utf8' });
    if (result.error) return 'not installed';
    return `${result.stdout}${result.stderr}`.trim().split('\n')[0];
  };
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    // not a checkout
  }
  return {
    date: new Date().toISOString(),
    cpus: os.cpus().length,
    cpu,
    kernel: os.release(),
    node: process.version,
    commit,
    wrk: version('wrk', ['-v']),
  };
}

/** saveResult writes bench/results/NAME.json. */
export function saveResult(name, result) {
  fs.mkdirSync(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${name}.json`);
  // Two-space JSON, but a timeline point on one line (they are thousands).
  const text = JSON.stringify(result, null, 2).replace(/\{\n\s+"t": ([^,]+),\n\s+"rps": ([^,]+),\n\s+"p99": ([^\n]+)\n\s+\}/g, '{ "t": $1, "rps": $2, "p99": $3 }');
  fs.writeFileSync(file, `${text}\n`);
  return file;
}
