// FdChannel: frames with file descriptors over a SOCK_SEQPACKET unix socket, without blocking the
// event loop. Node never reads this socket (it would drop SCM_RIGHTS fds): the addon owns it and a
// uv_poll_t reports readiness; this file splits, reassembles and queues.
import { EventEmitter } from 'node:events';
import createDebug from 'debug';
import { binding, isNativeError, type Binding, type PeerCredentials, type Poller } from './native';
import { HandoverError } from './errors';

const debug = createDebug('handover:channel');

/** Bytes of the chunk header: magic u16, version u8, flags u8, frame length u32, frame fd count u32. */
const CHUNK_HEADER = 12;
const MAGIC = 0x484f; // 'HO'
const CHUNK_VERSION = 1;
const FLAG_FIRST = 1;
const FLAG_LAST = 2;
/** Payload bytes per message: well under the default unix send buffer (~208 KiB), so sendmsg never fails with EMSGSIZE. */
const CHUNK_PAYLOAD = 64 * 1024 - CHUNK_HEADER;
/** Messages read per readiness callback before yielding to the event loop. */
const READS_PER_TICK = 64;
/** How long a control listener stops accepting after EMFILE and the like. */
const ACCEPT_RETRY_MS = 100;

export const DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024;
export const DEFAULT_MAX_FDS_PER_FRAME = 16 * 1024;

/** One message of the channel: its bytes and the fds that travelled with exactly these bytes. */
export interface Frame {
  payload: Buffer;
  /** Received fds are owned by whoever handles the frame: adopt them or close them. */
  fds: number[];
}

export interface FdChannelOptions {
  /** Largest frame accepted or sent, in bytes. Default 16 MiB. */
  maxFrameSize?: number;
  /** Most fds one frame may carry. Default 16384. */
  maxFdsPerFrame?: number;
}

export interface SendOptions {
  /** fds to attach; they must stay open until the returned promise settles (unless closeAfterSend). */
  fds?: readonly number[];
  /** The channel owns `fds` and closes them once they are in the kernel (or when the send fails). */
  closeAfterSend?: boolean;
}

interface OutgoingChunk {
  data: Buffer;
  fds: number[];
  /** Set on the last chunk of a frame. */
  done?: { resolve: () => void; reject: (err: Error) => void; owned: readonly number[] | undefined };
}

export interface FdChannelEvents {
  frame: [Frame];
  /** The peer closed its end cleanly between frames. 'close' follows. */
  end: [];
  error: [Error];
  close: [];
}

function checkPositiveInteger(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `${name} must be a positive integer, got ${String(value)}`);
  }
  return value;
}

function closeAll(native: Binding, fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Already closed: nothing to leak.
    }
  }
}

/** Control endpoints that serviceControlSockets() looks at, besides their uv_poll_t. */
const serviced = new Set<{ service(): void }>();
let servicing = false;

/**
 * serviceControlSockets accepts and reads what the control sockets hold now, without waiting for
 * their uv_poll_t. A poll callback runs once per turn of the event loop, and under a flood of
 * requests one turn can take seconds (every ready connection parses a full read of pipelined
 * requests); a handshake needs a few turns, so the successor's readyTimeout would expire.
 * Request work calls this between reads (see the HTTP adapter): a handshake then waits for one
 * read's work, not for whole turns. Costs one non-blocking accept/recvmsg per endpoint.
 */
export function serviceControlSockets(): void {
  if (servicing || serviced.size === 0) return;
  servicing = true;
  try {
    for (const endpoint of [...serviced]) endpoint.service();
  } finally {
    servicing = false;
  }
}

/**
 * FdChannel carries frames (bytes plus fds) over one connected SOCK_SEQPACKET socket. It owns the
 * fd. Frames larger than one message are split and reassembled; fds arrive with exactly the frame
 * they were sent with. Anything malformed is an ERR_HANDOVER_PROTOCOL error, every fd of it closed.
 */
