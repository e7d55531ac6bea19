// Moving a live connection: the predecessor stops reading it, collects the bytes it already read,
// sends a dup of its fd in a batched CONN frame and closes its own copy only on ACK; the successor
// adopts the fd, acknowledges, and only then starts reading. Late writes travel as WRITE frames.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import createDebug from 'debug';
import { binding } from './native';
import { HandoverError } from './errors';
import { closeFds } from './listeners';
import type { ConnEntry, Message } from './protocol';
import type { ControlSession } from './session';
import { fault } from './faults';

const debug = createDebug('handover:connections');

/** The Node internals a move relies on (POSIX, Node 20): checked once, before the first move. */
interface TcpHandle {
  fd: number;
  reading: boolean;
  writeQueueSize: number;
  readStart(): number;
  readStop(): number;
  close(cb?: () => void): void;
}

interface InternalSocket extends net.Socket {
  _handle: TcpHandle | null;
  _server?: net.Server | null;
  server?: net.Server;
  _readableState: { length: number; encoding: BufferEncoding | null; ended: boolean };
  _write: (chunk: Buffer | string, encoding: BufferEncoding, cb: (err?: Error | null) => void) => void;
  _writev: (chunks: { chunk: Buffer | string; encoding: BufferEncoding }[], cb: (err?: Error | null) => void) => void;
  _final: (cb: (err?: Error | null) => void) => void;
}

interface InternalServer extends net.Server {
  _connections: number;
  allowHalfOpen?: boolean;
}

/** What to hand over with a connection. */
export interface TransferOptions {
  /** Bytes already read from the socket by the application but not yet processed (a decoder's leftover). */
  pending?: Buffer;
  /** Small JSON-serialisable protocol state for the successor's adapter. */
  state?: unknown;
  /**
   * The application will still write on this socket (responses to requests in flight). Writes
   * after the move are forwarded to the successor in order; call socket.end() when it will write
   * no more (end() delivers what is still queued, then lets go: no FIN reaches the client;
   * destroy() would drop queued writes). Default false: the socket is destroyed (a plain close) on ACK.
   */
  lateWrites?: boolean;
}

/** What the successor's adapter receives with an adopted connection. */
export interface AdoptedConnection {
  /** The listener key of the server the connection belongs to. */
  key: string;
  /** Bytes the predecessor had read but not processed: decode them before anything else. */
  pending: Buffer;
  /** The state the predecessor's adapter handed over. */
  state: unknown;
}

/** An adopt handler for a net.Server: receives the live socket, paused, and its pending bytes. */
export type AdoptHandler = (socket: net.Socket, connection: AdoptedConnection) => void;

/**
 * checkInternals verifies that this Node.js still has the internals a move relies on (the TCP
 * handle's fd, readStart/readStop/writeQueueSize, Writable's _write/_writev/_final on sockets).
 * Checked on every socket, since a move on a runtime that changed them would lose bytes.
 */
export function checkInternals(socket: net.Socket): HandoverError | null {
  const missing: string[] = [];
  const record = socket as unknown as Record<string, unknown>;
  for (const name of ['_write', '_writev', '_final', '_destroy', 'unshift']) {
    if (typeof record[name] !== 'function') missing.push(`net.Socket#${name}`);
  }
  const handle = record._handle as Record<string, unknown> | null | undefined;
  if (handle) {
    for (const name of ['readStart', 'readStop', 'close']) if (typeof handle[name] !== 'function') missing.push(`handle.${name}`);
    if (typeof handle.fd !== 'number') missing.push('handle.fd');
    if (typeof handle.writeQueueSize !== 'number') missing.push('handle.writeQueueSize');
    if (typeof handle.reading !== 'boolean' && handle.reading !== undefined) missing.push('handle.reading');
  }
  const state = record._readableState as Record<string, unknown> | undefined;
  if (!state || typeof state.length !== 'number') missing.push('net.Socket#_readableState.length');
  return missing.length === 0
    ? null
    : new HandoverError('ERR_HANDOVER_UNSUPPORTED_RUNTIME', `Node.js ${process.version} lacks internals needed to move connections: ${missing.join(', ')}`);
}

