// FdChannel: frames with file descriptors over a SOCK_SEQPACKET unix socket, without blocking the
// event loop. Node never reads this socket (it would drop SCM_RIGHTS fds): the addon owns it and a
// uv_poll_t reports readiness; this file splits, reassembles and queues.
import { EventEmitter } from 'node:events';
import { createDebug } from './log';
import { binding, isNativeError, type Binding, type PeerCredentials, type Poller } from './native';
import { HandoverError } from './errors';
import { serviceWith } from './control-service';
import { CHUNK_HEADER, CHUNK_PAYLOAD, FrameAssembler, splitFrame } from './chunks';

const debug = createDebug('handover:channel');

/** Messages read per readiness callback before yielding to the event loop. */
const READS_PER_TICK = 64;

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
  private readonly assembler: FrameAssembler;
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
    this.assembler = new FrameAssembler(this.maxFrameSize, this.maxFdsPerFrame);
    this.native = binding();
    this.poller = this.native.createPoller(fd, (status, readable, writable, disconnect) => {
      this.onReadiness(status, readable, writable, disconnect);
    });
    this.rearm();
    serviceWith(this, true);
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
      for (const { data, fds: chunkFds, last } of splitFrame(payload, fds, this.native.MAX_FDS_PER_MESSAGE)) {
        const chunk: OutgoingChunk = { data, fds: chunkFds };
        if (last) chunk.done = { resolve, reject, owned };
        this.queue.push(chunk);
      }
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
    serviceWith(this, false);
    this.poller.close();
    clearTimeout(this.refsRetry.timer);
    const error = new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', 'the control channel was closed before the frame was sent');
    for (const chunk of this.queue.splice(0)) {
      if (chunk.done) {
        if (chunk.done.owned) closeAll(this.native, chunk.done.owned);
        chunk.done.reject(error);
      }
    }
    closeAll(this.native, this.assembler.abandon());
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
    if (this.assembler.inFrame) {
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
    const result = this.assembler.push(data, fds);
    if (result === undefined) return;
    if ('error' in result) {
      closeAll(this.native, result.untaken);
      this.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', result.error));
      return;
    }
    if (this.listenerCount('frame') === 0) {
      closeAll(this.native, result.frame.fds);
      debug('channel fd %d: frame dropped, nobody listens', this.fd);
      return;
    }
    this.emit('frame', result.frame);
  }
}
