// The predecessor's outgoing CONN batches: as many connections per frame as fit, within the
// successor's fd credit and this process's free fds; a connection that cannot leave yet waits.
import { createDebug } from '../log';
import { binding, isNativeError } from '../native';
import { HandoverError } from '../errors';
import type { ConnEntry } from '../protocol';
import type { ControlSession } from '../session';
import { deferClose, socketFd } from '../runtime';
import { fault } from '../faults';
import { CreditWindow } from './credit';
import type { Moving } from './types';

const debug = createDebug('handover:connections');

/** Most connections per CONN frame: the kernel's limit of fds per sendmsg. */
const BATCH = 253;
/**
 * CONN frames sent ahead of their CONN_ACKs in any case; more leave while the kernel takes them at
 * once (nothing queued in the channel: their dups are closed already, so they cost this process no
 * fd), within the successor's credit.
 */
const WINDOW = 8;

function isFdExhaustion(err: unknown): boolean {
  return isNativeError(err) && (err.code === 'EMFILE' || err.code === 'ENFILE');
}

/**
 * Outbox queues connections ready to travel and sends them in CONN frames. It never needs more
 * fds than there are: it dups what fits and waits for answers to free more.
 */
export class Outbox {
  private readonly queue: Moving[] = [];
  private readonly credit: CreditWindow;
  private flushScheduled = false;
  private closed = false;
  /** The last flush stopped because this process had no free fd to dup: answers must free some first. */
  starved = false;
  /** Connections at the front of the queue that jumped it (decided after the queue's bulk). */
  private urgent = 0;
  /** A push happened in this turn of the event loop (the bulk of a retirement is one turn). */
  private pushedThisTurn = false;
  /** This turn's pushes found connections of an earlier turn still waiting: they go ahead. */
  private lateTurn = false;

  /**
   * `stays` hands a connection back (it could not be sent); `maxBody` is what one frame's body
   * may carry.
   */
  constructor(
    private readonly session: ControlSession,
    private readonly peerPid: number | undefined,
    credit: number | undefined,
    private readonly maxBody: () => number,
    private readonly stays: (entry: Moving, err: HandoverError) => void,
  ) {
    this.credit = new CreditWindow(credit);
  }

  /**
   * push queues a connection. One decided in a later turn than the connections still waiting (a
   * busy one that reached its message boundary after retirement began) goes ahead of them: its
   * client is waiting for an answer, the idle ones are not.
   */
  push(entry: Moving): void {
    if (!this.pushedThisTurn) {
      this.pushedThisTurn = true;
      this.lateTurn = this.queue.length > this.urgent;
      setImmediate(() => (this.pushedThisTurn = false));
    }
    if (this.lateTurn) this.queue.splice(this.urgent++, 0, entry);
    else this.queue.push(entry);
    // A full batch leaves at once, so the successor adopts while this process still decides.
    if (this.queue.length >= BATCH) this.flush();
    else this.scheduleFlush();
  }

  /** Connections decided and not yet sent. */
  get queued(): number {
    return this.queue.length;
  }

  /** takeAll empties the queue (nothing in it has left): retirement is over, or the session ended. */
  takeAll(): Moving[] {
    this.urgent = 0;
    return this.queue.splice(0);
  }

  close(): void {
    this.closed = true;
  }