/** Stops reading at the kernel level and keeps anything (resume(), timers, HTTP) from restarting it. */
function freezeReading(socket: InternalSocket): () => void {
  const handle = socket._handle!;
  const originalReadStart = Object.prototype.hasOwnProperty.call(handle, 'readStart') ? handle.readStart : undefined;
  const wasReading = handle.reading;
  handle.readStop();
  handle.reading = false;
  handle.readStart = () => 0;
  return () => {
    if (originalReadStart) handle.readStart = originalReadStart;
    else delete (handle as Partial<TcpHandle>).readStart;
    if (wasReading) {
      handle.reading = true;
      handle.readStart();
    }
  };
}

/** Takes what the stream already buffered (read from the kernel, not yet delivered), without emitting it. */
function takeBuffered(socket: InternalSocket): Buffer {
  const state = socket._readableState;
  if (!state || state.length === 0) return Buffer.alloc(0);
  const dataListeners = socket.rawListeners('data') as ((...args: unknown[]) => void)[];
  socket.removeAllListeners('data');
  const chunks: Buffer[] = [];
  let chunk: Buffer | string | null;
  while ((chunk = socket.read() as Buffer | string | null) !== null) {
    chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, state.encoding ?? 'utf8') : chunk);
  }
  // Re-attach with the plain EventEmitter method: http wraps socket.on('data') to unconsume its parser.
  for (const listener of dataListeners) EventEmitter.prototype.on.call(socket, 'data', listener);
  return Buffer.concat(chunks);
}

function writesFlushed(socket: InternalSocket): boolean {
  return socket.writableLength === 0 && (socket._handle?.writeQueueSize ?? 0) === 0;
}

function waitWritesFlushed(socket: InternalSocket, cancelled: () => boolean): Promise<void> {
  if (writesFlushed(socket)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (cancelled()) {
        cleanup();
        resolve();
      } else if (socket.destroyed) {
        cleanup();
        reject(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the socket was destroyed while its writes were flushing'));
      } else if (writesFlushed(socket)) {
        cleanup();
        resolve();
      }
    };
    // 'drain' fires only after a write returned false; poll once per loop turn as a fallback.
    const interval = setInterval(check, 1);
    const cleanup = (): void => {
      clearInterval(interval);
      socket.removeListener('drain', check);
      socket.removeListener('close', check);
    };
    socket.on('drain', check);
    socket.on('close', check);
  });
}

interface HeldWrite {
  chunks: Buffer[];
  cb: (err?: Error | null) => void;
}

/**
 * Where a moving connection's writes go:
 *  - collecting: from the decision until its CONN frame is built; accepted at once and carried
 *    in the CONN frame, so the successor writes them before anything of its own;
 *  - sent: the CONN frame is on its way; held (with back-pressure) until the answer;
 *  - acked: forwarded as WRITE frames, in order, each acknowledged by the successor.
 */
type WritePhase = 'collecting' | 'sent' | 'acked';

interface Moving {
  id: number;
  socket: InternalSocket;
  key: string;
  pending: Buffer;
  state: unknown;
  lateWrites: boolean;
  fd: number;
  thaw: () => void;
  phase: WritePhase;
  carried: Buffer[];
  carriedBytes: number;
  held: HeldWrite[];
  /** end() was called during the move: its callback waits for the answer. */
  finalCb?: (err?: Error | null) => void;
  writeSeq: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

const EMPTY = Buffer.alloc(0);

/** Most connections per CONN frame: the kernel's limit of fds per sendmsg. */
const BATCH = 253;
/** CONN frames sent ahead of their CONN_ACKs. */
const WINDOW = 8;
/** Unflushed writes carried inside a CONN frame, per connection; more waits for the answer. */
const MAX_CARRIED = 1024 * 1024;

export interface MoverHooks {
  /** The listener key of a tracked socket, or undefined for a socket of no server given to listen(). */
  keyOf(socket: net.Socket): string | undefined;
  /** Called when the successor acknowledged a socket (it now belongs to the successor). */
  moved(socket: net.Socket): void;
  /** The successor's pid as this process sees it (for test fault points). */
  readonly peerPid: number | undefined;
}

/**
 * ConnectionMover is the predecessor's side of moving connections over one control session:
 * it batches CONN frames, matches CONN_ACKs, forwards late writes, and on NACK or a lost
 * successor gives every unacknowledged connection back to the application, untouched.
 */
export class ConnectionMover {
  private nextId = 1;
  private readonly moving = new Map<number, Moving>();
  private readonly forwarding = new Map<number, Moving>();
  private readonly pendingWriteAcks = new Map<string, (err?: Error | null) => void>();
  private readonly queue: Moving[] = [];
  private flushScheduled = false;
  private batchesInFlight = 0;
  private closed = false;
  private settling = false;
  private readonly flushing = new Set<Moving>();
  private settled: (() => void) | undefined;
  private readonly claimed = new WeakSet<net.Socket>();

