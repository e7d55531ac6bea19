// Opening control channels: connecting to a control socket path without ever blocking the event
// loop, socket pairs, and listening for connections (ChannelListener).
import { EventEmitter } from 'node:events';
import { createDebug } from './log';
import { binding, isNativeError, type Binding, type Poller } from './native';
import { HandoverError } from './errors';
import { FdChannel, type FdChannelOptions } from './channel';
import { serviceWith } from './control-service';

const debug = createDebug('handover:channel');

/** How long a control listener stops accepting after EMFILE and the like. */
const ACCEPT_RETRY_MS = 100;

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
    serviceWith(this, true);
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
    serviceWith(this, false);
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
