// Writes on a moving connection: carried in its CONN frame, held until the answer, forwarded as
// acknowledged WRITE frames after the move, or given back in order when the connection stays.
import { HandoverError } from '../errors';
import type { ControlSession } from '../session';
import { fault } from '../faults';
import { finalDirect, overrideWrites, restoreWrites, writevDirect } from '../runtime';
import type { Moving } from './types';

/** Unflushed writes carried inside a CONN frame, per connection; more waits for the answer. */
const MAX_CARRIED = 1024 * 1024;

/** MoveWrites routes the writes of every connection one mover moves, over its session. */
export class MoveWrites {
  private readonly pendingWriteAcks = new Map<string, (err?: Error | null) => void>();
  private closed = false;

  constructor(
    private readonly session: ControlSession,
    private readonly peerPid: number | undefined,
  ) {}

  /** Bytes one CONN or WRITE frame may carry in its body, leaving the JSON header its share. */
  get maxBody(): number {
    return Math.floor(this.session.channel.maxFrameSize / 2);
  }

  /** intercept: writes from now on are ours to deliver (carried, held or forwarded). */
  intercept(entry: Moving): void {
    const { socket } = entry;
    // Strings reach _write as they were written (decodeStrings is off for sockets).
    const toBuffer = (chunk: Buffer | string, encoding: BufferEncoding): Buffer => (Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
    overrideWrites(socket, {
      _write: (chunk, encoding, cb) => this.write(entry, [toBuffer(chunk, encoding)], cb),
      _writev: (chunks, cb) => this.write(entry, chunks.map((c) => toBuffer(c.chunk, c.encoding)), cb),
      // end() on a moved connection: the successor owns its lifetime now; just let go of it here.
      // During the move, wait for the answer: on a refusal the connection stays, and its end()
      // must then really end it (a FIN), as the application asked.
      _final: (cb) => {
        if (entry.phase === 'acked') {
          cb();
          setImmediate(() => socket.destroy());
        } else {
          entry.finalCb = cb;
        }
      },
    });
  }

  private write(entry: Moving, chunks: Buffer[], cb: (err?: Error | null) => void): void {
    if (entry.phase === 'collecting' && entry.carriedBytes < MAX_CARRIED) {
      for (const chunk of chunks) {
        entry.carried.push(chunk);
        entry.carriedBytes += chunk.length;
      }
      cb();
    } else if (entry.phase === 'acked') {
      this.forward(entry, chunks, cb);
    } else {
      entry.held.push({ chunks, cb });
    }
  }

  /** acked: the successor owns the connection; held writes go as WRITE frames, end() lets go. */
  acked(entry: Moving): void {
    entry.phase = 'acked';
    entry.carried = [];
    if (entry.finalCb) {
      const finalCb = entry.finalCb;
      delete entry.finalCb;
      finalCb();
      setImmediate(() => entry.socket.destroy());
    }
    for (const { chunks, cb } of entry.held.splice(0)) this.forward(entry, chunks, cb);
  }

  forward(entry: Moving, chunks: Buffer[], cb: (err?: Error | null) => void): void {
    if (this.closed) {
      cb(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor is gone; this late write is lost'));
      return;
    }
    const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    // A write larger than a frame travels as several WRITE frames; its callback waits for the last.
    const maxBody = this.maxBody;
    for (let offset = 0; offset < data.length || offset === 0; offset += maxBody) {
      const piece = data.subarray(offset, offset + maxBody);
      const last = offset + maxBody >= data.length;
      const seq = ++entry.writeSeq;
      const ackKey = `${entry.id}:${seq}`;
      if (last) this.pendingWriteAcks.set(ackKey, cb);
      this.session
        .send({ type: 'WRITE', id: entry.id, seq, data: piece })
        .then(() => fault('late-write', 'predecessor', this.peerPid))
        .catch((err: Error) => {
          const pendingCb = this.pendingWriteAcks.get(ackKey);
          this.pendingWriteAcks.delete(ackKey);
          pendingCb?.(err);
        });
      if (last) break;
    }
  }

  /** onWriteAck: the successor wrote (or dropped, for a gone client) one forwarded write. */
  onWriteAck(id: number, seq: number): void {
    const key = `${id}:${seq}`;
    const cb = this.pendingWriteAcks.get(key);
    this.pendingWriteAcks.delete(key);
    cb?.();
  }

  /** giveBack: the connection stays; writes carried or held during the move go out here, in order. */
  giveBack(entry: Moving): void {
    const { socket } = entry;
    restoreWrites(socket);
    const carried = entry.carried.splice(0);
    const held = entry.held.splice(0);
    const chunks = [...carried, ...held.flatMap((h) => h.chunks)];
    entry.carriedBytes = 0;
    if (chunks.length > 0) {
      // Straight to the handle, in order, ahead of anything the Writable still buffers.
      writevDirect(socket, chunks, (err) => {
        for (const { cb } of held) cb(err);
      });
    }
    if (entry.finalCb) {
      // The application ended the connection during the move: end it for real now.
      const finalCb = entry.finalCb;
      delete entry.finalCb;
      finalDirect(socket, finalCb);
    }
  }

  /** abandon: the connection is closed here without an answer; its held writes cannot be delivered. */
  abandon(entry: Moving, err: Error): void {
    for (const { cb } of entry.held.splice(0)) cb(err);
    entry.carried = [];
    entry.carriedBytes = 0;
    const finalCb = entry.finalCb;
    delete entry.finalCb;
    finalCb?.(err);
  }

  /** close: the session ended; late writes still waiting for their acknowledgement fail. */
  close(): void {
    this.closed = true;
    const lost = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor went away; late writes cannot be delivered');
    for (const cb of this.pendingWriteAcks.values()) cb(lost);
    this.pendingWriteAcks.clear();
  }
}
