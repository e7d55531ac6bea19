// `handover run`: the supervisor that stays a container's main process. Real PID namespaces
// (unshare, as root): the example server under `handover run` as PID 1 upgrades under wrk
// keep-alive with zero errors, the supervisor reaps every child, forwards SIGTERM and exits with
// the last generation's status; a successor in another PID namespace still takes over.
import { test, describe, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { Sandbox, get, root, sleep, waitUntil } from './helpers.mjs';
import { runWrk } from './wrk.mjs';

const cli = path.join(root, 'dist', 'cli', 'main.js');
const example = path.join(root, 'examples', 'http-server.mjs');
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'true']).status === 0;
const skip = !canUnshare && 'needs root and unshare(1) for PID namespaces';
const sandbox = new Sandbox();
const started = [];
afterEach(async () => {
  for (const proc of started.splice(0)) await proc.end();
  await sandbox.cleanup();
});

/** The fields of /proc/PID/stat after "pid (comm) ": state [0], ppid [1]. */
function stat(pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** childrenOf: the pids (this namespace's view) whose parent is `pid`, with their state. */
function childrenOf(pid) {
  const children = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const fields = stat(Number(name));
    if (fields && Number(fields[1]) === pid) children.push({ pid: Number(name), state: fields[0] });
  }
  return children;
}

/**
 * A process this test starts (`handover run ...`, in a new PID namespace when `namespace`), its
 * lines (stdout and stderr), and its end. Pids printed inside a namespace are that namespace's
 * view: they are never signalled from here. The namespace ends with its init, killed by its pid
 * as this namespace sees it.
 */
function start(args, { namespace = true, program } = {}) {
  const argv = program ? [program, ...args] : namespace ? ['unshare', '--pid', '--fork', '--mount-proc', process.execPath, ...args] : [process.execPath, ...args];
  const child = spawn(argv[0], argv.slice(1), { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  const proc = {
    child,
    lines: [],
    waiters: new Set(),
    exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
    /** The pid (here) of the process that runs `args`: unshare's child in a namespace. */
    async mainPid() {
      if (!namespace || program) return child.pid;
      let pid;
      await waitUntil(() => (pid = childrenOf(child.pid)[0]?.pid) !== undefined, 10_000, 'the namespace init');
      return pid;
    },
    waitForLine(regex, { since = 0, timeout = 15_000 } = {}) {
      const seen = proc.lines.slice(since).map((line) => regex.exec(line)).find(Boolean);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          proc.waiters.delete(waiter);
          reject(new Error(`timed out waiting for ${regex}; lines:\n${proc.lines.join('\n')}`));
        }, timeout);
        const waiter = (line) => {
          const match = regex.exec(line);
          if (!match) return;
          clearTimeout(timer);
          proc.waiters.delete(waiter);
          resolve(match);
        };
        proc.waiters.add(waiter);
      });
    },
    async end() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      // The supervisor's children first when it runs here (killing it would orphan them), then itself.
      const main = namespace && !program ? childrenOf(child.pid)[0]?.pid : child.pid;
      if (program) for (const { pid } of childrenOf(child.pid)) process.kill(pid, 'SIGKILL');
      else if (!namespace && main !== undefined) for (const { pid } of childrenOf(main)) process.kill(pid, 'SIGKILL');
      if (main !== undefined) process.kill(main, 'SIGKILL');
      await Promise.race([proc.exited, sleep(5000)]);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await proc.exited;
    },
  };
  for (const stream of [child.stdout, child.stderr]) {
    readline.createInterface({ input: stream }).on('line', (line) => {
      proc.lines.push(line);
      if (process.env.HANDOVER_TEST_VERBOSE) process.stderr.write(`${line}\n`);
      for (const waiter of [...proc.waiters]) waiter(line);
    });
  }
  started.push(proc);
  return proc;
}