  constructor(
    private readonly session: ControlSession,
    private readonly hooks: MoverHooks,
  ) {}

  /** transfer moves one socket; resolves when the successor acknowledged it. */
  transfer(socketArg: net.Socket, options: TransferOptions = {}): Promise<void> {
    try {
      return this.decide(socketArg, options);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private decide(socketArg: net.Socket, options: TransferOptions): Promise<void> {
    if (!(socketArg instanceof net.Socket)) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'transferConnection() needs a net.Socket');
    const socket = socketArg as InternalSocket;
    if (this.settling) throw new HandoverError('ERR_HANDOVER_INVALID_STATE', 'retiring is over: the connection stays here');
    if (this.closed) throw new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor is gone; the connection stays here');
    if (this.claimed.has(socket)) throw new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the connection is already being moved');
    if (socket.destroyed || !socket._handle || typeof socket._handle.fd !== 'number' || socket._handle.fd < 0) {
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
    // 1. No byte is read by this process after the decision: stop the kernel reads, take what the
    //    stream already buffered, and stop the stream from emitting (a flowing stream with no
    //    'data' listener would drop it).
    const unfreeze = freezeReading(socket);
    const buffered = takeBuffered(socket);
    const wasFlowing = socket.readableFlowing === true;
    socket.pause();
    // Timers of the old copy must not close it while it travels.
    socket.setTimeout(0);
    const entry: Moving = {
      id: this.nextId++,
      socket,
      key,
      pending: options.pending && options.pending.length > 0 ? Buffer.concat([options.pending, buffered]) : buffered,
      state: options.state,
      lateWrites: options.lateWrites === true,
      fd: -1,
      thaw: () => {
        if (buffered.length > 0) socket.unshift(buffered);
        unfreeze();
        if (wasFlowing) socket.resume();
      },
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
    this.interceptWrites(entry);
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
      this.queue.push(entry);
      // A full batch leaves at once, so the successor adopts while this process still decides.
      if (this.queue.length >= BATCH) this.flush();
      else this.scheduleFlush();
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
          this.restoreWrites(entry);
          entry.thaw();
          this.claimed.delete(socket);
          entry.reject(err);
        },
      );
    }
    return promise;
  }

