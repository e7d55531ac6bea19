// `handover run -- <command...>`: a supervisor that stays the container's main process while
// generations of the server hand over to each other under it (HAProxy's master-worker mode,
// Envoy's hot-restarter). It starts the first generation, adopts every successor when its
// predecessor exits (as PID 1 of its namespace, or as a child subreaper), reaps every child,
// forwards SIGTERM/SIGINT to the generation serving now, turns SIGHUP into an upgrade, and exits
// with the status of the last generation.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { binding } from '../native';
import { requestStatus, requestUpgrade } from '../control-client';
import { isHandoverError } from '../errors';

/** The signals passed on to the generation serving now. */
const FORWARDED = ['SIGTERM', 'SIGINT', 'SIGUSR2'] as const;

export interface RunOptions {
  /** The control directory of the server: SIGHUP then upgrades over its control socket, and the next generation is found through it. */
  dir: string | undefined;
  /**
   * After the generation handed over to a process outside this supervisor's reach (another
   * container sharing dir), stay idle until SIGTERM/SIGINT instead of exiting: a container that
   * exits is restarted by its pod, and the old release would take over again (kubernetes.md).
   */
  stayAfterHandover?: boolean;
  log(line: string): void;
}

/** The fields of /proc/PID/stat after "pid (comm) ": state [0], ppid [1], ... starttime [19]. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/**
 * ownProc: whether /proc is this PID namespace's (a container runtime mounts one; `unshare --pid`
 * needs --mount-proc). In another namespace's /proc, pids name other processes.
 */
function ownProc(): boolean {
  try {
    return fs.readlinkSync('/proc/self') === String(process.pid);
  } catch {
    return false;
  }
}

/** liveChildren: this process's children that have not ended, oldest first (adopted orphans included); none when /proc is not ours. */
function liveChildren(): number[] {
  if (!ownProc()) return [];
  const children: { pid: number; start: number }[] = [];
  for (const name of fs.readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isSafeInteger(pid) || pid <= 0) continue;
    const fields = statFields(pid);
    if (!fields || Number(fields[1]) !== process.pid || fields[0] === 'Z' || fields[0] === 'X') continue;
    children.push({ pid, start: Number(fields[19]) });
  }
  return children.sort((a, b) => a.start - b.start).map((child) => child.pid);
}

/** exitStatus: a shell's view of how a process ended (128 + the signal number when killed). */
function exitStatus(code: number | null, signal: NodeJS.Signals | number | null): number {
  if (signal !== null && signal !== 0) return 128 + (typeof signal === 'number' ? signal : (os.constants.signals[signal] ?? 0));
  return code ?? 1;
}

/**
 * run starts `command` and supervises its generations until the last one exits; resolves with
 * that generation's exit status. The caller exits with it.
 */
