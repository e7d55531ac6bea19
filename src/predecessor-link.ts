// The successor's end of the exchange: find the predecessor in `dir`, say HELLO, receive its
// listeners, say READY and wait for the acknowledgement, then take the messages of the move phase.
import * as path from 'node:path';
import { createDebug } from './log';
import { connectChannelWithin } from './channel-endpoints';
import type { FdChannel } from './channel';
import { CONTROL_SOCKET, removeStaleSocket } from './control-dir';
import { HandoverError, isHandoverError, type HandoverErrorCode } from './errors';
import { accepts, FROM_PREDECESSOR, type LinkPhase } from './lifecycle';
import { closeFds, describeFd, type InheritedListener } from './listeners';
import { isNativeError } from './native';
import type { Message } from './protocol';
import type { ControlSession } from './session';
import { fault } from './faults';
import { waitGone, type ProcessLayer } from './spawner';

const debug = createDebug('handover:predecessor-link');

const REFUSAL_CODES: ReadonlySet<string> = new Set<HandoverErrorCode>(['ERR_UPGRADE_IN_PROGRESS', 'ERR_UPGRADE_REFUSED', 'ERR_HANDOVER_VERSION', 'ERR_UPGRADE_READY_TIMEOUT']);

/** PredecessorLink is the connection to the running generation, seen from its successor. */
export class PredecessorLink {
  private phaseValue: LinkPhase = 'offered';
  private handler: ((message: Message) => void) | undefined;

  private constructor(
    readonly session: ControlSession,
    /** The predecessor's pid as it announced it. */
    readonly pid: number,
    /** Its pid as this process sees it (0 in another PID namespace). */
    readonly peerPid: number,
  ) {}

  get phase(): LinkPhase {
    return this.phaseValue;
  }

