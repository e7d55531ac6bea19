// The upgrader's options, events and per-server options: their types, defaults and validation.
import { HandoverError } from './errors';
import type { ConnectionsReport } from './connection-tracker';
import type { AdoptHandler } from './connections';
import type { ProtocolAdapter } from './adapters/contract';
import type { SuccessorCommand } from './spawner';
import { startCommand } from './start-context';

export interface UpgraderOptions {
  /** The control directory shared by every generation (created 0700). Required. */
  dir: string;
  /** How long a successor may take from connecting (or being spawned) to READY. Default 10 000 ms. */
  readyTimeout?: number;
  /** How long a retiring process waits for its connections before it retires anyway. Default 30 000 ms. */
  gracefulTimeout?: number;
  /**
   * What upgrade() starts. Default: this program again (execPath, execArgv, argv, env), from the
   * logical directory it was started in ($PWD when it names the working directory: a deploy that
   * re-points a `current` symlink upgrades to the new release), with the script resolved there.
   */
  command?: SuccessorCommand;
  /** uids allowed to take over. Default: this process's own uid. */
  allowedUids?: readonly number[];
  /**
   * Talk to systemd where its environment says it runs the process ($NOTIFY_SOCKET, $LISTEN_FDS,
   * $FDSTORE; see docs/systemd.md). Default true; false leaves all three alone (a supervisor of
   * your own that speaks to systemd itself).
   */
  systemd?: boolean;
}

export interface UpgraderEvents {
  /** This process serves (after ready()). */
  ready: [{ pid: number; predecessorPid: number | undefined }];
  /** A successor connected and asked for the listeners. */
  upgrading: [{ pid: number }];
  /** The successor is ready; this process stopped accepting and is retiring. */
  retiring: [{ successorPid: number }];
  /** An upgrade failed; this process serves on, unchanged. */
  upgradeFailed: [HandoverError];
  /** The successor died (or gave up) after READY: this process accepts again and owns the control socket. */
  rollback: [{ successorPid: number; reason: string }];
  /** The predecessor finished retiring (said BYE or exited): every connection it moved here has reached its server. Upgrades are possible from now on. */
  predecessorRetired: [{ pid: number; clean: boolean }];
  /** Retiring is over: exit the process now. */
  retired: [ConnectionsReport];
  /** Something went wrong that did not stop this process from serving (garbage on the socket, a refused peer). */
  warning: [HandoverError];
}

/** Per-server options of listen(). */
export interface ListenOptions {
  /**
   * How this server's connections move (docs/adapters.md): the retiring process's half says, per
   * connection, whether it can move now and with what; the successor's half adopts it. The
   * library drives the rest (when to ask, retries, late writes, letting go, rollback). On a server
   * a built-in adapter also handles (http.Server), both run: connections the protocol answers
   * `later` for are left to the built-in one (a WebSocket adapter beside HTTP keep-alive).
   */
  protocol?: ProtocolAdapter<unknown>;
  /**
   * The low-level form, kept for compatibility (connections moved by hand with
   * transferConnection()): receives the connections this server's predecessor moved here, paused,
   * with the bytes the predecessor had read but not processed. Without it, they are emitted as
   * 'connection' with those bytes unshifted (right for http.Server and for protocols that decode
   * from 'data'). Not together with `protocol` (whose `adopt` replaces it).
   */
  adopt?: AdoptHandler;
}

export interface ResolvedOptions {
  dir: string;
  readyTimeout: number;
  gracefulTimeout: number;
  command: SuccessorCommand;
  allowedUids: ReadonlySet<number>;
  systemd: boolean;
}

const DEFAULT_READY_TIMEOUT = 10_000;
const DEFAULT_GRACEFUL_TIMEOUT = 30_000;

/** checkTimeout validates a timeout in milliseconds, naming the option in its error. */
export function checkTimeout(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.${name} must be a positive number of milliseconds, got ${String(value)}`);
  }
  return value;
}

/** resolveOptions validates the options with an exact message for each, and fills in the defaults. */
export function resolveOptions(options: UpgraderOptions): Omit<ResolvedOptions, 'dir'> & { dir: string } {
  if (typeof options !== 'object' || options === null) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'createUpgrader needs an options object with dir');
  }
  const readyTimeout = checkTimeout('readyTimeout', options.readyTimeout, DEFAULT_READY_TIMEOUT);
  const gracefulTimeout = checkTimeout('gracefulTimeout', options.gracefulTimeout, DEFAULT_GRACEFUL_TIMEOUT);
  if (options.allowedUids !== undefined && (!Array.isArray(options.allowedUids) || !options.allowedUids.every((uid) => Number.isInteger(uid) && uid >= 0))) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.allowedUids must be an array of uids');
  }
  const allowedUids = new Set(options.allowedUids ?? [process.getuid?.() ?? 0]);
  if (options.systemd !== undefined && typeof options.systemd !== 'boolean') {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.systemd must be a boolean, got ${String(options.systemd)}`);
  }
  // This very program, started again from the directory it was started in (the logical one: a
  // symlink-swap deploy runs the new release) with this process's environment.
  const command = options.command ?? { ...startCommand(), env: process.env };
  if (typeof command.file !== 'string' || command.file.length === 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.command.file must be a non-empty string');
  }
  return { dir: options.dir, readyTimeout, gracefulTimeout, command, allowedUids, systemd: options.systemd ?? true };
}
