// The successor's side of moving connections: check and adopt the fds of each CONN frame, answer
// with CONN_ACK (and how many more fds it can take), and only then let the sockets read.
import * as net from 'node:net';
import createDebug from 'debug';
import { binding } from '../native';
import { HandoverError } from '../errors';
import { closeFds } from '../listeners';
import type { ConnEntry, Message } from '../protocol';
import type { ControlSession } from '../session';
import { adoptSocket, attachToServer, serverAllowsHalfOpen } from '../runtime';
import { fault } from '../faults';
import { fdCredit } from './credit';
import type { AdoptHandler } from './types';

const debug = createDebug('handover:connections');

const EMPTY = Buffer.alloc(0);
/** How often a successor out of fd credit looks again, to tell the predecessor once it has some. */
const CREDIT_RECHECK_MS = 200;

export interface AdopterHooks {
  /** The server registered for a key, and its adopt handler if it has one. */
  serverFor(key: string): { server: net.Server; adopt: AdoptHandler | undefined; afterAdopt?: (socket: net.Socket) => void } | undefined;
  /** Count an adopted socket as one of this process's connections. */
  track(socket: net.Socket, key: string): void;
  /** Report an adoption that failed after the ACK (the application's handler threw). */
  failed(err: HandoverError): void;
  /** The predecessor's pid as this process sees it (for test fault points). */
  readonly peerPid: number | undefined;
}

type Target = NonNullable<ReturnType<AdopterHooks['serverFor']>>;

/** readyCredit: the fd credit to announce in READY (nothing where this platform cannot tell). */
export function readyCredit(): { credit?: number } {
  const credit = fdCredit();
  return credit === undefined ? {} : { credit };
}

/** Why a received fd cannot be a moved connection (not a connected stream socket), or undefined. */
function unfitConnection(fd: number): string | undefined {
  try {
    const info = binding().socketInfo(fd);
    if (info.type !== 'stream') return `the fd is a ${info.type} socket, not a stream`;
    if (info.family === 'unknown') return 'the fd is a socket of an unknown family';
    if (info.listening) return 'the fd is a listening socket, not a connection';
    return undefined;
  } catch (err) {
    return `the fd is not a socket (${(err as Error).message})`;
  }
}

/**
 * ConnectionAdopter adopts the fds of a CONN frame, acknowledges the batch, and only once the ACK
 * is in the kernel lets the sockets read (so a successor that dies before acknowledging has read
 * nothing, and the predecessor can keep serving them).
 */
