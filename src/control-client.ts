// A control client: asks the generation serving in a control directory what it is doing (STATUS)
// or to upgrade (UPGRADE), over its control socket, as `handover status` / `handover upgrade` do.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { connectChannelWithin } from './channel-endpoints';
import { CONTROL_SOCKET } from './control-dir';
import { HandoverError, isHandoverError, type HandoverErrorCode } from './errors';
import { FROM_GENERATION } from './lifecycle';
import { isNativeError, type PeerCredentials } from './native';
import type { GenerationStatus, Message, MessageOf, UpgradeStep } from './protocol';
import type { ControlSession } from './session';

// The session and the protocol load at the first request, not when the package is imported.
const protocolVersion = (): typeof import('./protocol').PROTOCOL_VERSION => (require('./protocol') as typeof import('./protocol')).PROTOCOL_VERSION;

/** The default --timeout of a status request, and of an upgrade request (ms). */
export const STATUS_TIMEOUT = 5_000;
export const UPGRADE_TIMEOUT = 120_000;

export interface ControlRequestOptions {
  /** How long to wait for the whole answer (ms). */
  timeout?: number;
}

/** One step of an upgrade as it happens: spawned (pid), connected (pid), ready (pid), moving (connections), retired. */
export interface UpgradeProgress {
  step: UpgradeStep;
  pid?: number;
  connections?: number;
}

/** A successful upgrade: the generation that serves now, and what happened to the retired one's connections. */
export interface UpgradeOutcome {
  /** The generation asked to upgrade. */
  from: { pid: number; generation: number };
  /** The successor, as the predecessor saw it (its pid may be 0 across a PID namespace boundary). */
  pid: number | undefined;
  generation: number;
  report: { closed: number; moved: number; remaining: number; timedOut: boolean } | undefined;
}

/** Every code a HandoverError can carry; a RESULT or REFUSED with another code is reported as ERR_UPGRADE_REFUSED. */
const CODES: Readonly<Record<HandoverErrorCode, true>> = {
  ERR_HANDOVER_PROTOCOL: true,
  ERR_HANDOVER_CHANNEL_CLOSED: true,
  ERR_HANDOVER_VERSION: true,
  ERR_HANDOVER_DIR_UNSAFE: true,
  ERR_HANDOVER_INVALID_ARG: true,
  ERR_HANDOVER_INVALID_STATE: true,
  ERR_HANDOVER_UNSUPPORTED_RUNTIME: true,
  ERR_HANDOVER_NOT_MOVABLE: true,
  ERR_HANDOVER_SYSTEMD: true,
  ERR_UPGRADE_IN_PROGRESS: true,
  ERR_UPGRADE_REFUSED: true,
  ERR_UPGRADE_SUCCESSOR_EXITED: true,
  ERR_UPGRADE_READY_TIMEOUT: true,
  ERR_UPGRADE_SPAWN_FAILED: true,
  ERR_HANDOVER_STOPPED: true,
  ERR_UPGRADE_ROLLED_BACK: true,
  ERR_HANDOVER_NOT_RUNNING: true,
  ERR_HANDOVER_TIMEOUT: true,
};

function codeOf(code: string): HandoverErrorCode {
  return Object.hasOwn(CODES, code) ? (code as HandoverErrorCode) : 'ERR_UPGRADE_REFUSED';
}

function checkTimeout(timeout: number | undefined, fallback: number): number {
  if (timeout === undefined) return fallback;
  if (typeof timeout !== 'number' || !Number.isFinite(timeout) || timeout <= 0) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `timeout must be a positive number of milliseconds, got ${String(timeout)}`);
  return timeout;
}

/**
 * openControl connects to `dir/control.sock` and checks who answers: the process must run as the
 * uid that owns `dir` (the generation made it 0700 and its own), or it is not the generation.
 */
async function openControl(dir: string, timeout: number): Promise<{ session: ControlSession; peer: PeerCredentials }> {
  const absolute = path.resolve(dir);
  const socketPath = path.join(absolute, CONTROL_SOCKET);
  let owner: number;
  try {
    owner = fs.statSync(absolute).uid;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new HandoverError('ERR_HANDOVER_NOT_RUNNING', `no generation runs in ${absolute}: the directory does not exist`, { cause: err });
    throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot read ${absolute}: ${(err as Error).message}`, { cause: err });
  }
  let channel;
  try {
    channel = await connectChannelWithin(socketPath, timeout);
  } catch (err) {
    if (isNativeError(err) && err.code === 'ENOENT') throw new HandoverError('ERR_HANDOVER_NOT_RUNNING', `no generation runs in ${absolute}: there is no ${CONTROL_SOCKET}`, { cause: err });
    if (isNativeError(err) && err.code === 'ECONNREFUSED') throw new HandoverError('ERR_HANDOVER_NOT_RUNNING', `no generation runs in ${absolute}: nobody listens on ${CONTROL_SOCKET} (left by a process that crashed)`, { cause: err });
    if (isNativeError(err) && err.code === 'EACCES') throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot reach ${socketPath}: permission denied (run as the server's user, uid ${owner})`, { cause: err });
    if (isHandoverError(err, 'ERR_UPGRADE_READY_TIMEOUT')) throw new HandoverError('ERR_HANDOVER_TIMEOUT', err.message, { cause: err });
    throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot connect to ${socketPath}: ${(err as Error).message}`, { cause: err });
  }
  const session = new (require('./session') as typeof import('./session')).ControlSession(channel, 'client');
  let peer: PeerCredentials;
  try {
    peer = channel.peerCredentials();
  } catch (err) {
    session.close();
    throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot read the credentials of the process listening on ${socketPath}: ${(err as Error).message}`, { cause: err });
  }
  if (peer.uid !== owner) {
    session.close();
    throw new HandoverError('ERR_UPGRADE_REFUSED', `the process listening on ${socketPath} runs as uid ${peer.uid}, but ${absolute} belongs to uid ${owner}: not the generation`);
  }
  return { session, peer };
}

