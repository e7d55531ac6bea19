// The control directory: safety checks, and the atomic takeover of control.sock and pid by each
// new generation (bind or write a temporary name, then rename(2) over the old one).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createDebug } from './log';
import { ChannelListener } from './channel-endpoints';
import type { FdChannelOptions } from './channel';
import { HandoverError } from './errors';

const debug = createDebug('handover:dir');

export const CONTROL_SOCKET = 'control.sock';
export const PID_FILE = 'pid';

/**
 * prepareDir creates `dir` with mode 0700 if needed and refuses one that another user could
 * tamper with: a symlink, not a directory, owned by another uid, or writable by group or others.
 */
export function prepareDir(dir: string): string {
  if (typeof dir !== 'string' || dir.length === 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.dir must be a non-empty string');
  }
  const absolute = path.resolve(dir);
  try {
    fs.mkdirSync(absolute, { recursive: true, mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `cannot create control directory ${absolute}: ${(err as Error).message}`, { cause: err });
    }
  }
  const stat = fs.lstatSync(absolute);
  if (stat.isSymbolicLink()) {
    throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `control directory ${absolute} is a symbolic link; refusing it`);
  }
  if (!stat.isDirectory()) {
    throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `control directory ${absolute} is not a directory`);
  }
  const uid = process.getuid?.();
  if (uid !== undefined && stat.uid !== uid) {
    throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `control directory ${absolute} is owned by uid ${stat.uid}, not by this process (uid ${uid})`);
  }
  if ((stat.mode & 0o022) !== 0) {
    throw new HandoverError(
      'ERR_HANDOVER_DIR_UNSAFE',
      `control directory ${absolute} is writable by group or others (mode ${(stat.mode & 0o777).toString(8)}); use chmod 700`,
    );
  }
  return absolute;
}

function temporaryName(dir: string, base: string): string {
  // Unique, not secret (the directory is ours alone, checked above): Math.random spares loading
  // node:crypto, ~20 internal modules, at start-up.
  const suffix = Math.floor(Math.random() * 0x1_0000_0000).toString(16).padStart(8, '0');
  return path.join(dir, `.${base}.${process.pid}.${suffix}`);
}

/** A control socket this process bound, with the identity of its file so we never remove another's. */
export interface OwnedControlSocket {
  listener: ChannelListener;
  path: string;
  dev: number;
  ino: number;
}

/** A takeover made ready but not yet visible: a bound control socket and a pid file under temporary names. */
export interface PreparedControl {
  readonly dir: string;
  readonly listener: ChannelListener;
  readonly socketPath: string;
  readonly pidPath: string;
}

/**
 * prepareControl does every part of a takeover that can fail (bind, chmod, write) under temporary
 * names, so that commitControl is two renames. A successor prepares before READY: if the
 * directory is unusable it fails while the predecessor still serves, unchanged.
 */
export function prepareControl(dir: string, options: FdChannelOptions = {}): PreparedControl {
  const socketPath = temporaryName(dir, CONTROL_SOCKET);
  const pidPath = temporaryName(dir, PID_FILE);
  const listener = new ChannelListener(socketPath, options);
  try {
    fs.chmodSync(socketPath, 0o600);
    fs.writeFileSync(pidPath, `${process.pid}\n`, { mode: 0o600 });
  } catch (err) {
    listener.close();
    fs.rmSync(socketPath, { force: true });
    fs.rmSync(pidPath, { force: true });
    throw err;
  }
  return { dir, listener, socketPath, pidPath };
}

/** commitControl renames the prepared socket and pid file over `dir/control.sock` and `dir/pid` (each rename atomic). */
export function commitControl(prepared: PreparedControl): OwnedControlSocket {
  const finalPath = path.join(prepared.dir, CONTROL_SOCKET);
  try {
    const stat = fs.statSync(prepared.socketPath);
    fs.renameSync(prepared.socketPath, finalPath);
    fs.renameSync(prepared.pidPath, path.join(prepared.dir, PID_FILE));
    debug('took over %s', finalPath);
    return { listener: prepared.listener, path: finalPath, dev: stat.dev, ino: stat.ino };
  } catch (err) {
    abandonControl(prepared);
    throw err;
  }
}

/** abandonControl undoes a prepared takeover that will not be committed. */
export function abandonControl(prepared: PreparedControl): void {
  prepared.listener.close();
  fs.rmSync(prepared.socketPath, { force: true });
  fs.rmSync(prepared.pidPath, { force: true });
}

/**
 * takeOverControlSocket binds a fresh control socket and writes the pid file, then renames both
 * over `dir/control.sock` and `dir/pid`: a successor connecting at any moment finds a live socket.
 */
export function takeOverControlSocket(dir: string, options: FdChannelOptions = {}): OwnedControlSocket {
  return commitControl(prepareControl(dir, options));
}

/** ownsControlSocket tells whether `dir/control.sock` is still the file this process bound. */
export function ownsControlSocket(owned: OwnedControlSocket): boolean {
  try {
    const stat = fs.statSync(owned.path);
    return stat.dev === owned.dev && stat.ino === owned.ino;
  } catch {
    return false;
  }
}

/** releaseControlSocket closes the listener and removes the file only if it is still ours. */
export function releaseControlSocket(owned: OwnedControlSocket): void {
  if (ownsControlSocket(owned)) {
    fs.rmSync(owned.path, { force: true });
    debug('removed %s', owned.path);
  }
  owned.listener.close();
}

/** writePidFile replaces `dir/pid` atomically. */
export function writePidFile(dir: string, pid: number = process.pid): void {
  const tmpPath = temporaryName(dir, PID_FILE);
  fs.writeFileSync(tmpPath, `${pid}\n`, { mode: 0o600 });
  fs.renameSync(tmpPath, path.join(dir, PID_FILE));
}

/** readPidFile returns the pid recorded in `dir`, or undefined. */
export function readPidFile(dir: string): number | undefined {
  try {
    const pid = Number.parseInt(fs.readFileSync(path.join(dir, PID_FILE), 'utf8').trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** removePidFile removes `dir/pid` if it still names this process. */
export function removePidFile(dir: string, pid: number = process.pid): void {
  if (readPidFile(dir) === pid) fs.rmSync(path.join(dir, PID_FILE), { force: true });
}

/** removeStaleSocket removes a control.sock nobody listens on (left by a crash). */
export function removeStaleSocket(dir: string): void {
  const socketPath = path.join(dir, CONTROL_SOCKET);
  try {
    const stat = fs.lstatSync(socketPath);
    if (!stat.isSocket()) {
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `${socketPath} exists and is not a socket`);
    }
    fs.rmSync(socketPath, { force: true });
    debug('removed stale %s', socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