  private interceptWrites(entry: Moving): void {
    const { socket } = entry;
    // Strings reach _write as they were written (decodeStrings is off for sockets).
    const toBuffer = (chunk: Buffer | string, encoding: BufferEncoding): Buffer => (Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
    socket._write = (chunk, encoding, cb) => this.write(entry, [toBuffer(chunk, encoding)], cb);
    socket._writev = (chunks, cb) => this.write(entry, chunks.map((c) => toBuffer(c.chunk, c.encoding)), cb);
    // end() on a moved connection: the successor owns its lifetime now; just let go of it here.
    // During the move, wait for the answer: on a refusal the connection stays, and its end()
    // must then really end it (a FIN), as the application asked.
    socket._final = (cb) => {
      if (entry.phase === 'acked') {
        cb();
        setImmediate(() => socket.destroy());
      } else {
        entry.finalCb = cb;
      }
    };
  }

  private restoreWrites(entry: Moving): void {
    const socket = entry.socket as unknown as Record<string, unknown>;
    delete socket._write;
    delete socket._writev;
    delete socket._final;
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

  private forward(entry: Moving, chunks: Buffer[], cb: (err?: Error | null) => void): void {
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
        .then(() => fault('late-write', 'predecessor', this.hooks.peerPid))
        .catch((err: Error) => {
          const pendingCb = this.pendingWriteAcks.get(ackKey);
          this.pendingWriteAcks.delete(ackKey);
          pendingCb?.(err);
        });
      if (last) break;
    }
  }

  /** Bytes one CONN or WRITE frame may carry in its body, leaving the JSON header its share. */
  private get maxBody(): number {
    return Math.floor(this.session.channel.maxFrameSize / 2);
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
   * flush sends queued connections, up to WINDOW frames ahead of the acknowledgements: fds in
   * flight count against the sender's RLIMIT_NOFILE (ETOOMANYREFS), and each dup against its fd
   * limit, so 10,000 connections never need 10,000 extra fds at once.
   */
  private flush(): void {
    const maxBody = this.maxBody;
    while (this.queue.length > 0 && !this.closed && this.batchesInFlight < WINDOW) {
      const native = binding();
      const batch: Moving[] = [];
      let bodyBytes = 0;
      while (this.queue.length > 0 && batch.length < BATCH) {
        const entry = this.queue[0]!;
        const bytes = entry.pending.length + entry.carriedBytes;
        if (bytes > maxBody) {
          this.queue.shift();
          this.moving.delete(entry.id);
          this.giveBack(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the connection's pending and unflushed bytes (${bytes}) exceed what one frame carries (${maxBody})`));
          continue;
        }
        if (batch.length > 0 && bodyBytes + bytes > maxBody) break;
        this.queue.shift();
        try {
          // A dup travels: the socket's own fd may be closed by the application meanwhile.
          entry.fd = native.dup(entry.socket._handle!.fd);
        } catch (err) {
          this.moving.delete(entry.id);
          this.giveBack(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `cannot duplicate the connection's fd: ${(err as Error).message}`, { cause: err }));
          continue;
        }
        batch.push(entry);
        bodyBytes += bytes;
      }
      if (batch.length === 0) continue;
      const parts: Buffer[] = [];
      const conns: ConnEntry[] = batch.map((entry) => {
        entry.phase = 'sent';
        const conn: ConnEntry = { id: entry.id, key: entry.key, pendingLength: entry.pending.length, writeLength: entry.carriedBytes };
        if (entry.state !== undefined) conn.state = entry.state;
        parts.push(entry.pending, ...entry.carried);
        return conn;
      });
      const fds = batch.map((entry) => entry.fd);
      debug('CONN with %d connections', batch.length);
      this.batchesInFlight++;
      // The dups are the channel's now: closed once in the kernel, whatever happens.
      this.session
        .send({ type: 'CONN', conns, body: Buffer.concat(parts), fds }, { closeFdsAfterSend: true })
        .then(() => fault('conn-sent', 'predecessor', this.hooks.peerPid))
        .catch((err: Error) => {
          if (this.closed || this.session.isClosed) return; // close() gives every unacknowledged connection back
          // Refused by the channel itself (too large): these connections never left.
          this.batchesInFlight--;
          for (const entry of batch) {
            if (!this.moving.delete(entry.id)) continue;
            this.giveBack(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the connection could not be sent: ${err.message}`, { cause: err }));
          }
          this.flush();
        });
    }
  }

  /** onMessage handles CONN_ACK and WRITE_ACK from the successor; false for anything else. */
  onMessage(message: Message): boolean {
    if (message.type === 'CONN_ACK') {
      this.batchesInFlight = Math.max(0, this.batchesInFlight - 1);
      for (const id of message.acked) this.onAck(id);
      for (const { id, reason } of message.refused) this.onNack(id, reason);
      fault('conn-acked', 'predecessor', this.hooks.peerPid);
      this.flush();
      this.settled?.();
      return true;
    }
    if (message.type === 'WRITE_ACK') {
      const key = `${message.id}:${message.seq}`;
      const cb = this.pendingWriteAcks.get(key);
      this.pendingWriteAcks.delete(key);
      cb?.();
      return true;
    }
    return false;
  }

  private onAck(id: number): void {
    const entry = this.moving.get(id);
    if (!entry) {
      this.session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `CONN_ACK for unknown connection ${id}`));
      return;
    }
    this.moving.delete(id);
    entry.phase = 'acked';
    entry.carried = [];
    const { socket } = entry;
    if (entry.finalCb) {
      const finalCb = entry.finalCb;
      delete entry.finalCb;
      finalCb();
      setImmediate(() => socket.destroy());
    }
    this.hooks.moved(socket);
    // Close only this process's copy of the fd: nothing goes on the wire, the successor holds
    // the connection. Never end(), shutdown() or a reset.
    const held = entry.held.splice(0);
    if (entry.lateWrites || held.length > 0) {
      // The socket object lives on as a forwarder until the application lets go of it (or, without
      // lateWrites, until the writes it made during the move are delivered).
      this.forwarding.set(id, entry);
      const handle = socket._handle;
      socket._handle = null;
      handle?.close();
      socket.once('close', () => this.forwarding.delete(id));
      for (const { chunks, cb } of held) this.forward(entry, chunks, cb);
      if (!entry.lateWrites) socket.end();
    } else {
      socket.destroy();
    }
    entry.resolve();
  }

  private onNack(id: number, reason: string): void {
    const entry = this.moving.get(id);
    if (!entry) return;
    this.moving.delete(id);
    this.giveBack(entry, new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `the successor refused the connection: ${reason}`));
  }

  /** giveBackWrites: writes carried or held during the move go out here, in order. */
  private giveBackWrites(entry: Moving): void {
    const { socket } = entry;
    this.restoreWrites(entry);
    const carried = entry.carried.splice(0);
    const held = entry.held.splice(0);
    const chunks = [...carried, ...held.flatMap((h) => h.chunks)];
    entry.carriedBytes = 0;
    if (chunks.length === 0) return;
    // Straight to the handle, in order, ahead of anything the Writable still buffers.
    socket._writev(
      chunks.map((chunk) => ({ chunk, encoding: 'buffer' as BufferEncoding })),
      (err) => {
        for (const { cb } of held) cb(err);
      },
    );
  }

  /** giveBack: the connection stays here, exactly as it was (buffered bytes first, writes out). */
  private giveBack(entry: Moving, err: HandoverError): void {
    this.giveBackWrites(entry);
    if (entry.finalCb) {
      // The application ended the connection during the move: end it for real now.
      const finalCb = entry.finalCb;
      delete entry.finalCb;
      net.Socket.prototype._final.call(entry.socket, finalCb);
    }
    entry.thaw();
    this.claimed.delete(entry.socket);
    debug('connection %d stays: %s', entry.id, err.message);
    entry.reject(err);
  }

  /**
   * settle stops new moves and waits (at most timeoutMs) until every connection already sent has
   * its answer: handing back a connection the successor may have adopted would give it two readers.
   */
  settle(timeoutMs: number): Promise<void> {
    this.settling = true;
    const err = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'retiring ended before the connection could move; it stays here');
    this.giveBackFlushing(err);
    for (const entry of this.queue.splice(0)) {
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
        resolve();
      }, timeoutMs);
      this.settled = check;
      check();
    });
  }

  /** close: the session ended. Unacknowledged connections stay here; late writes fail. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor went away before acknowledging the connection; it stays here');
    this.giveBackFlushing(err);
    this.queue.splice(0);
    for (const entry of [...this.moving.values()]) {
      this.moving.delete(entry.id);
      // Queued entries have no dup yet; sent ones' dups belong to the channel.
      this.giveBack(entry, err);
    }
    const lost = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the successor went away; late writes cannot be delivered');
    for (const cb of this.pendingWriteAcks.values()) cb(lost);
    this.pendingWriteAcks.clear();
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

/**
 * ConnectionAdopter is the successor's side: it adopts the fds of a CONN frame, acknowledges
 * the batch, and only once the ACK is in the kernel lets the sockets read (so a successor that
 * dies before acknowledging has read nothing, and the predecessor can keep serving them).
 */
export class ConnectionAdopter {
  private readonly adopted = new Map<number, net.Socket>();
  private readonly batches: Extract<Message, { type: 'CONN' }>[] = [];
  private adopting = false;

  private nextBatch(): void {
    const batch = this.batches.shift();
    if (!batch) {
      this.adopting = false;
      return;
    }
    this.adopting = true;
    this.adoptBatch(batch, () => setImmediate(() => this.nextBatch()));
  }

  constructor(
    private readonly session: ControlSession,
    private readonly hooks: AdopterHooks,
  ) {}

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

  private adoptBatch(message: Extract<Message, { type: 'CONN' }>, done: () => void): void {
    const acked: number[] = [];
    const refused: { id: number; reason: string }[] = [];
    const started: { socket: net.Socket; entry: ConnEntry; pending: Buffer; unflushed: Buffer; target: NonNullable<ReturnType<AdopterHooks['serverFor']>> }[] = [];
    let offset = 0;
    message.conns.forEach((entry, index) => {
      const fd = message.fds[index]!;
      const pending = message.body.subarray(offset, offset + entry.pendingLength);
      offset += entry.pendingLength;
      const unflushed = message.body.subarray(offset, offset + entry.writeLength);
      offset += entry.writeLength;
      const target = this.hooks.serverFor(entry.key);
      if (!target) {
        closeFds([fd]);
        refused.push({ id: entry.id, reason: `no server listens on ${entry.key} here` });
        return;
      }
      let socket: net.Socket;
      try {
        // manualStart: no read until the predecessor knows the connection is ours.
        socket = new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: (target.server as InternalServer).allowHalfOpen ?? false, manualStart: true } as net.SocketConstructorOpts);
      } catch (err) {
        closeFds([fd]);
        refused.push({ id: entry.id, reason: `cannot adopt the fd: ${(err as Error).message}` });
        return;
      }
      acked.push(entry.id);
      this.adopted.set(entry.id, socket);
      socket.once('close', () => this.adopted.delete(entry.id));
      started.push({ socket, entry, pending: pending.length > 0 ? Buffer.from(pending) : EMPTY, unflushed: unflushed.length > 0 ? Buffer.from(unflushed) : EMPTY, target });
    });
    debug('adopted %d, refused %d', acked.length, refused.length);
    const start = (): void => {
      fault('conn-acked', 'successor', this.hooks.peerPid);
      for (const { socket, entry, pending, unflushed, target } of started) {
        // The predecessor's unflushed writes go out before anything this process writes.
        if (unflushed.length > 0) socket.write(unflushed);
        const internal = socket as InternalSocket;
        const server = target.server as InternalServer;
        // What net.Server does for a connection it accepted: count it, link it to its server.
        internal.server = server;
        internal._server = server;
        server._connections++;
        this.hooks.track(socket, entry.key);
        try {
          if (target.adopt) {
            target.adopt(socket, { key: entry.key, pending, state: entry.state });
          } else {
            if (pending.length > 0) socket.unshift(pending);
            server.emit('connection', socket);
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
    };
    // The channel pauses so that this process serves between batches instead of adopting only.
    this.session.channel.pause();
    this.session
      .send({ type: 'CONN_ACK', acked, refused })
      .then(start, (err: Error) => {
        // Without a delivered ACK the predecessor keeps these connections: two readers would
        // corrupt them, so close our copies (a plain close; the predecessor still holds each one).
        debug('CONN_ACK not sent (%s); giving the connections up', err.message);
        for (const { socket } of started) socket.destroy();
      })
      .catch((err: Error) => debug('adoption failed: %s', err.message))
      .finally(() => {
        setImmediate(() => this.session.channel.resume());
        done();
      });
  }
}