  /** answered: a CONN_ACK arrived (answering a batch, or only updating the credit). */
  answered(answersBatch: boolean, credit: number | undefined): void {
    this.credit.answered(answersBatch, credit);
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // Collect every transfer decided in this turn of the loop into as few frames as possible.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  /**
   * flush sends queued connections while the successor has credit and this process has fds to
   * dup. A dup failing with EMFILE is no failure: the connection waits (frozen, in order) until an
   * answer frees fds here (each sent dup is closed once in the kernel, each acked socket on ACK).
   * With nothing in flight to free one, it lends the socket's own fd instead of a dup.
   */
  flush(): void {
    this.starved = false;
    const maxBody = this.maxBody();
    while (this.queue.length > 0 && !this.closed && (this.credit.batchesInFlight < WINDOW || this.session.channel.pendingChunks === 0)) {
      const room = Math.min(BATCH, this.credit.available);
      if (room <= 0) {
        debug('waiting for fd credit from the successor (%d queued)', this.queue.length);
        return; // the next CONN_ACK or credit update flushes again
      }
      const native = binding();
      const batch: Moving[] = [];
      const fds: number[] = [];
      let bodyBytes = 0;
      let starved = false;
      while (this.queue.length > 0 && batch.length < room) {
        const entry = this.queue[0]!;
        const bytes = entry.pending.length + entry.carriedBytes;
        if (bytes > maxBody) {
          this.next();
          this.stays(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the connection's pending and unflushed bytes (${bytes}) exceed what one frame carries (${maxBody})`));
          continue;
        }
        if (batch.length > 0 && bodyBytes + bytes > maxBody) break;
        let fd: number;
        try {
          // A dup travels: the socket's own fd may be closed by the application meanwhile.
          fd = native.dup(socketFd(entry.socket));
        } catch (err) {
          if (isFdExhaustion(err)) {
            starved = true;
            break;
          }
          this.next();
          this.stays(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `cannot duplicate the connection's fd: ${(err as Error).message}`, { cause: err }));
          continue;
        }
        this.next();
        batch.push(entry);
        fds.push(fd);
        bodyBytes += bytes;
      }
      if (batch.length > 0) {
        this.send(batch, fds, true);
        continue; // sent dups are closed as soon as they are in the kernel: try again
      }
      if (!starved) continue;
      if (this.credit.batchesInFlight > 0) {
        this.starved = true;
        debug('no free fd to dup; waiting for answers (%d queued)', this.queue.length);
        return;
      }
      this.lend(this.next());
    }
  }

  /** next takes the connection at the front of the queue. */
  private next(): Moving {
    if (this.urgent > 0) this.urgent--;
    return this.queue.shift()!;
  }

  /** lend sends one connection with its own fd (no fd to spare for a dup); the fd stays open until it is in the kernel. */
  private lend(entry: Moving): void {
    const { socket } = entry;
    debug('no free fd at all: connection %d travels with its own fd', entry.id);
    // Until the fd is in the kernel, closing it would let its number be reused and sent instead.
    let inKernel!: () => void;
    deferClose(socket, new Promise<void>((resolve) => (inKernel = resolve)));
    void this.send([entry], [socketFd(socket)], false).finally(inKernel);
  }

  private send(batch: Moving[], fds: number[], ownsFds: boolean): Promise<void> {
    const parts: Buffer[] = [];
    const conns: ConnEntry[] = batch.map((entry) => {
      entry.phase = 'sent';
      const conn: ConnEntry = { id: entry.id, key: entry.key, pendingLength: entry.pending.length, writeLength: entry.carriedBytes };
      if (entry.state !== undefined) conn.state = entry.state;
      parts.push(entry.pending, ...entry.carried);
      return conn;
    });
    debug('CONN with %d connections', batch.length);
    this.credit.sent(fds.length);
    // Owned dups are the channel's now: closed once in the kernel, whatever happens.
    return this.session.send({ type: 'CONN', conns, body: Buffer.concat(parts), fds }, { closeFdsAfterSend: ownsFds }).then(
      () => {
        fault('conn-sent', 'predecessor', this.peerPid);
        this.scheduleFlush();
      },
      (err: Error) => {
        if (this.closed || this.session.isClosed) return; // the mover's close() gives every unacknowledged connection back
        // Refused by the channel itself (too large): these connections never left.
        this.credit.unsent(fds.length);
        for (const entry of batch) {
          this.stays(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the connection could not be sent: ${err.message}`, { cause: err }));
        }
        this.flush();
      },
    );
  }

}