export function run(command: readonly string[], options: RunOptions): Promise<number> {
  const { log, dir } = options;
  const native = binding();
  if (process.pid !== 1) {
    // Not PID 1: a successor orphaned by its predecessor's exit must still come here, not to init.
    try {
      native.setChildSubreaper();
    } catch (err) {
      log(`cannot become a child subreaper (${(err as Error).message}): successors will be adopted by PID 1, not by this supervisor`);
    }
  }
  if (!ownProc()) log(`/proc is not this PID namespace's: children cannot be listed${dir === undefined ? ', and without --dir a successor cannot be recognised (this supervisor ends with its first generation)' : ''}; mount a /proc of its own (unshare --mount-proc)`);
  return new Promise<number>((resolve) => {
    let current: number | undefined;
    let stopping: NodeJS.Signals | undefined;
    // Set while idle after a handover to another container: the status to exit with on SIGTERM.
    let idleStatus: number | undefined;
    let finished = false;
    // Exits are handled one at a time: finding the next generation may take a status request.
    let handling = Promise.resolve();
    // The generation serves from a process of this namespace that is not our child (started by
    // hand, `docker exec`): its exit is seen by polling, with no status.
    let foreign = false;

    const finish = (status: number): void => {
      if (finished) return;
      finished = true;
      clearInterval(keepAlive);
      for (const signal of [...FORWARDED, 'SIGHUP', 'SIGCHLD'] as const) process.removeAllListeners(signal);
      resolve(status);
    };

    const signal = (pid: number, name: NodeJS.Signals): void => {
      try {
        process.kill(pid, name);
      } catch {
        // already gone: its exit is on its way
      }
    };

    /**
     * nextGeneration: the child that serves now that `exited` is gone; 'elsewhere' when a process
     * outside this supervisor's children serves in dir (another container); undefined when none.
     */
    const nextGeneration = async (exited: number): Promise<number | 'elsewhere' | undefined> => {
      if (dir !== undefined) {
        // Whoever owns control.sock now, if it is our child. Its pid is the kernel's translation
        // into this PID namespace: 0 for a successor in another container (never compare pids
        // across the boundary).
        try {
          const { peer } = await requestStatus(dir, { timeout: 5000 });
          if (peer.pid <= 0 || peer.pid === exited) return 'elsewhere';
          foreign = !liveChildren().includes(peer.pid);
          if (foreign) log(`pid ${peer.pid} serves in ${dir} but is not a child of this supervisor: watching it`);
          return peer.pid;
        } catch (err) {
          if (!isHandoverError(err, 'ERR_HANDOVER_NOT_RUNNING')) log(`cannot ask ${dir} who serves (${(err as Error).message})`);
          return undefined;
        }
      }
      const children = liveChildren().filter((pid) => pid !== exited);
      return children.at(-1);
    };

    // Each exit is reported once: by libuv's 'exit' for the first child or by reap(), whichever
    // called waitpid() first (the other finds nothing).
    const onExit = (pid: number, code: number | null, sig: NodeJS.Signals | number | null): void => {
      const status = exitStatus(code, sig);
      if (pid === current) foreign = false;
      if (pid !== current) {
        log(`pid ${pid} exited (status ${status})`);
        return;
      }
      handling = handling.then(async () => {
        const next = await nextGeneration(pid);
        if (finished) return;
        if (next === 'elsewhere' && options.stayAfterHandover && !stopping) {
          log(`generation pid ${pid} exited (status ${status}); a process outside this container serves in ${dir}: staying idle until SIGTERM`);
          current = undefined;
          idleStatus = status;
          return;
        }
        if (next === undefined || next === 'elsewhere') {
          log(`generation pid ${pid} exited (status ${status}); ${next === 'elsewhere' ? `a process outside this container serves in ${dir}` : 'no successor'}: exiting`);
          finish(status);
          return;
        }
        log(`generation pid ${pid} exited (status ${status}); pid ${next} serves now`);
        current = next;
        if (stopping) signal(next, stopping);
      });
    };

    const reap = (): void => {
      for (;;) {
        let ended;
        try {
          ended = native.reapChild();
        } catch (err) {
          log(`waitpid failed: ${(err as Error).message}`);
          return;
        }
        if (ended === null) return;
        onExit(ended.pid, ended.signal === 0 ? ended.code : null, ended.signal === 0 ? null : ended.signal);
      }
    };
    process.on('SIGCHLD', reap);
    // Signal watchers do not keep Node alive, nor does the unref'd child: this does, and it reaps
    // whatever a coalesced SIGCHLD left behind.
    const keepAlive = setInterval(() => {
      reap();
      if (!foreign || current === undefined) return;
      // kill(pid, 0) sees this PID namespace whatever /proc shows; a zombie of ours is reap()'s.
      try {
        process.kill(current, 0);
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') return;
      }
      const gone = current;
      foreign = false;
      log(`pid ${gone} is gone (not our child: its exit status is unknown)`);
      onExit(gone, 0, null);
    }, 1000);

    for (const name of FORWARDED) {
      process.on(name, () => {
        if (name !== 'SIGUSR2') stopping = name;
        if (current !== undefined) signal(current, name);
        else if (idleStatus !== undefined && name !== 'SIGUSR2') finish(idleStatus);
      });
    }
    let upgrading = false;
    process.on('SIGHUP', () => {
      if (current === undefined) return;
      if (dir === undefined) {
        signal(current, 'SIGHUP');
        return;
      }
      if (upgrading) {
        log('SIGHUP: an upgrade is already running');
        return;
      }
      upgrading = true;
      log(`SIGHUP: upgrading ${dir}`);
      requestUpgrade(dir, { onProgress: (progress) => log(`upgrade: ${progress.step}${progress.pid === undefined ? '' : ` pid ${progress.pid}`}${progress.connections === undefined ? '' : ` ${progress.connections} connections`}`) })
        .then(
          (outcome) => log(`upgraded: generation ${outcome.generation}${outcome.pid ? ` (pid ${outcome.pid})` : ''} serves now`),
          (err: Error & { code?: string }) => log(`upgrade failed (${err.code ?? 'error'}): ${err.message}`),
        )
        .finally(() => {
          upgrading = false;
        });
    });

    const [file, ...args] = command;
    // A session of its own, like every successor the library spawns: each generation gets the
    // signals the supervisor forwards, and only those (not a terminal's Ctrl-C a second time).
    const child = spawn(file!, args, { stdio: 'inherit', detached: true });
    child.once('error', (err) => {
      log(`cannot start ${file}: ${err.message}`);
      finish(127);
    });
    // libuv reaps its own child when its SIGCHLD handler runs first; reap() gets it otherwise.
    child.once('exit', (code, sig) => {
      if (child.pid !== undefined) onExit(child.pid, code, sig);
    });
    child.unref();
    current = child.pid;
    if (current !== undefined) log(`started ${file} (pid ${current})`);
    // An exit that came before SIGCHLD was watched.
    reap();
  });
}