export class ConnectionAdopter {
  private readonly adopted = new Map<number, net.Socket>();
  private readonly batches: Extract<Message, { type: 'CONN' }>[] = [];
  private adopting = false;
  /** The last credit announced was 0: look again until there is some, then say so. */
  private creditTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly session: ControlSession,
    private readonly hooks: AdopterHooks,
  ) {
    session.once('close', () => this.stopCreditWatch());
    // READY may already have said 0: the predecessor waits for word that there is room.
    if (fdCredit() === 0) this.watchCredit();
  }

  onMessage(message: Message): boolean {
    if (message.type === 'CONN') {
      // One batch at a time, with a turn of the event loop between: several CONN frames can arrive
      // in one read, and this process must keep serving while it adopts (and a crash loses at
      // most the batch being adopted).
      this.batches.push(message);
      if (!this.adopting) this.nextBatch();
      return true;
    }
    if (message.type === 'WRITE') {
      const socket = this.adopted.get(message.id);
      const ack = (): void => {
        void this.session.send({ type: 'WRITE_ACK', id: message.id, seq: message.seq }).catch(() => undefined);
      };
      if (!socket || socket.destroyed) {
        // The client is gone: nothing can deliver these bytes; say so by acknowledging (the write is moot).
        debug('late write for closed connection %d dropped', message.id);
        ack();
        return true;
      }
      socket.write(message.data, ack);
      fault('late-write', 'successor', this.hooks.peerPid);
      return true;
    }
    return false;
  }

  private nextBatch(): void {
    const batch = this.batches.shift();
    if (!batch) {
      this.adopting = false;
      return;
    }
    this.adopting = true;
    this.adoptBatch(batch, () => setImmediate(() => this.nextBatch()));
  }

  private adoptBatch(message: Extract<Message, { type: 'CONN' }>, done: () => void): void {
    const acked: number[] = [];
    const refused: { id: number; reason: string }[] = [];
    const started: { socket: net.Socket; entry: ConnEntry; pending: Buffer; unflushed: Buffer; target: Target }[] = [];
    let offset = 0;
    message.conns.forEach((entry, index) => {
      const fd = message.fds[index]!;
      const pending = message.body.subarray(offset, offset + entry.pendingLength);
      offset += entry.pendingLength;
      const unflushed = message.body.subarray(offset, offset + entry.writeLength);
      offset += entry.writeLength;
      const refuse = (reason: string): void => {
        closeFds([fd]);
        refused.push({ id: entry.id, reason });
      };
      const target = this.hooks.serverFor(entry.key);
      if (!target) return refuse(`no server listens on ${entry.key} here`);
      const unfit = unfitConnection(fd);
      if (unfit !== undefined) return refuse(unfit);
      let socket: net.Socket;
      try {
        // manualStart: no read until the predecessor knows the connection is ours.
        socket = adoptSocket(fd, serverAllowsHalfOpen(target.server));
      } catch (err) {
        return refuse(`cannot adopt the fd: ${(err as Error).message}`);
      }
      acked.push(entry.id);
      this.adopted.set(entry.id, socket);
      socket.once('close', () => this.adopted.delete(entry.id));
      started.push({ socket, entry, pending: pending.length > 0 ? Buffer.from(pending) : EMPTY, unflushed: unflushed.length > 0 ? Buffer.from(unflushed) : EMPTY, target });
    });
    debug('adopted %d, refused %d', acked.length, refused.length);
    const start = (): void => {
      fault('conn-acked', 'successor', this.hooks.peerPid);
      for (const { socket, entry, pending, unflushed, target } of started) this.start(socket, entry, pending, unflushed, target);
    };
    // The channel pauses so that this process serves between batches instead of adopting only.
    this.session.channel.pause();
    const credit = fdCredit();
    this.session
      .send({ type: 'CONN_ACK', acked, refused, ...(credit === undefined ? {} : { credit }) })
      .then(start, (err: Error) => {
        // Without a delivered ACK the predecessor keeps these connections: two readers would
        // corrupt them, so close our copies (a plain close; the predecessor still holds each one).
        debug('CONN_ACK not sent (%s); giving the connections up', err.message);
        for (const { socket } of started) socket.destroy();
      })
      .catch((err: Error) => debug('adoption failed: %s', err.message))
      .finally(() => {
        setImmediate(() => this.session.channel.resume());
        if (credit === 0) this.watchCredit();
        done();
      });
  }

  private start(socket: net.Socket, entry: ConnEntry, pending: Buffer, unflushed: Buffer, target: Target): void {
    // The predecessor's unflushed writes go out before anything this process writes.
    if (unflushed.length > 0) socket.write(unflushed);
    // What net.Server does for a connection it accepted: count it, link it to its server.
    attachToServer(socket, target.server);
    this.hooks.track(socket, entry.key);
    try {
      if (target.adopt) {
        target.adopt(socket, { key: entry.key, pending, state: entry.state });
      } else {
        if (pending.length > 0) socket.unshift(pending);
        target.server.emit('connection', socket);
        target.afterAdopt?.(socket);
        // Reading starts now; unshifted bytes are delivered first.
        socket.resume();
      }
    } catch (err) {
      // The application's handler threw: that one connection is lost, not the batch, not the process.
      this.hooks.failed(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `adopting a connection of ${entry.key} threw: ${(err as Error).message}`, { cause: err }));
      socket.destroy();
    }
  }

  /**
   * watchCredit: this process announced no credit, so the predecessor keeps its remaining
   * connections until told otherwise; tell it as soon as fds are free again.
   */
  private watchCredit(): void {
    if (this.creditTimer || this.session.isClosed) return;
    this.creditTimer = setInterval(() => {
      if (this.adopting || this.session.isClosed) return;
      const credit = fdCredit();
      if (credit === undefined || credit === 0) return;
      this.stopCreditWatch();
      void this.session.send({ type: 'CONN_ACK', acked: [], refused: [], credit }).catch(() => undefined);
    }, CREDIT_RECHECK_MS);
    this.creditTimer.unref();
  }

  private stopCreditWatch(): void {
    clearInterval(this.creditTimer);
    this.creditTimer = undefined;
  }
}