  /**
   * connect looks for a running generation in `dir` and receives its listeners. Resolves with
   * undefined when there is none (no control.sock, or a stale one left by a crash: removed), or
   * when the predecessor went away before answering.
   */
  static async connect(dir: string, options: { readyTimeout: number; allowedUids: ReadonlySet<number>; os: ProcessLayer }): Promise<{ link: PredecessorLink; listeners: InheritedListener[]; warnings: HandoverError[]; generation: number | undefined } | undefined> {
    const socketPath = path.join(dir, CONTROL_SOCKET);
    let channel: FdChannel;
    try {
      channel = await connectChannelWithin(socketPath, options.readyTimeout);
    } catch (err) {
      if (isNativeError(err) && err.code === 'ENOENT') {
        debug('no predecessor in %s', dir);
        return undefined;
      }
      if (isNativeError(err) && err.code === 'ECONNREFUSED') {
        debug('stale control socket in %s', dir);
        removeStaleSocket(dir);
        return undefined;
      }
      if (isHandoverError(err)) throw err;
      throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot connect to the predecessor at ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
    // Loaded here, not at import: a first generation finds no predecessor and never needs them (start-up cost).
    const { ControlSession } = require('./session') as typeof import('./session');
    const { PROTOCOL_VERSION } = require('./protocol') as typeof import('./protocol');
    const session = new ControlSession(channel, 'successor');
    let peer;
    try {
      peer = channel.peerCredentials();
    } catch (err) {
      session.close();
      throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot read the credentials of the process listening on ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
    if (!options.allowedUids.has(peer.uid)) {
      session.close();
      throw new HandoverError('ERR_UPGRADE_REFUSED', `the process listening on ${socketPath} runs as uid ${peer.uid}, which is not allowed`);
    }
    fault('connected', 'successor', peer.pid);
    let reply: Extract<Message, { type: 'LISTENERS' | 'REFUSED' }>;
    try {
      await session.send({ type: 'HELLO', version: PROTOCOL_VERSION, pid: process.pid });
      fault('hello', 'successor', peer.pid);
      reply = await session.next(['LISTENERS', 'REFUSED'], options.readyTimeout, 'the listeners of the predecessor');
    } catch (err) {
      session.close();
      if (isHandoverError(err, 'ERR_HANDOVER_CHANNEL_CLOSED')) {
        // The predecessor went away between connect and reply (it crashed): start fresh, once it has
        // finished dying, or its listening sockets would still hold the ports.
        debug('predecessor closed before answering; starting fresh');
        if (peer.pid > 0 && !(await waitGone(options.os, peer.pid, options.readyTimeout))) {
          throw new HandoverError('ERR_UPGRADE_REFUSED', `the predecessor (pid ${peer.pid}) closed the control channel before answering and still runs`);
        }
        return undefined;
      }
      throw err;
    }
    if (reply.type === 'REFUSED') {
      session.close();
      const code = (REFUSAL_CODES.has(reply.code) ? reply.code : 'ERR_UPGRADE_REFUSED') as HandoverErrorCode;
      throw new HandoverError(code, `the predecessor (pid ${peer.pid}) refused the upgrade: ${reply.reason}`);
    }
    fault('listeners', 'successor', peer.pid);
    const listeners: InheritedListener[] = [];
    const warnings: HandoverError[] = [];
    for (const [index, entry] of reply.listeners.entries()) {
      const fd = reply.fds[index]!;
      let info;
      try {
        info = describeFd(fd);
      } catch {
        info = undefined;
      }
      // A UDP socket does not listen; everything else must be a listening stream socket.
      const fits = entry.kind === 'udp' ? info?.type === 'dgram' && (info.family === 'inet' || info.family === 'inet6') : info !== undefined && info.listening && info.type === 'stream';
      if (!fits) {
        closeFds([fd]);
        warnings.push(new HandoverError('ERR_HANDOVER_PROTOCOL', `the predecessor sent ${entry.key} but its fd is not a ${entry.kind === 'udp' ? 'UDP' : 'listening stream'} socket; ignored`));
        continue;
      }
      listeners.push({ key: entry.key, kind: entry.kind, fd, info: info! });
    }
    debug('inherited %d listeners from pid %d', listeners.length, reply.pid);
    return { link: new PredecessorLink(session, reply.pid, peer.pid), listeners, warnings, generation: reply.generation };
  }

  /**
   * ready says READY and waits for the acknowledgement: from then on the predecessor no longer
   * accepts. Rejects with ERR_UPGRADE_REFUSED when refused, or when the predecessor closed the link
   * while still alive (it dropped us: two generations must never serve).
   */
  async ready(readyTimeout: number, predecessorGone: () => Promise<boolean>): Promise<void> {
    const { session } = this;
    let reply;
    try {
      if (!session.isClosed) {
        // Loaded here, not at import: a first generation never loads the connection adopter (start-up cost).
        const { readyCredit } = require('./connections') as typeof import('./connections');
        await session.send({ type: 'READY', pid: process.pid, ...readyCredit() });
        fault('ready-sent', 'successor', this.peerPid);
      }
      reply = await session.next(['READY_ACK', 'REFUSED'], readyTimeout, 'the predecessor to stop accepting');
    } catch (err) {
      // The caller says ABORT and closes: the predecessor may have stopped accepting on READY.
      if (!isHandoverError(err, 'ERR_HANDOVER_CHANNEL_CLOSED')) throw err;
      // Closed without an answer. Serving alone is right only if the predecessor is really gone.
      if (!(await predecessorGone())) {
        throw new HandoverError('ERR_UPGRADE_REFUSED', `the predecessor (pid ${this.pid}) closed the control channel before acknowledging READY; it still serves`);
      }
      debug('predecessor gone before READY_ACK; serving alone');
      this.phaseValue = 'released';
      return;
    }
    if (reply.type === 'REFUSED') {
      throw new HandoverError('ERR_UPGRADE_REFUSED', `the predecessor refused READY: ${reply.reason}`);
    }
    fault('ready-acked', 'successor', this.peerPid);
    this.phaseValue = 'ready';
  }

  /** onMessage installs the handler of the move phase (CONN, WRITE); BYE and closes go to onEnd's handler. */
  start(handler: (message: Message) => void, ended: (clean: boolean, error: Error | undefined) => void): void {
    this.handler = handler;
    if (this.session.isClosed) {
      // The link ended in the same read as READY_ACK: report it all the same.
      this.phaseValue = 'released';
      const error = this.session.channel.error;
      process.nextTick(() => ended(false, error));
      return;
    }
    this.session.on('close', (error) => {
      this.phaseValue = 'released';
      ended(false, error);
    });
    this.session.onMessage((message) => {
      if (this.phaseValue !== 'ready') return;
      if (!accepts(FROM_PREDECESSOR, this.phaseValue, message)) {
        if ('fds' in message) closeFds(message.fds);
        this.session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `unexpected ${message.type} from the predecessor while ${this.phaseValue}`));
        return;
      }
      if (message.type === 'BYE') {
        debug('predecessor said BYE: %s', message.reason);
        fault('retired', 'successor', this.peerPid);
        this.phaseValue = 'released';
        this.session.removeAllListeners('close');
        this.session.close();
        ended(true, undefined);
        return;
      }
      this.handler?.(message);
    });
  }

  /** commit tells the predecessor this process owns control.sock and pid now: it may finish retiring. */
  commit(): void {
    if (this.phaseValue === 'ready') void this.session.send({ type: 'COMMIT' }).catch(() => undefined);
  }

  /** abort tells the predecessor this process gives up (its listeners are closed): it resumes serving. */
  async abort(reason: string): Promise<void> {
    if (this.session.isClosed) return;
    this.phaseValue = 'released';
    await this.session.send({ type: 'ABORT', reason }).catch(() => undefined);
    this.session.close();
  }

  /** bye tells the predecessor this process leaves the exchange but serves on (stop() after ready()). */
  async bye(reason: string): Promise<void> {
    if (this.session.isClosed) return;
    this.phaseValue = 'released';
    await this.session.send({ type: 'BYE', reason }).catch(() => undefined);
    this.session.close();
  }

  close(): void {
    this.phaseValue = 'released';
    this.session.close();
  }
}
