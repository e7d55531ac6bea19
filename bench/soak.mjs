#!/usr/bin/env node
// Soak: N upgrades in a row of one server under mixed load, checking that nothing fails, leaks or grows.
//   npm run soak                               # 200 upgrades
//   node bench/soak.mjs --upgrades 15          # what test/soak.test.mjs runs (through soak())
// Options: --upgrades N (200), --wrk-connections C (16), --rpc-clients R (4), --slow-ms S (300),
//          --dwell-ms D (250), --warm-up W (2000), --rss-tolerance F (0.10)
// The server is test/fixtures/soak-server.mjs: the RPC example (examples/rpc-server.mjs) unchanged,
// with an HTTP server on the same upgrader. One process serving both, rather than the two examples
// side by side, because what only a soak can find is in the mix: every retirement moves wrk's
// keep-alive connections (the HTTP adapter) and the Bolt connections with slow calls in flight (the
// example's own transferConnection() with late writes) together, over one control channel, with
// two listeners; and "the serving process" whose fds and RSS must stay flat is then one process.
// Load (bench/lib/soak-load.mjs), all through every upgrade:
//   wrk, 1 thread, C keep-alive connections on GET / (counts every failed request);
//   sofa-rpc-node, R clients (one TCP connection each), each running an echo loop and two slow(S)
//   loops half a call apart, so that slow calls are in flight at every upgrade.
// Each generation is measured at the same point of its life: its predecessor has retired and exited,
// it has served alone for at least D ms and answered at least W HTTP requests (a generation measured
// before it took its share of the load, optimized code and all, shows a few MB less RSS, and how long
// that takes depends on what else runs on the machine); then a
// full GC (SIGUSR2, see the fixture), its RSS (and the kernel's anon/file split) and heap, and its fd
// count from /proc/PID/fd. Then SIGHUP. The server runs with its young generation pinned (see
// YOUNG_GENERATION), so that RSS follows what the process keeps, not where V8's sizing stands.
// Checked (exit code 1 and a list of problems otherwise):
//   wrk: 0 connect/read/write/timeout errors, 0 non-2xx; rpc: 0 failed calls, every client on the
//   very TCP connection it opened; every retirement moved all C + R connections (0 closed, 0 left);
//   retirements with calls in flight (some at least); no 'upgrade failed', rollback or warning logged;
//   the fd count of every generation (the first one too) equal to that after upgrade 1; the median
//   RSS of the last generations within F of the first generations' (a third of them, 20 at most);
//   every generation but the last exited by itself (the last is killed here, by pid).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { ProcessGroup, fdList, fixtures, sleep, tmpDir, waitUntil } from '../test/helpers.mjs';
import { startClient, startRpcLoad, startWrk } from './lib/soak-load.mjs';

const HOST = '127.0.0.1';
const server = path.join(fixtures, 'soak-server.mjs');
// The young generation pinned (1 MB semi-spaces): V8 otherwise grows it in steps with the
// allocation rate, and whether a generation's had grown when it was measured moved its RSS by 7 MB
// (on Node 24: 83 to 98 MB among generations of one soak, with the same heap).
const YOUNG_GENERATION = ['--min-semi-space-size=1', '--max-semi-space-size=1'];

/**
 * exited tells whether a process is gone or a zombie. Successors are orphaned when their
 * predecessor exits, and until pid 1 reaps them (late, or never, in some containers) they are
 * zombies: `kill(pid, 0)` still succeeds on those, though they hold nothing any more.
 */
export function exited(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z';
  } catch {
    return true;
  }
}

/**
 * ours lists the live processes whose command line names `dir`: every generation carries the
 * soak's own temp dir in its argv (--dir), a successor that never said `ready pid=N` too.
 */