export class FdChannel extends EventEmitter<FdChannelEvents> {
  readonly fd: number;
  readonly maxFrameSize: number;
  readonly maxFdsPerFrame: number;
  private readonly native: Binding;
  private readonly poller: Poller;
  private readonly receiveBuffer = Buffer.allocUnsafe(CHUNK_HEADER + CHUNK_PAYLOAD);
  private readonly queue: OutgoingChunk[] = [];
  private assembling: { length: number; fdCount: number; parts: Buffer[]; received: number; fds: number[] } | undefined;
  private paused = false;
  private closed = false;
  /** The peer closed its end (the end of stream was read), cleanly or in the middle of a frame. */
  peerEnded = false;
  private failure: Error | undefined;
  private armed: { readable: boolean; writable: boolean } = { readable: false, writable: false };
  /** Set while sendmsg is refused with ETOOMANYREFS: writability says nothing then, a timer retries. */
  private refsRetry: { timer: NodeJS.Timeout | undefined; delay: number } = { timer: undefined, delay: 0 };

  constructor(fd: number, options: FdChannelOptions = {}) {
    super();
    this.fd = fd;
    this.maxFrameSize = checkPositiveInteger('maxFrameSize', options.maxFrameSize, DEFAULT_MAX_FRAME_SIZE);
    this.maxFdsPerFrame = checkPositiveInteger('maxFdsPerFrame', options.maxFdsPerFrame, DEFAULT_MAX_FDS_PER_FRAME);
    this.native = binding();
    this.poller = this.native.createPoller(fd, (status, readable, writable, disconnect) => {
      this.onReadiness(status, readable, writable, disconnect);
    });
    this.rearm();
    serviced.add(this);
  }

  /** service: read what is queued now, as a readable poll would (see serviceControlSockets). */
  service(): void {
    if (!this.closed && !this.paused) this.readSome();
  }

