// The predecessor's side of moving connections over one control session: decide and freeze,
// queue in the outbox, match CONN_ACKs, close this copy on ACK or hand the connection back.
import * as net from 'node:net';
import { createDebug } from '../log';
import { HandoverError } from '../errors';
import type { Message } from '../protocol';
import type { ControlSession } from '../session';
import { detachHandle, runtimeCapabilities, socketFd, socketProblems } from '../runtime';
import { fault } from '../faults';
import { Outbox } from './outbox';
import { freeze, waitWritesFlushed, writesFlushed } from './freeze';
import { MoveWrites } from './writes';
import type { Moving, TransferOptions } from './types';

const debug = createDebug('handover:connections');

/** Acknowledged copies closed per turn of the event loop once nothing waits to be sent. */
const RELEASE_SLICE = 256;

export interface MoverHooks {
  /** The listener key of a tracked socket, or undefined for a socket of no server given to listen(). */
  keyOf(socket: net.Socket): string | undefined;
  /** Called when the successor acknowledged a socket (it now belongs to the successor). */
  moved(socket: net.Socket): void;
  /** The successor's pid as this process sees it (for test fault points). */
  readonly peerPid: number | undefined;
}

export interface MoverOptions {
  /** The fd credit the successor announced in READY; absent: it does not announce (a fixed window). */
  credit?: number | undefined;
}

/**
 * checkInternals: null when this Node.js has every internal a move relies on (runtime.ts checks
 * them once), else the error that names what changed. Without a conclusive self-test (no fd was
 * free for it) the socket about to move is checked itself.
 */
export function checkInternals(socket?: net.Socket): HandoverError | null {
  const capabilities = runtimeCapabilities();
  let problems: string[];
  if (capabilities.conclusive || !socket) problems = capabilities.moveConnections ? [] : capabilities.problems;
  else problems = socketProblems(socket);
  if (problems.length === 0) return null;
  return new HandoverError('ERR_HANDOVER_UNSUPPORTED_RUNTIME', `cannot move connections: ${problems.join('; ')}`);
}

/**
 * ConnectionMover batches CONN frames, matches CONN_ACKs, forwards late writes, and on NACK or a
 * lost successor gives every unacknowledged connection back to the application, untouched.
 */
export class ConnectionMover {
  private nextId = 1;
  private readonly moving = new Map<number, Moving>();
  private readonly forwarding = new Map<number, Moving>();
  /** Sent, then closed here at the settle timeout without an answer: a late answer is no error. */
  private readonly abandoned = new Set<number>();
  private readonly writes: MoveWrites;
  private readonly outbox: Outbox;
  private closed = false;
  private settling = false;
  private readonly flushing = new Set<Moving>();
  private settled: (() => void) | undefined;
  private readonly claimed = new WeakSet<net.Socket>();
  /** Acknowledged connections whose copy here is not closed yet (see release()). */
  private readonly released: net.Socket[] = [];
  private releaseScheduled = false;

  constructor(
    private readonly session: ControlSession,
    private readonly hooks: MoverHooks,
    options: MoverOptions = {},
  ) {
    this.writes = new MoveWrites(session, hooks.peerPid);
    // A connection that could not be sent stays here (unless already answered or handed back).
    this.outbox = new Outbox(session, hooks.peerPid, options.credit, () => this.writes.maxBody, (entry, err) => {
      if (this.moving.delete(entry.id)) this.giveBack(entry, err);
    });
  }