/** next reads the next answer of one of `types`; REFUSED becomes its error, a timeout ERR_HANDOVER_TIMEOUT, anything else out of turn ERR_HANDOVER_PROTOCOL. */
async function next<T extends 'STATUS_REPLY' | 'PROGRESS' | 'RESULT'>(session: ControlSession, types: readonly T[], deadline: number, what: string): Promise<MessageOf<T>> {
  let message: Message;
  try {
    message = await session.next(FROM_GENERATION, Math.max(1, deadline - Date.now()), what);
  } catch (err) {
    if (isHandoverError(err, 'ERR_UPGRADE_READY_TIMEOUT')) throw new HandoverError('ERR_HANDOVER_TIMEOUT', `timed out waiting for ${what}`, { cause: err });
    throw err;
  }
  if (message.type === 'REFUSED') throw new HandoverError(codeOf(message.code), `refused: ${message.reason}`);
  if (!(types as readonly string[]).includes(message.type)) {
    const err = new HandoverError('ERR_HANDOVER_PROTOCOL', `expected ${types.join(' or ')} (${what}), got ${message.type}`);
    session.fail(err);
    throw err;
  }
  return message as MessageOf<T>;
}

/** requestStatus asks the generation serving in `dir` what it is doing. `peer` is its credentials as this process sees them. */
export async function requestStatus(dir: string, options: ControlRequestOptions = {}): Promise<{ status: GenerationStatus; peer: PeerCredentials }> {
  const timeout = checkTimeout(options.timeout, STATUS_TIMEOUT);
  const deadline = Date.now() + timeout;
  const { session, peer } = await openControl(dir, timeout);
  try {
    await session.send({ type: 'STATUS', version: protocolVersion() });
    const reply = await next(session, ['STATUS_REPLY'], deadline, 'the status');
    return { status: reply.status, peer };
  } finally {
    session.close();
  }
}

/**
 * requestUpgrade asks the generation serving in `dir` to upgrade and resolves once it retired with
 * its successor serving; it rejects with the failure's HandoverError code (the generation serves
 * on). `onProgress` hears each step. Nothing is left running here whatever happens: the upgrade
 * itself belongs to the generation (a timeout here does not stop it).
 */
export async function requestUpgrade(dir: string, options: ControlRequestOptions & { onProgress?: (progress: UpgradeProgress) => void } = {}): Promise<UpgradeOutcome> {
  const timeout = checkTimeout(options.timeout, UPGRADE_TIMEOUT);
  const deadline = Date.now() + timeout;
  const before = (await requestStatus(dir, { timeout })).status;
  const { session } = await openControl(dir, Math.max(1, deadline - Date.now()));
  let successor: number | undefined;
  let ready = false;
  try {
    await session.send({ type: 'UPGRADE', version: protocolVersion() });
    for (;;) {
      let message;
      try {
        message = await next(session, ['PROGRESS', 'RESULT'], deadline, 'the upgrade to finish');
      } catch (err) {
        // Past READY the predecessor may exit before its RESULT is out: the new generation tells.
        if (!ready || !isHandoverError(err, 'ERR_HANDOVER_CHANNEL_CLOSED')) throw err;
        const now = (await requestStatus(dir, { timeout: Math.max(1, deadline - Date.now()) })).status;
        if (now.generation <= before.generation && now.pid === before.pid) throw err;
        return { from: { pid: before.pid, generation: before.generation }, pid: successor, generation: now.generation, report: undefined };
      }
      if (message.type === 'PROGRESS') {
        if (message.step === 'ready') {
          ready = true;
          successor = message.pid;
        }
        options.onProgress?.({ step: message.step, ...(message.pid === undefined ? {} : { pid: message.pid }), ...(message.connections === undefined ? {} : { connections: message.connections }) });
        continue;
      }
      if (!message.ok) throw new HandoverError(codeOf(message.code ?? ''), message.reason ?? 'the upgrade failed');
      return { from: { pid: before.pid, generation: before.generation }, pid: message.pid ?? successor, generation: message.generation ?? before.generation + 1, report: message.report };
    }
  } finally {
    session.close();
  }
}