  /** Peer credentials of the other end (SO_PEERCRED). */
  peerCredentials(): PeerCredentials {
    return this.native.peerCredentials(this.fd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Why the channel closed, when it closed on an error (set before 'close' is emitted). */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Bytes and chunks still waiting for the kernel. */
  get pendingChunks(): number {
    return this.queue.length;
  }

  /**
   * send queues one frame and resolves once all of it (and its fds) is in the kernel. With
   * closeAfterSend the channel owns the fds from this call on, whatever happens.
   */
  send(payload: Buffer, options: SendOptions = {}): Promise<void> {
    const fds = options.fds ?? [];
    const owned = options.closeAfterSend === true ? fds : undefined;
    if (this.closed) {
      if (owned) closeAll(this.native, owned);
      return Promise.reject(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the control channel is closed'));
    }
    if (payload.length > this.maxFrameSize) {
      if (owned) closeAll(this.native, owned);
      return Promise.reject(new HandoverError('ERR_HANDOVER_PROTOCOL', `frame of ${payload.length} bytes exceeds maxFrameSize ${this.maxFrameSize}`));
    }
    if (fds.length > this.maxFdsPerFrame) {
      if (owned) closeAll(this.native, owned);
      return Promise.reject(new HandoverError('ERR_HANDOVER_PROTOCOL', `frame with ${fds.length} fds exceeds maxFdsPerFrame ${this.maxFdsPerFrame}`));
    }
    for (const fd of fds) {
      if (!Number.isSafeInteger(fd) || fd < 0) {
        if (owned) closeAll(this.native, owned);
        return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_ARG', `fds must be non-negative integers, got ${String(fd)}`));
      }
    }
    return new Promise<void>((resolve, reject) => {
      const maxFds = this.native.MAX_FDS_PER_MESSAGE;
      let offset = 0;
      let fdOffset = 0;
      let first = true;
      do {
        const bytes = Math.min(CHUNK_PAYLOAD, payload.length - offset);
        const fdCount = Math.min(maxFds, fds.length - fdOffset);
        const last = offset + bytes === payload.length && fdOffset + fdCount === fds.length;
        const data = Buffer.allocUnsafe(CHUNK_HEADER + bytes);
        data.writeUInt16BE(MAGIC, 0);
        data.writeUInt8(CHUNK_VERSION, 2);
        data.writeUInt8((first ? FLAG_FIRST : 0) | (last ? FLAG_LAST : 0), 3);
        data.writeUInt32BE(payload.length, 4);
        data.writeUInt32BE(fds.length, 8);
        payload.copy(data, CHUNK_HEADER, offset, offset + bytes);
        const chunk: OutgoingChunk = { data, fds: fds.slice(fdOffset, fdOffset + fdCount) };
        if (last) chunk.done = { resolve, reject, owned };
        this.queue.push(chunk);
        offset += bytes;
        fdOffset += fdCount;
        first = false;
      } while (offset < payload.length || fdOffset < fds.length);
      this.flush();
    });
  }

  /** pause stops reading frames (the peer's sends queue in the kernel) until resume(). */
  pause(): void {
    this.paused = true;
    this.rearm();
  }

  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    this.rearm();
    // Messages may already be waiting: the poller reports them on its next iteration.
  }

  /**
   * close closes the socket. Queued frames are dropped and their promises rejected; fds owned by
   * the channel (queued with closeAfterSend, or part of an unfinished incoming frame) are closed.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    serviced.delete(this);
    this.poller.close();
    clearTimeout(this.refsRetry.timer);
    const error = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the control channel was closed before the frame was sent');
    for (const chunk of this.queue.splice(0)) {
      if (chunk.done) {
        if (chunk.done.owned) closeAll(this.native, chunk.done.owned);
        chunk.done.reject(error);
      }
    }
    if (this.assembling) {
      closeAll(this.native, this.assembling.fds);
      this.assembling = undefined;
    }
    try {
      this.native.close(this.fd);
    } catch (err) {
      debug('close fd %d: %o', this.fd, err);
    }
    debug('channel fd %d closed', this.fd);
    // Never in the middle of the change that closed it: whoever called close() finishes first.
    process.nextTick(() => this.emit('close'));
  }

  private rearm(): void {
    if (this.closed) return;
    const readable = !this.paused;
    const writable = this.queue.length > 0 && this.refsRetry.timer === undefined;
    if (readable === this.armed.readable && writable === this.armed.writable) return;
    this.armed = { readable, writable };
    if (readable || writable) this.poller.start(readable, writable);
    else this.poller.stop();
  }

  private fail(err: Error): void {
    if (this.closed) return;
    debug('channel fd %d failed: %s', this.fd, err.message);
    this.failure = err;
    // Close first so that listeners of 'error' see a closed channel with nothing leaked; both
    // events come after the current change (in that order: 'close', then 'error').
    this.close();
    process.nextTick(() => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  private onReadiness(status: number, readable: boolean, writable: boolean, disconnect: boolean): void {
    if (this.closed) return;
    if (status < 0) {
      // POLLERR: the peer is gone. What it sent before going may still be queued: deliver it.
      this.drainThenEnd();
      return;
    }
    if (writable) this.flush();
    if ((readable || disconnect) && !this.paused) this.readSome();
  }

  private flush(): void {
    if (this.refsRetry.timer !== undefined) return;
    while (!this.closed && this.queue.length > 0) {
      const chunk = this.queue[0]!;
      let written: number;
      try {
        written = this.native.sendmsg(this.fd, chunk.data, chunk.fds);
      } catch (err) {
        const code = isNativeError(err) ? err.code : '';
        if (code === 'EPIPE' || code === 'ECONNRESET') {
          // The peer closed; its last messages (an acknowledgement, say) may still be unread.
          this.drainThenEnd();
          return;
        }
        if (code === 'ETOOMANYREFS') {
          // fds in flight count against this process's RLIMIT_NOFILE (when not privileged): back-
          // pressure, not a failure. They leave flight as the peer reads them; try again shortly.
          this.backOffRefs();
          return;
        }
        this.fail(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `sendmsg failed: ${(err as Error).message}`, { cause: err }));
        return;
      }
      if (written < 0) break; // EAGAIN: wait for writable.
      if (written !== chunk.data.length) {
        // SOCK_SEQPACKET sends whole messages; anything else means the socket is not what we think.
        this.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `short sendmsg: ${written} of ${chunk.data.length} bytes`));
        return;
      }
      this.refsRetry.delay = 0;
      this.queue.shift();
      if (chunk.done) {
        if (chunk.done.owned) closeAll(this.native, chunk.done.owned);
        chunk.done.resolve();
      }
    }
    this.rearm();
  }

  private backOffRefs(): void {
    const delay = Math.min(100, Math.max(1, this.refsRetry.delay * 2));
    debug('channel fd %d: too many fds in flight; retrying in %d ms', this.fd, delay);
    this.refsRetry.delay = delay;
    this.refsRetry.timer = setTimeout(() => {
      this.refsRetry.timer = undefined;
      this.flush();
    }, delay);
    this.rearm();
  }

  private readSome(): void {
    this.read(false);
  }

  /**
   * drainThenEnd reads every message still queued from a peer that is gone, delivering each
   * (paused or not: nobody will send them again), then ends the channel.
   */
  private drainThenEnd(): void {
    this.read(true);
  }

  /**
   * read delivers queued messages: READS_PER_TICK of them while the peer is there (then the
   * event loop gets a turn), or all of them, then the end, once it is gone.
   */
  private read(draining: boolean): void {
    for (let i = 0; draining || i < READS_PER_TICK; i++) {
      if (this.closed || (this.paused && !draining)) return;
      let message;
      try {
        message = this.native.recvmsg(this.fd, this.receiveBuffer, this.native.MAX_FDS_PER_MESSAGE);
      } catch (err) {
        const code = isNativeError(err) ? err.code : '';
        if (code === 'ECONNRESET') {
          // Linux reports a peer that closed with unread data once, then the queued messages.
          draining = true;
          continue;
        }
        if (code === 'EMSGSIZE') {
          this.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', 'a message on the control socket was larger than a chunk or carried too many fds', { cause: err }));
          return;
        }
        if (draining) break;
        this.fail(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `recvmsg failed: ${(err as Error).message}`, { cause: err }));
        return;
      }
      if (message === null) {
        if (draining) break;
        return; // EAGAIN
      }
      if (message.bytes === 0 && message.fds.length === 0) {
        this.onEnd();
        return;
      }
      this.onChunk(this.receiveBuffer.subarray(0, message.bytes), message.fds);
    }
    // Left the loop: the tick's share is read (more on the next readiness), or a gone peer is drained.
    if (draining) this.onEnd();
  }

  private onEnd(): void {
    if (this.closed) return;
    if (this.assembling) {
      this.peerEnded = true;
      this.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', 'the peer closed the control channel in the middle of a frame'));
      return;
    }
    debug('channel fd %d: peer closed', this.fd);
    this.peerEnded = true;
    this.emit('end');
    this.close();
  }

  private onChunk(data: Buffer, fds: number[]): void {
    const reject = (reason: string): void => {
      closeAll(this.native, fds);
      this.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', reason));
    };
    if (data.length < CHUNK_HEADER) return reject(`message of ${data.length} bytes is shorter than a chunk header`);
    if (data.readUInt16BE(0) !== MAGIC) return reject('message does not start with the handover magic');
    if (data.readUInt8(2) !== CHUNK_VERSION) return reject(`unknown chunk version ${data.readUInt8(2)}`);
    const flags = data.readUInt8(3);
    if ((flags & ~(FLAG_FIRST | FLAG_LAST)) !== 0) return reject(`unknown chunk flags ${flags}`);
    const length = data.readUInt32BE(4);
    const fdCount = data.readUInt32BE(8);
    const body = data.subarray(CHUNK_HEADER);
    if (flags & FLAG_FIRST) {
      if (this.assembling) return reject('a new frame started before the previous one ended');
      if (length > this.maxFrameSize) return reject(`frame of ${length} bytes exceeds maxFrameSize ${this.maxFrameSize}`);
      if (fdCount > this.maxFdsPerFrame) return reject(`frame with ${fdCount} fds exceeds maxFdsPerFrame ${this.maxFdsPerFrame}`);
      this.assembling = { length, fdCount, parts: [], received: 0, fds: [] };
    } else if (!this.assembling) {
      return reject('a continuation chunk arrived outside a frame');
    }
    const frame = this.assembling;
    if (length !== frame.length || fdCount !== frame.fdCount) return reject('chunk header disagrees with its frame');
    if (frame.received + body.length > frame.length) return reject('frame is longer than announced');
    if (frame.fds.length + fds.length > frame.fdCount) return reject('frame carries more fds than announced');
    // Take ownership of the chunk's fds before anything else can fail.
    frame.fds.push(...fds);
    fds = [];
    if (body.length > 0) {
      // The receive buffer is reused: copy out.
      frame.parts.push(Buffer.from(body));
      frame.received += body.length;
    }
    if (flags & FLAG_LAST) {
      if (frame.received !== frame.length || frame.fds.length !== frame.fdCount) {
        return reject(`frame ended with ${frame.received}/${frame.length} bytes and ${frame.fds.length}/${frame.fdCount} fds`);
      }
      this.assembling = undefined;
      const payload = frame.parts.length === 1 ? frame.parts[0]! : Buffer.concat(frame.parts, frame.received);
      if (this.listenerCount('frame') === 0) {
        closeAll(this.native, frame.fds);
        debug('channel fd %d: frame dropped, nobody listens', this.fd);
        return;
      }
      this.emit('frame', { payload, fds: frame.fds });
    }
  }
}

/** connectChannel connects to a control socket path, once. ENOENT, ECONNREFUSED and EAGAIN (backlog full) come through as native errors. */
export function connectChannel(path: string, options: FdChannelOptions = {}): FdChannel {
  const fd = binding().seqpacketConnect(path);
  return new FdChannel(fd, options);
}

/** How often connectChannelWithin tries again while the listener's backlog is full. */
const CONNECT_RETRY_MS = 20;

/**
 * connectChannelWithin connects without ever blocking the event loop: while the listener's backlog
 * is full (EAGAIN: a stalled peer) it tries again until `timeoutMs`, then fails with
 * ERR_UPGRADE_READY_TIMEOUT. Other errors (ENOENT, ECONNREFUSED, EACCES) reject at once.
 */
export function connectChannelWithin(path: string, timeoutMs: number, options: FdChannelOptions = {}): Promise<FdChannel> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      try {
        resolve(connectChannel(path, options));
      } catch (err) {
        if (!isNativeError(err) || err.code !== 'EAGAIN') {
          reject(err);
        } else if (Date.now() >= deadline) {
          reject(new HandoverError('ERR_UPGRADE_READY_TIMEOUT', `the control socket ${path} accepted no connection within ${timeoutMs} ms (its backlog is full: the process behind it is stalled)`, { cause: err }));
        } else {
          setTimeout(attempt, CONNECT_RETRY_MS);
        }
      }
    };
    attempt();
  });
}