  /** transfer moves one socket; resolves when the successor acknowledged it. */
  transfer(socket: net.Socket, options: TransferOptions = {}): Promise<void> {
    try {
      return this.decide(socket, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private decide(socket: net.Socket, options: TransferOptions): Promise<void> {
    if (!(socket instanceof net.Socket)) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'transferConnection() needs a net.Socket');
    if (this.settling) throw new HandoverError('ERR_HANDOVER_INVALID_STATE', 'retiring is over: the connection stays here');
    if (this.closed) throw new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor is gone; the connection stays here');
    if (this.claimed.has(socket)) throw new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the connection is already being moved');
    if (socket.destroyed || socketFd(socket) < 0) {
      throw new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the socket has no open handle (destroyed, or not a TCP/unix stream)');
    }
    if (socket.readableEnded || socket.writableEnded || socket.writableFinished) {
      throw new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the socket is half-closed');
    }
    const unsupported = checkInternals(socket);
    if (unsupported) throw unsupported;
    const key = this.hooks.keyOf(socket);
    if (key === undefined) throw new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the socket does not belong to a server given to upgrader.listen()');
    if (options.pending !== undefined && !Buffer.isBuffer(options.pending)) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.pending must be a Buffer');
    this.claimed.add(socket);
    // 1. No byte is read by this process after the decision (freeze.ts).
    const frozen = freeze(socket);
    const entry: Moving = {
      id: this.nextId++,
      socket,
      key,
      pending: options.pending && options.pending.length > 0 ? Buffer.concat([options.pending, frozen.buffered]) : frozen.buffered,
      state: options.state,
      lateWrites: options.lateWrites === true,
      thaw: frozen.thaw,
      phase: 'collecting',
      carried: [],
      carriedBytes: 0,
      held: [],
      writeSeq: 0,
      resolve: () => undefined,
      reject: () => undefined,
    };
    // 2. Writes from now on are ours to deliver (carried, held or forwarded); only the write
    //    already inside libuv must reach the kernel before the fd travels.
    this.writes.intercept(entry);
    const promise = new Promise<void>((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    const enqueue = (): void => {
      if (this.closed || this.settling) {
        this.giveBack(entry, new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor is gone; the connection stays here'));
        return;
      }
      this.moving.set(entry.id, entry);
      this.outbox.push(entry);
    };
    // The usual case (nothing unwritten) stays synchronous: no turn of the loop per connection.
    if (writesFlushed(socket)) enqueue();
    else {
      // A client that does not read can keep this wait going: close() and settle() end it.
      this.flushing.add(entry);
      waitWritesFlushed(socket, () => !this.flushing.has(entry)).then(
        () => {
          if (!this.flushing.delete(entry)) return; // handed back meanwhile
          enqueue();
        },
        (err: Error) => {
          this.flushing.delete(entry);
          this.writes.giveBack(entry);
          entry.thaw();
          this.claimed.delete(socket);
          entry.reject(err);
        },
      );
    }
    return promise;
  }

  /** onMessage handles CONN_ACK and WRITE_ACK from the successor; false for anything else. */
  onMessage(message: Message): boolean {
    if (message.type === 'CONN_ACK') {
      // A CONN_ACK with no ids is a credit update (the successor has fds to spare again).
      const answersBatch = message.acked.length + message.refused.length > 0;
      this.outbox.answered(answersBatch, message.credit);
      for (const id of message.acked) this.onAck(id);
      for (const { id, reason } of message.refused) this.onNack(id, reason);
      if (answersBatch) fault('conn-acked', 'predecessor', this.hooks.peerPid);
      // Out of fds to dup: the acknowledged copies are closed first, to make room.
      if (this.outbox.starved) this.closeReleased(Infinity);
      this.outbox.flush();
      this.release();
      this.settled?.();
      return true;
    }
    if (message.type === 'WRITE_ACK') {
      this.writes.onWriteAck(message.id, message.seq);
      return true;
    }
    return false;
  }

  private onAck(id: number): void {
    const entry = this.moving.get(id);
    if (!entry) {
      if (this.abandoned.delete(id)) return; // answered late: the successor has it, ours is closed
      this.session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `CONN_ACK for unknown connection ${id}`));
      return;
    }
    this.moving.delete(id);
    const { socket } = entry;
    const forwards = entry.lateWrites || entry.held.length > 0;
    this.writes.acked(entry);
    this.hooks.moved(socket);
    if (forwards) {
      // The socket object lives on as a forwarder until the application lets go of it (or, without
      // lateWrites, until the writes it made during the move are delivered).
      this.forwarding.set(id, entry);
      detachHandle(socket);
      socket.once('close', () => this.forwarding.delete(id));
      if (!entry.lateWrites) socket.end();
    } else {
      this.released.push(socket);
    }
    entry.resolve();
  }

  /**
   * release closes the copies here of acknowledged connections, off the critical path: while
   * connections still wait to be sent, sending them comes first (a socket's destroy() and its
   * 'close' listeners cost more than its move); then RELEASE_SLICE per turn of the event loop.
   * Until closed, a copy is frozen (it reads nothing) and its writes go to the successor.
   */
  private release(): void {
    if (this.releaseScheduled || this.released.length === 0) return;
    if (this.outbox.queued > 0 && !this.closed && !this.settling) return; // the next CONN_ACK comes back here
    this.releaseScheduled = true;
    setImmediate(() => {
      this.releaseScheduled = false;
      this.closeReleased(RELEASE_SLICE);
      this.release();
    });
  }

  private closeReleased(count: number): void {
    // Close only this process's copy of the fd: nothing goes on the wire, the successor holds
    // the connection. Never end(), shutdown() or a reset.
    for (const socket of this.released.splice(0, count)) socket.destroy();
  }

  private onNack(id: number, reason: string): void {
    const entry = this.moving.get(id);
    if (!entry) {
      if (this.abandoned.delete(id)) debug('connection %d refused after it was closed here: lost', id);
      return;
    }
    this.moving.delete(id);
    this.giveBack(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the successor refused the connection: ${reason}`));
  }

  /** giveBack: the connection stays here, exactly as it was (buffered bytes first, writes out, its timeout). */
  private giveBack(entry: Moving, err: HandoverError): void {
    this.writes.giveBack(entry);
    entry.thaw();
    this.claimed.delete(entry.socket);
    debug('connection %d stays: %s', entry.id, err.message);
    entry.reject(err);
  }

  /**
   * settle stops new moves and waits (at most timeoutMs) until every connection already sent has
   * its answer. At the timeout, connections still unanswered are never handed back (if the answer
   * is only late, the successor reads them): they stay frozen and this copy is closed, plainly.
   */
  settle(timeoutMs: number): Promise<void> {
    this.settling = true;
    this.release();
    const err = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'retiring ended before the connection could move; it stays here');
    this.giveBackFlushing(err);
    for (const entry of this.outbox.takeAll()) {
      this.moving.delete(entry.id);
      this.giveBack(entry, err);
    }
    return new Promise((resolve) => {
      const check = (): void => {
        if (this.closed || this.moving.size === 0) {
          clearTimeout(timer);
          this.settled = undefined;
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.settled = undefined;
        this.abandonUnanswered();
        resolve();
      }, timeoutMs);
      this.settled = check;
      check();
    });
  }

  private abandonUnanswered(): void {
    const err = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor did not answer in time: this copy of the connection was closed (the successor may hold it)');
    for (const entry of [...this.moving.values()]) {
      this.moving.delete(entry.id);
      this.abandoned.add(entry.id);
      debug('connection %d unanswered at the settle timeout: closing this copy, frozen', entry.id);
      this.writes.abandon(entry, err);
      entry.socket.destroy();
      entry.reject(err);
    }
  }

  /**
   * close: the session ended. Connections not yet sent stay here; late writes fail. Sent but
   * unanswered ones are handed back when the successor is gone, but with `successorAlive` (it left
   * the link alive: it may hold them) they are closed here, frozen, as at the settle timeout.
   */
  close(options: { successorAlive?: boolean } = {}): void {
    if (this.closed) return;
    this.closed = true;
    const err = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor went away before acknowledging the connection; it stays here');
    this.giveBackFlushing(err);
    this.outbox.close();
    for (const entry of this.outbox.takeAll()) {
      this.moving.delete(entry.id);
      this.giveBack(entry, err);
    }
    if (options.successorAlive === true) this.abandonUnanswered();
    for (const entry of [...this.moving.values()]) {
      this.moving.delete(entry.id);
      // Queued entries have no dup yet; sent ones' dups belong to the channel.
      this.giveBack(entry, err);
    }
    this.writes.close();
    this.closeReleased(Infinity);
    for (const entry of this.forwarding.values()) entry.socket.destroy();
    this.forwarding.clear();
    this.settled?.();
  }

  private giveBackFlushing(err: HandoverError): void {
    for (const entry of [...this.flushing]) {
      this.flushing.delete(entry);
      this.giveBack(entry, err);
    }
  }
}