/** handover ARGS from this namespace, run to its end. */
function handover(args) {
  const result = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', timeout: 30_000 });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

function statusOf(dir) {
  const result = handover(['status', '--dir', dir, '--json']);
  assert.equal(result.code, 0, result.stderr);
  return JSON.parse(result.stdout).status;
}

describe('handover run as PID 1 of a PID namespace', { skip }, () => {
  test('5 upgrades under wrk keep-alive with zero errors; SIGTERM: the supervisor exits with the generation status', async () => {
    const dir = path.join(sandbox.dir(), 'ctl');
    const container = start([cli, 'run', '--dir', dir, '--', process.execPath, example, '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
    const [, firstPid, port] = await container.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    // The supervisor is PID 1 of the namespace, and the first generation its child.
    await container.waitForLine(new RegExp(`^\\[handover run 1\\] started \\S+ \\(pid ${firstPid}\\)$`));
    const wrk = runWrk({ url: `http://127.0.0.1:${port}/`, connections: 16, threads: 2, duration: 7 });
    try {
      await sleep(500);
      for (let upgrade = 1; upgrade <= 5; upgrade++) {
        const since = container.lines.length;
        const result = handover(['upgrade', '--dir', dir]);
        assert.equal(result.code, 0, `upgrade ${upgrade}: ${result.stdout}${result.stderr}`);
        const [, generation, successor] = /-> generation (\d+) \(pid (\d+)\)/.exec(result.stdout);
        assert.equal(Number(generation), upgrade + 1);
        // The predecessor exited; the supervisor adopted its successor (an orphan) as the generation.
        await container.waitForLine(new RegExp(`^\\[handover run 1\\] generation pid \\d+ exited \\(status 0\\); pid ${successor} serves now`), { since });
        await sleep(500);
      }
    } finally {
      var report = await wrk.result;
    }
    assert.ok(report.requests > 1000, report.raw);
    assert.deepEqual({ connect: report.connect, read: report.read, write: report.write, timeout: report.timeout, non2xx: report.non2xx }, { connect: 0, read: 0, write: 0, timeout: 0, non2xx: 0 }, report.raw);
    const status = statusOf(dir);
    assert.equal(status.generation, 6);
    assert.equal(status.lastUpgrade.result, 'succeeded');
    // No zombie in the namespace: every retired generation was reaped.
    const init = await container.mainPid();
    assert.deepEqual(childrenOf(init).map((c) => c.state).filter((state) => state === 'Z'), []);
    process.kill(init, 'SIGTERM');
    assert.deepEqual(await container.exited, { code: 0, signal: null });
    assert.ok(container.lines.some((line) => /^\[handover run 1\] generation pid \d+ exited \(status 0\); no successor: exiting$/.test(line)), container.lines.join('\n'));
  });

  test('SIGHUP to the supervisor upgrades, over the control socket with --dir and by SIGHUP to the generation without', async () => {
    for (const withDir of [true, false]) {
      const dir = path.join(sandbox.dir(), 'ctl');
      const container = start([cli, 'run', ...(withDir ? ['--dir', dir] : []), '--', process.execPath, example, '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
      const [, , port] = await container.waitForLine(/^ready pid=(\d+) port=(\d+)/);
      const init = await container.mainPid();
      const since = container.lines.length;
      process.kill(init, 'SIGHUP');
      const [, successor] = await container.waitForLine(/^ready pid=(\d+)/, { since });
      await container.waitForLine(new RegExp(`serves now$`), { since });
      if (withDir) await container.waitForLine(/^\[handover run 1\] upgraded: generation 2/, { since });
      assert.equal((await get(Number(port))).headers['x-pid'], successor);
      assert.equal(statusOf(dir).generation, 2);
      process.kill(init, 'SIGTERM');
      assert.deepEqual(await container.exited, { code: 0, signal: null });
    }
  });

  test('exits with the status of the last generation: an exit code, a forwarded SIGTERM, a signal', async () => {
    const cases = [
      [['sh', '-c', 'sleep 0.2; exit 3'], undefined, 3],
      [['sh', '-c', 'trap "exit 7" TERM; echo ready; while :; do sleep 0.05; done'], 'SIGTERM', 7],
      [['sh', '-c', 'kill -KILL $$'], undefined, 128 + 9],
    ];
    for (const [command, signal, expected] of cases) {
      const container = start([cli, 'run', '--', ...command]);
      if (signal) {
        await container.waitForLine(/^ready$/);
        process.kill(await container.mainPid(), signal);
      }
      assert.deepEqual(await container.exited, { code: expected, signal: null }, command.join(' '));
    }
  });

  test('reaps orphans it adopts (PID 1, and as a child subreaper when it is not PID 1)', async () => {
    for (const namespace of [true, false]) {
      // The subshell exits at once: its background sleep is orphaned, and comes to the supervisor.
      const container = start([cli, 'run', '--', 'sh', '-c', '(sleep 0.2 &); echo ready; exec sleep 30'], { namespace });
      await container.waitForLine(/^ready$/);
      await container.waitForLine(/^\[handover run \d+\] pid \d+ exited \(status 0\)$/);
      const supervisor = await container.mainPid();
      assert.deepEqual(childrenOf(supervisor).filter((c) => c.state === 'Z'), [], 'no zombie left');
      process.kill(supervisor, 'SIGTERM');
      assert.deepEqual(await container.exited, { code: 128 + 15, signal: null });
    }
  });
});

describe('two containers sharing dir and network', { skip }, () => {
  test('a successor in another PID namespace takes over with zero errors; the first container ends with status 0', async () => {
    const dir = path.join(sandbox.dir(), 'ctl');
    const first = start([cli, 'run', '--dir', dir, '--', process.execPath, example, '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
    const [, , port] = await first.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const wrk = runWrk({ url: `http://127.0.0.1:${port}/`, connections: 8, threads: 2, duration: 3 });
    await sleep(800);
    // Another container: its own PID namespace, the same dir and network (pids there mean nothing here).
    const second = start([cli, 'run', '--dir', dir, '--', process.execPath, example, '--port', port, '--host', '127.0.0.1', '--dir', dir]);
    await second.waitForLine(/^ready pid=\d+ port=\d+/);
    assert.deepEqual(await first.exited, { code: 0, signal: null });
    assert.ok(first.lines.some((line) => /a process outside this container serves in .*: exiting$/.test(line)), first.lines.join('\n'));
    const report = await wrk.result;
    assert.ok(report.requests > 100, report.raw);
    assert.deepEqual({ connect: report.connect, read: report.read, write: report.write, timeout: report.timeout, non2xx: report.non2xx }, { connect: 0, read: 0, write: 0, timeout: 0, non2xx: 0 }, report.raw);
    const status = statusOf(dir);
    assert.equal(status.generation, 2);
    assert.equal((await get(Number(port))).status, 200);
    // Seen from yet another PID namespace (a third container), the generation is not local.
    const elsewhere = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, cli, 'status', '--dir', dir, '--json'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    assert.equal(elsewhere.status, 0, elsewhere.stderr);
    assert.equal(JSON.parse(elsewhere.stdout).local, false);
    assert.equal(JSON.parse(handover(['status', '--dir', dir, '--json']).stdout).local, true, 'the parent namespace sees every pid');
  });

  test('--stay-after-handover: the first container stays idle after the handover (a pod would restart it), and exits 0 on SIGTERM', async () => {
    const dir = path.join(sandbox.dir(), 'ctl');
    const first = start([cli, 'run', '--dir', dir, '--stay-after-handover', '--', process.execPath, example, '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
    const [, , port] = await first.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const second = start([cli, 'run', '--dir', dir, '--', process.execPath, example, '--port', port, '--host', '127.0.0.1', '--dir', dir]);
    await second.waitForLine(/^ready pid=\d+ port=\d+/);
    await first.waitForLine(/staying idle until SIGTERM$/);
    assert.equal(statusOf(dir).generation, 2);
    assert.equal(first.child.exitCode, null);
    process.kill(await first.mainPid(), 'SIGTERM');
    assert.deepEqual(await first.exited, { code: 0, signal: null });
    // The second container serves on, untouched.
    assert.equal(statusOf(dir).generation, 2);
    assert.equal((await get(Number(port))).status, 200);
  });

  test('a successor started by hand in the same PID namespace (not a child of the supervisor) is watched, and gets the forwarded SIGTERM', async () => {
    const dir = path.join(sandbox.dir(), 'ctl');
    const container = start([cli, 'run', '--dir', dir, '--', process.execPath, example, '--port', '0', '--host', '127.0.0.1', '--dir', dir]);
    const [, , port] = await container.waitForLine(/^ready pid=(\d+) port=(\d+)/);
    const init = await container.mainPid();
    // `docker exec` of a second server: it joins the namespace, its parent stays outside.
    const byHand = start(['--target', String(init), '--pid', '--mount', '--', process.execPath, example, '--port', port, '--host', '127.0.0.1', '--dir', dir], { program: 'nsenter' });
    await byHand.waitForLine(/^ready pid=\d+/);
    await container.waitForLine(/serves in .* but is not a child of this supervisor: watching it$/);
    assert.equal(statusOf(dir).generation, 2);
    process.kill(init, 'SIGTERM');
    assert.deepEqual(await byHand.exited, { code: 0, signal: null });
    assert.deepEqual(await container.exited, { code: 0, signal: null });
    assert.ok(container.lines.some((line) => /is gone \(not our child: its exit status is unknown\)$/.test(line)), container.lines.join('\n'));
  });
});