/** channelPair returns two connected channels (socketpair), for tests and in-process use. */
export function channelPair(options: FdChannelOptions = {}): [FdChannel, FdChannel] {
  const [a, b] = binding().seqpacketPair();
  return [new FdChannel(a, options), new FdChannel(b, options)];
}

/**
 * ChannelListener accepts control connections on a unix SOCK_SEQPACKET socket path. It owns the
 * listening fd; the caller decides what to do with the path (it is never unlinked here).
 */
export class ChannelListener extends EventEmitter<{ channel: [FdChannel]; error: [Error]; close: [] }> {
  readonly fd: number;
  private readonly native: Binding;
  private readonly poller: Poller;
  private readonly channelOptions: FdChannelOptions;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(path: string, options: FdChannelOptions & { backlog?: number } = {}) {
    super();
    this.native = binding();
    const { backlog, ...channelOptions } = options;
    this.channelOptions = channelOptions;
    this.fd = this.native.seqpacketListen(path, backlog ?? 16);
    this.poller = this.native.createPoller(this.fd, (status) => {
      if (status < 0) {
        this.report(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `control listener poll failed (uv error ${status})`));
        return;
      }
      this.acceptAll();
    });
    this.poller.start(true, false);
    serviced.add(this);
  }

  /** service: accept what is queued now, as a readable poll would (see serviceControlSockets). */
  service(): void {
    if (!this.closed && this.retryTimer === undefined) this.acceptAll();
  }

  private acceptAll(): void {
    while (!this.closed) {
      let fd: number;
      try {
        fd = this.native.accept(this.fd);
      } catch (err) {
        const code = isNativeError(err) ? err.code : '';
        if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOBUFS' || code === 'ENOMEM') {
          // The connection stays in the backlog and the poll is level-triggered: stop watching for
          // a while instead of spinning, and say why.
          this.poller.stop();
          this.retryTimer = setTimeout(() => {
            this.retryTimer = undefined;
            if (!this.closed) this.poller.start(true, false);
          }, ACCEPT_RETRY_MS);
          this.retryTimer.unref();
        }
        this.report(new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `accepting a control connection failed: ${(err as Error).message}`, { cause: err }));
        return;
      }
      if (fd < 0) return;
      const channel = new FdChannel(fd, this.channelOptions);
      if (this.listenerCount('channel') === 0) channel.close();
      else this.emit('channel', channel);
    }
  }

  /** report: an error of the listener is the owner's to hear; with no owner listening it is only logged. */
  private report(err: Error): void {
    debug('control listener: %s', err.message);
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    serviced.delete(this);
    clearTimeout(this.retryTimer);
    this.poller.close();
    try {
      this.native.close(this.fd);
    } catch {
      // Nothing to leak.
    }
    process.nextTick(() => this.emit('close'));
  }
}
