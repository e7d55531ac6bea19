// Starting a successor (detached, in a process group of its own), watching it until it is ready,
// and the process facts the upgrader needs (liveness, process groups), behind an injectable OS layer.
import { EventEmitter } from 'node:events';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import * as fs from 'node:fs';
import { createDebug } from './log';
import { HandoverError } from './errors';
import { startDirectory } from './start-context';

const debug = createDebug('handover:spawner');

/** What upgrade() starts. Defaults to this very process: execPath, execArgv, argv, cwd, env. */
export interface SuccessorCommand {
  file: string;
  args?: readonly string[];
  /** Default: the logical directory this process was started in (see start-context.ts). */
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** The successor's stdio. Default 'inherit': it writes where this process writes. */
  stdio?: 'inherit' | 'ignore';
}

/** The OS layer of process handling; tests replace parts of it to reach rare branches. */
export interface ProcessLayer {
  spawn(file: string, args: readonly string[], options: SpawnOptions): ChildProcess;
  /** Sends a signal to a pid, or to a process group with a negative pid. */
  kill(pid: number, signal: NodeJS.Signals | 0): void;
  /** The process group of a pid; undefined where unknown. */
  processGroupOf(pid: number): number | undefined;
  /** 'alive', 'gone' (no such process, or a zombie) or 'unknown' (not in this PID namespace's view). */
  liveness(pid: number): 'alive' | 'gone' | 'unknown';
}

/** The real processes of this machine (Linux /proc for groups and zombies). */
export const systemProcesses: ProcessLayer = {
  // child_process loads at the first spawn (an upgrade), not when the package is imported.
  spawn: (file, args, options) => (require('node:child_process') as typeof import('node:child_process')).spawn(file, args, options),
  kill: (pid, signal) => process.kill(pid, signal),
  processGroupOf(pid) {
    const fields = statFields(pid);
    const pgrp = Number(fields?.[2]);
    return Number.isSafeInteger(pgrp) ? pgrp : undefined;
  },
  liveness(pid) {
    if (!(pid > 0)) return 'unknown';
    // Gone means every thread has exited: a killed process's main thread turns zombie while its
    // other threads still hold its fds (its listening sockets among them).
    let tasks: string[] | undefined;
    try {
      tasks = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      tasks = undefined;
    }
    if (tasks !== undefined) {
      return tasks.every((task) => {
        const state = statFields(pid, task)?.[0];
        return state === undefined || state === 'Z' || state === 'X';
      })
        ? 'gone'
        : 'alive';
    }
    try {
      process.kill(pid, 0);
      return 'alive';
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'EPERM' ? 'alive' : 'gone';
    }
  },
};

/** The fields of /proc/PID/stat after "pid (comm) ": state, ppid, pgrp, ... (comm may hold spaces and parentheses). */
function statFields(pid: number, task?: string): string[] | undefined {
  try {
    const stat = fs.readFileSync(task === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${task}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** How long a process whose control link just broke may take to finish dying before it counts as alive. */
export const EXIT_GRACE_MS = 1000;

/**
 * waitGone resolves true once `pid` is gone (every thread exited), false if it is still alive after
 * `graceMs` or cannot be seen from here (another PID namespace): a process whose control link just
 * broke takes a moment to finish dying, and a live one must never be taken for dead.
 */
export async function waitGone(os: ProcessLayer, pid: number, graceMs: number): Promise<boolean> {
  const deadline = Date.now() + graceMs;
  for (;;) {
    const liveness = os.liveness(pid);
    if (liveness !== 'alive') return liveness === 'gone';
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * SpawnedSuccessor watches one spawned successor until it is ready. It emits 'failed' once, with
 * ERR_UPGRADE_SPAWN_FAILED, ERR_UPGRADE_SUCCESSOR_EXITED or ERR_UPGRADE_READY_TIMEOUT; after a
 * failure its whole process group is killed (a wrapper's children too), so that a successor
 * that missed its deadline never wakes up later and takes over.
 */
export class SpawnedSuccessor extends EventEmitter<{ failed: [HandoverError] }> {
  private readonly child: ChildProcess | undefined;
  private readonly timer: NodeJS.Timeout;
  private settled = false;
  private killed = false;

  constructor(command: SuccessorCommand, readyTimeout: number, private readonly os: ProcessLayer = systemProcesses) {
    super();
    this.timer = setTimeout(() => this.fail(new HandoverError('ERR_UPGRADE_READY_TIMEOUT', `the successor was not ready within ${readyTimeout} ms`)), readyTimeout);
    const { file, args = [], cwd, env, stdio = 'inherit' } = command;
    let child: ChildProcess | undefined;
    const directory = cwd ?? startDirectory();
    debug('starting the successor in %s: %s %s', directory, file, args.join(' '));
    try {
      child = os.spawn(file, args, { cwd: directory, env: env ?? process.env, stdio, detached: true });
    } catch (err) {
      child = undefined;
      // Emitted after the constructor returns, so the owner has subscribed.
      const failure = new HandoverError('ERR_UPGRADE_SPAWN_FAILED', `cannot start the successor: ${(err as Error).message}`, { cause: err });
      process.nextTick(() => this.fail(failure));
    }
    this.child = child;
    if (!child) return;
    debug('spawned successor pid %d', child.pid);
    child.once('error', (err) => this.fail(new HandoverError('ERR_UPGRADE_SPAWN_FAILED', `cannot start the successor: ${err.message}`, { cause: err })));
    child.once('exit', (code, signal) => {
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      this.fail(new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${child.pid}) ${how} before it was ready`));
    });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** owns: whether `pid` is the spawned child or runs in its process group (a wrapper's child). */
  owns(pid: number): boolean {
    const own = this.child?.pid;
    return own !== undefined && (own === pid || this.os.processGroupOf(pid) === own);
  }

  /** succeeded: the upgrade is over (ours or another successor won); stop watching and let the child live on its own. */
  succeeded(): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.child?.removeAllListeners('exit');
    this.child?.unref();
  }

  /** kill ends the spawned successor and its whole process group, without reporting a failure. */
  kill(): void {
    this.settled = true;
    clearTimeout(this.timer);
    this.killGroup();
  }

  private fail(err: HandoverError): void {
    if (this.settled) return;
    this.settled = true;
    clearTimeout(this.timer);
    this.killGroup();
    debug('successor failed: %s', err.message);
    this.emit('failed', err);
  }

  private killGroup(): void {
    const child = this.child;
    if (this.killed || child?.pid === undefined) return;
    this.killed = true;
    // The group, even when the direct child (a wrapper) already exited: its children are in it.
    try {
      this.os.kill(-child.pid, 'SIGKILL');
    } catch {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }
}