function ours(dir) {
  const pids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').some((arg) => arg.startsWith(dir)) && !exited(Number(entry))) pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

const MB = (bytes) => (bytes / 1048576).toFixed(1);

/**
 * soak runs `upgrades` upgrades under load and resolves with every figure and the list of
 * `problems` (empty when every check held). Every process it starts is ended by pid before it
 * resolves or rejects.
 */
export async function soak({
  upgrades = 200,
  wrkConnections = 16,
  rpcClients = 4,
  slowMs = 300,
  dwellMs = 250,
  warmUp = 2000,
  rssTolerance = 0.1,
  log = (line) => console.log(line),
} = {}) {
  const started = Date.now();
  const base = tmpDir('handover-soak-');
  const group = new ProcessGroup();
  const clients = [];
  let wrk;
  let rpc;
  const problems = [];
  const generations = []; // { pid, fds, rss, heapUsed, ..., readyMs, retiredMs, moved, closed, left }
  const stderr = () => group.stderr.join('');
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();

  /** waitForLog waits for a line of the servers' stderr, written after the offset `from`. */
  async function waitForLog(regex, from, timeout = 20_000) {
    let match = null;
    await waitUntil(() => (match = regex.exec(stderr().slice(from))) !== null, timeout, `${regex} on the servers' stderr`).catch((err) => {
      err.message += `\nstderr:\n${stderr().slice(-4000)}`;
      throw err;
    });
    return match;
  }

  /** measure: a full GC in `pid`, then its memory (its own figures) and fds (from /proc, here). */
  async function measure(pid) {
    const since = group.lines.length;
    process.kill(pid, 'SIGUSR2');
    const [, ...figures] = await group.waitForLine(
      new RegExp(`^stats pid=${pid} rss=(\\d+) heapUsed=(\\d+) heapTotal=(\\d+) external=(\\d+) arrayBuffers=(\\d+) http=(\\d+) httpConnections=(-?\\d+)$`),
      { since },
    );
    const [rss, heapUsed, heapTotal, external, arrayBuffers, http, httpConnections] = figures.map(Number);
    const fds = fdList(pid);
    // The kernel's split of that RSS: anonymous (heap, malloc, buffers: where a leak grows) and
    // file-backed (the pages of the node binary and libraries this process touched, clean and
    // reclaimable: they come and go with page-cache pressure from everything else on the machine).
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kB = (name) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { pid, rss, rssAnon: kB('RssAnon'), rssFile: kB('RssFile'), heapUsed, heapTotal, external, arrayBuffers, http, httpConnections, fds: fds.length, fdList: fds };
  }

  /** measureWarm measures `pid` once it served for dwellMs and answered warmUp HTTP requests. */
  async function measureWarm(pid) {
    for (;;) {
      await sleep(dwellMs);
      const figures = await measure(pid);
      if (figures.http >= warmUp) return figures;
    }
  }

  const rpcFigures = () => `rpc echo ${rpc.stats.echo.ok} ok ${rpc.stats.echo.failed} failed, slow ${rpc.stats.slow.ok} ok ${rpc.stats.slow.failed} failed`;
  const describe = (g) => {
    const rssDelta = generations.length > 0 ? ` (${(((g.rss - generations[0].rss) / generations[0].rss) * 100).toFixed(1)} %)` : '';
    return `fds ${g.fds}, rss ${MB(g.rss)} MB${rssDelta} (anon ${MB(g.rssAnon)}, file ${MB(g.rssFile)}), heap ${MB(g.heapUsed)} MB, http ${g.http} requests on ${g.httpConnections} connections`;
  };

  try {
    group.start(['--expose-gc', ...YOUNG_GENERATION, server, '--port', '0', '--host', HOST, '--dir', path.join(base, 'ctl')]);
    const [, firstPid, boltPort] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/);
    const [, httpPort] = await group.waitForLine(new RegExp(`^http pid=${firstPid} port=(\\d+)$`), { since: 0 });
    let current = Number(firstPid);

    for (let i = 0; i < rpcClients; i++) clients.push(await startClient(Number(boltPort), HOST));
    rpc = startRpcLoad(clients, slowMs);
    wrk = startWrk({ url: `http://${HOST}:${httpPort}/`, connections: wrkConnections });
    // Every wrk connection accepted before the first upgrade: each retirement must move them all.
    await waitUntil(async () => (await measure(current)).httpConnections === wrkConnections, 10_000, `${wrkConnections} wrk connections`);
    const first = { ...(await measureWarm(current)), readyMs: 0, retiredMs: 0 };
    log(`generation 0: pid ${current}, ${describe(first)}; ${rpcFigures()}`);
    generations.push(first);

    for (let n = 1; n <= upgrades; n++) {
      const predecessor = current;
      const since = group.lines.length;
      // Lines of this upgrade only: a pid of an earlier generation may be used again by now.
      const logFrom = stderr().length;
      const sighup = Date.now();
      lag.reset();
      process.kill(predecessor, 'SIGHUP');
      const [, next] = await group.waitForLine(/^ready pid=(\d+) port=\d+$/, { since, timeout: 20_000 });
      current = Number(next);
      const readyMs = Date.now() - sighup;
      const [, moved, closed, left] = (await waitForLog(new RegExp(`\\[rpc-server ${predecessor}\\] retired: (\\d+) connections moved, (\\d+) closed, (\\d+) left`), logFrom)).map(Number);
      const retiredMs = Date.now() - sighup;
      // Logged by the example when retiring starts: its Bolt connections and the calls in flight on them.
      const [, boltMoving, callsInFlight] = (await waitForLog(new RegExp(`\\[rpc-server ${predecessor}\\] retiring: moving (\\d+) connections \\((\\d+) calls in flight\\)`), logFrom)).map(Number);
      await waitForLog(new RegExp(`\\[rpc-server ${current}\\] predecessor ${predecessor} retired`), logFrom);
      await waitUntil(() => exited(predecessor), 10_000, `pid ${predecessor} to exit`);
      // How late this process (the clients) ran during the upgrade: to tell a stalled client from
      // a stalled server.
      const clientLagMs = Math.round(lag.max / 1e6);
      Object.assign(generations.at(-1), { moved, closed, left, boltMoving, callsInFlight, clientLagMs });
      const generation = { ...(await measureWarm(current)), readyMs, retiredMs };
      log(`upgrade ${n}/${upgrades}: ${predecessor} -> ${current}, ready ${readyMs} ms, retired ${retiredMs} ms (moved ${moved} with ${callsInFlight} rpc calls in flight, closed ${closed}, left ${left}; clients ${clientLagMs} ms late at most); ${describe(generation)}; ${rpcFigures()}`);
      generations.push(generation);
    }

    await rpc.stop();
    const wrkReport = await wrk.stop();
    const last = generations.at(-1);

    // ---- checks ----
    const { connect, read, write, timeout, non2xx, requests } = wrkReport;
    if (!(requests > 0) || connect + read + write + timeout + non2xx > 0) {
      problems.push(`wrk: ${requests} requests, errors connect ${connect} read ${read} write ${write} timeout ${timeout}, non-2xx ${non2xx}`);
    }
    for (const kind of ['echo', 'slow']) {
      const s = rpc.stats[kind];
      if (s.failed > 0 || s.ok === 0) problems.push(`rpc ${kind}: ${s.ok} ok, ${s.failed} failed: ${s.errors.join('; ')}`);
    }
    for (const [i, c] of clients.entries()) {
      const same = c.connections().length === 1 && c.connections()[0] === c.connection && c.connection._socket.localPort === c.localPort;
      if (c.socketClosed || !same) problems.push(`rpc client ${i}: its connection (port ${c.localPort}) ${c.socketClosed ? 'closed' : 'was replaced'}`);
      if (c.warnings.length > 0) problems.push(`rpc client ${i} warnings: ${c.warnings.slice(0, 5).join('; ')}`);
    }
    const everyConnection = wrkConnections + rpcClients;
    generations.slice(0, -1).forEach((g, k) => {
      if (g.moved !== everyConnection || g.closed !== 0 || g.left !== 0) {
        problems.push(`generation ${k} (pid ${g.pid}) retired with ${g.moved} connections moved, ${g.closed} closed, ${g.left} left; expected ${everyConnection} moved`);
      }
      if (g.boltMoving !== rpcClients) problems.push(`generation ${k} (pid ${g.pid}) started retiring with ${g.boltMoving} Bolt connections, expected ${rpcClients}`);
    });
    // Calls in flight at a given retirement are the load's doing, not a promise: the slow loops fall
    // into step (calls that wait during a move are decoded together by the successor), and a
    // retirement that starts in the short gap between two of their calls, or while this process
    // did not run, has none (seen at 1 of 200). A soak where none had any did not test late writes.
    const retirements = generations.slice(0, -1);
    const withCalls = retirements.filter((g) => g.callsInFlight > 0).length;
    if (retirements.length > 0 && withCalls === 0) problems.push(`no retirement had rpc calls in flight: the load did not run`);
    for (const line of stderr().split('\n')) {
      if (/upgrade failed|rollback|lost \(|warning \(|went away/.test(line)) problems.push(`logged: ${line}`);
    }
    if (generations.length > 1) {
      const reference = generations[1];
      generations.forEach((g, k) => {
        if (g.fds !== reference.fds) problems.push(`generation ${k} (pid ${g.pid}) holds ${g.fds} fds, generation 1 ${reference.fds}: ${fdDifference(g.fdList, reference.fdList)}`);
      });
    }
    // RSS: the median of the last generations against that of the first ones. One young process's
    // RSS after a GC still varies by some 5 % on Node 24 (how much its optimizing compiler has
    // just run: V8's peak zone memory follows it) and a single pair of samples would make the
    // check flaky; a leak carried from generation to generation moves the whole window.
    const window = Math.max(1, Math.min(20, Math.floor(generations.length / 3)));
    const rssFirst = median(generations.slice(0, window).map((g) => g.rss));
    const rssLast = median(generations.slice(-window).map((g) => g.rss));
    if (Math.abs(rssLast - rssFirst) > rssFirst * rssTolerance) {
      problems.push(`rss: median of the last ${window} generations ${MB(rssLast)} MB, not within ${rssTolerance * 100} % of the first ${window} generations' ${MB(rssFirst)} MB`);
    }
    // Every earlier generation exited by itself (each was waited for above): the last one is all
    // that runs; it is ended here, by pid.
    const running = ours(base);
    if (running.length !== 1 || running[0] !== last.pid) problems.push(`running before the end: ${running.join(' ')}, expected only the last generation, ${last.pid}`);
    process.kill(last.pid, 'SIGKILL');
    await waitUntil(() => exited(last.pid), 10_000, `the last generation (pid ${last.pid}) to exit`);
    const leftBehind = ours(base);
    if (leftBehind.length > 0) problems.push(`processes left behind: ${leftBehind.join(' ')}`);

    const rssValues = generations.map((g) => g.rss);
    const summary = {
      upgrades,
      seconds: (Date.now() - started) / 1000,
      wrk: { requests, connect, read, write, timeout, non2xx },
      rpc: { echo: { ...rpc.stats.echo }, slow: { ...rpc.stats.slow } },
      fds: { first: first.fds, afterUpgrade1: generations[1]?.fds, last: last.fds, min: Math.min(...generations.map((g) => g.fds)), max: Math.max(...generations.map((g) => g.fds)) },
      rss: { window, first: rssFirst, last: rssLast, min: Math.min(...rssValues), max: Math.max(...rssValues) },
      readyMs: median(generations.slice(1).map((g) => g.readyMs)),
      retiredMs: median(generations.slice(1).map((g) => g.retiredMs)),
      retirementsWithCallsInFlight: withCalls,
      callsInFlightAtRetirement: retirements.reduce((sum, g) => sum + g.callsInFlight, 0),
    };
    log(
      `soak: ${upgrades} upgrades in ${summary.seconds.toFixed(1)} s; wrk ${requests} requests (errors ${connect}/${read}/${write}/${timeout}, non-2xx ${non2xx}); ` +
        `${rpcFigures()} (${summary.callsInFlightAtRetirement} in flight at ${withCalls} of ${retirements.length} retirements); fds ${first.fds} at first, ${summary.fds.afterUpgrade1} after upgrade 1, ${last.fds} at the end (${summary.fds.min}..${summary.fds.max}); ` +
        `rss (median of ${window} generations) ${MB(rssFirst)} MB at first, ${MB(rssLast)} MB at the end (${((rssLast / rssFirst - 1) * 100).toFixed(1)} %; each ${MB(summary.rss.min)}..${MB(summary.rss.max)}); ` +
        `median ready ${summary.readyMs} ms, retired ${summary.retiredMs} ms after SIGHUP; ${problems.length} problems`,
    );
    for (const problem of problems) log(`problem: ${problem}`);
    return { summary, generations, problems };
  } finally {
    lag.disable();
    await rpc?.stop();
    await Promise.all(clients.map((c) => c.client.close().catch(() => undefined)));
    if (wrk) await wrk.stop().catch(() => undefined);
    // Every process of this soak has its dir in its argv: found so, by pid. (Not group.pids: the pid
    // of a generation that exited long ago may belong to another process by now.)
    for (const pid of ours(base)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    await waitUntil(() => ours(base).length === 0, 5000, 'the soak processes to end').catch(() => undefined);
    fs.rmSync(base, { recursive: true, force: true });
  }
}

/**
 * fdDifference says what a process holds beyond (or short of) the reference: counts by kind (pipes
 * and sockets are per-process objects, compared by number), and the kernel objects it holds twice
 * (a moved connection is the very same socket in every generation: a second fd on it is a leak).
 */
function fdDifference(list, referenceList) {
  const targets = (entries) => entries.map((entry) => entry.replace(/^\d+ -> /, ''));
  const kinds = (entries) => {
    const counts = new Map();
    for (const target of targets(entries)) {
      const kind = target.replace(/:\[\d+\]$/, '');
      counts.set(kind, (counts.get(kind) ?? 0) + 1);
    }
    return counts;
  };
  const mine = kinds(list);
  const theirs = kinds(referenceList);
  const byKind = [...new Set([...mine.keys(), ...theirs.keys()])]
    .filter((kind) => mine.get(kind) !== theirs.get(kind))
    .map((kind) => `${kind} ${mine.get(kind) ?? 0} (generation 1: ${theirs.get(kind) ?? 0})`);
  const seen = new Map();
  for (const entry of list) {
    const [fd, target] = entry.split(' -> ');
    seen.set(target, [...(seen.get(target) ?? []), fd]);
  }
  const twice = [...seen].filter(([target, fds]) => fds.length > 1 && target.startsWith('socket:')).map(([target, fds]) => `${target} at fds ${fds.join(',')}`);
  return `${byKind.join(', ')}${twice.length ? `; held twice: ${twice.slice(0, 8).join('; ')}${twice.length > 8 ? ` (+${twice.length - 8})` : ''}` : ''}`;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
}

if (process.argv[1] && pathToFileURL(path.resolve(process.argv[1])).href === import.meta.url) {
  const { values } = parseArgs({
    options: {
      upgrades: { type: 'string', default: '200' },
      'wrk-connections': { type: 'string', default: '16' },
      'rpc-clients': { type: 'string', default: '4' },
      'slow-ms': { type: 'string', default: '300' },
      'dwell-ms': { type: 'string', default: '250' },
      'warm-up': { type: 'string', default: '2000' },
      'rss-tolerance': { type: 'string', default: '0.1' },
    },
  });
  const { problems } = await soak({
    upgrades: Number(values.upgrades),
    wrkConnections: Number(values['wrk-connections']),
    rpcClients: Number(values['rpc-clients']),
    slowMs: Number(values['slow-ms']),
    dwellMs: Number(values['dwell-ms']),
    warmUp: Number(values['warm-up']),
    rssTolerance: Number(values['rss-tolerance']),
  });
  process.exitCode = problems.length === 0 ? 0 : 1;
}
