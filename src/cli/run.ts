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
import { LISTEN_PARENT_PID, notifyAddress } from '../systemd';

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

/** sd_listen_fds(3): the first fd passed by the service manager. */
const LISTEN_FDS_START = 3;
/** How often the supervisor asks whether its first generation serves yet, under systemd (ms). */
const READY_POLL_MS = 100;

/**
 * ServiceManager: systemd as the supervisor sees it. The supervisor stays the unit's main process
 * (its generations come and go under it): it keeps $NOTIFY_SOCKET to itself and says READY=1,
 * RELOADING=1 and STOPPING=1 for the whole service; the generations get no NOTIFY_SOCKET (nor
 * FDSTORE), so none of them sends MAINPID=<its pid>. See docs/systemd.md.
 */
class ServiceManager {
  private failed = false;
  ready = false;

  constructor(private readonly address: string, private readonly log: (line: string) => void) {}

  notify(message: string): void {
    try {
      binding().notify(this.address, Buffer.from(message), [], 1000);
    } catch (err) {
      if (this.failed) return;
      this.failed = true;
      this.log(`cannot notify systemd at NOTIFY_SOCKET (${message.split('\n')[0]}): ${(err as Error).message}`);
    }
  }
}

/**
 * generationEnv: what the first generation is started with. Without systemd's variables: the
 * supervisor speaks to systemd. Socket activation meant for the supervisor (LISTEN_PID is its pid)
 * is passed on: the same fds at 3, 4, ..., LISTEN_FDS and LISTEN_FDNAMES, and, since spawn()
 * cannot put the child's own pid in LISTEN_PID, HANDOVER_LISTEN_PARENT_PID=<supervisor pid>,
 * which the library accepts from its parent only.
 */
function generationEnv(log: (line: string) => void): { env: NodeJS.ProcessEnv; fds: number[] } {
  const env = { ...process.env };
  for (const name of ['NOTIFY_SOCKET', 'FDSTORE', 'LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', LISTEN_PARENT_PID]) delete env[name];
  const { LISTEN_PID: listenPid, LISTEN_FDS: listenFds, LISTEN_FDNAMES: listenFdNames } = process.env;
  if (listenFds === undefined) return { env, fds: [] };
  const count = /^\d+$/.test(listenFds) ? Number(listenFds) : NaN;
  if (listenPid !== String(process.pid) || !Number.isSafeInteger(count) || count > 65536) {
    log(`LISTEN_FDS=${listenFds} is for pid ${listenPid ?? '(no LISTEN_PID)'}, not this supervisor (${process.pid}); not passed on`);
    return { env, fds: [] };
  }
  const fds = Array.from({ length: count }, (_, index) => LISTEN_FDS_START + index);
  for (const fd of fds) {
    try {
      fs.fstatSync(fd);
    } catch (err) {
      log(`fd ${fd} of LISTEN_FDS=${listenFds}: ${(err as Error).message}; socket activation not passed on`);
      return { env, fds: [] };
    }
  }
  env.LISTEN_FDS = listenFds;
  if (listenFdNames !== undefined) env.LISTEN_FDNAMES = listenFdNames;
  env[LISTEN_PARENT_PID] = String(process.pid);
  return { env, fds };
}

/**
 * run starts `command` and supervises its generations until the last one exits; resolves with
 * that generation's exit status. The caller exits with it.
 */
export function run(command: readonly string[], options: RunOptions): Promise<number> {
  const { log, dir } = options;
  const native = binding();
  const notifySocket = notifyAddress(process.env.NOTIFY_SOCKET);
  if (notifySocket !== undefined && dir === undefined) {
    // READY=1 would be a guess: only the control socket says that a generation serves.
    log('under systemd (NOTIFY_SOCKET is set) handover run needs --dir: it learns through the control socket when the first generation serves (READY=1) and upgrades it on SIGHUP (RELOADING=1)');
    return Promise.resolve(2);
  }
  const systemd = notifySocket === undefined ? undefined : new ServiceManager(notifySocket, log);
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
    let readyPoll: NodeJS.Timeout | undefined;

    const finish = (status: number): void => {
      if (finished) return;
      finished = true;
      clearInterval(keepAlive);
      clearTimeout(readyPoll);
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
        if (name !== 'SIGUSR2') {
          if (stopping === undefined && systemd?.ready) systemd.notify('STOPPING=1');
          stopping = name;
        }
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
      // notify-reload: systemd waits for RELOADING=1 (with the time, as it compares it with when it sent SIGHUP), then READY=1.
      const reloading = systemd?.ready === true;
      if (reloading) systemd!.notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
      requestUpgrade(dir, { onProgress: (progress) => log(`upgrade: ${progress.step}${progress.pid === undefined ? '' : ` pid ${progress.pid}`}${progress.connections === undefined ? '' : ` ${progress.connections} connections`}`) })
        .then(
          (outcome) => log(`upgraded: generation ${outcome.generation}${outcome.pid ? ` (pid ${outcome.pid})` : ''} serves now`),
          (err: Error & { code?: string }) => log(`upgrade failed (${err.code ?? 'error'}): ${err.message}`),
        )
        .finally(() => {
          upgrading = false;
          // Succeeded or failed, a generation serves again (a failed upgrade leaves the old one serving).
          if (reloading && !finished && !stopping) systemd!.notify('READY=1');
        });
    });

    const [file, ...args] = command;
    // A session of its own, like every successor the library spawns: each generation gets the
    // signals the supervisor forwards, and only those (not a terminal's Ctrl-C a second time).
    const { env, fds } = generationEnv(log);
    const child = spawn(file!, args, { env, stdio: ['inherit', 'inherit', 'inherit', ...fds], detached: true });
    // The first generation holds them now; systemd keeps its own copies.
    for (const fd of fds) {
      try {
        fs.closeSync(fd);
      } catch {
        // already closed
      }
    }
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

    // Under systemd: READY=1 once a generation of ours answers on the control socket (it commits
    // control.sock in ready(), once it listens).
    const pollReady = (): void => {
      if (finished || !systemd || systemd.ready) return;
      requestStatus(dir!, { timeout: 1000 }).then(
        ({ peer }) => {
          // Stopped before it served: systemd is told nothing more (it sees the exit).
          if (finished || systemd.ready || stopping) return;
          if (peer.pid > 0 && (peer.pid === current || liveChildren().includes(peer.pid))) {
            systemd.ready = true;
            log(`pid ${peer.pid} serves: READY=1`);
            systemd.notify(`MAINPID=${process.pid}\nREADY=1`);
            return;
          }
          readyPoll = setTimeout(pollReady, READY_POLL_MS);
        },
        () => {
          if (!finished && !stopping) readyPoll = setTimeout(pollReady, READY_POLL_MS);
        },
      );
    };
    pollReady();
  });
}
