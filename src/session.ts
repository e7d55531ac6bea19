// ControlSession: typed messages over one FdChannel. Decoding failures close the frame's fds and
// the channel; whoever listens learns why through 'close'.
import { EventEmitter } from 'node:events';
import { createDebug } from './log';
import type { FdChannel } from './channel';
import { closeFds } from './listeners';
import { decode, encode, type Message } from './protocol';
import { HandoverError } from './errors';

const debug = createDebug('handover:session');

export interface SessionEvents {
  message: [Message];
  /** error is set when the session ended for a reason other than a clean close by either end. */
  close: [error: Error | undefined];
}

/** ControlSession is one end of the exchange: it encodes, decodes and validates every message. */
export class ControlSession extends EventEmitter<SessionEvents> {
  readonly channel: FdChannel;
  private failure: Error | undefined;
  private ended = false;
  private closedHere = false;
  /**
   * Messages that arrived while nobody listened. One readiness callback may deliver several
   * messages at once (READY_ACK and the first CONN, say); none may be lost between two awaits.
   */
  private readonly backlog: Message[] = [];

  constructor(channel: FdChannel, readonly label: string) {
    super();
    this.channel = channel;
    channel.on('frame', (frame) => {
      let message: Message;
      try {
        message = decode(frame);
      } catch (err) {
        closeFds(frame.fds);
        this.fail(err as Error);
        return;
      }
      debug('%s <- %s', this.label, message.type);
      if (this.listenerCount('message') === 0) this.backlog.push(message);
      else this.emit('message', message);
    });
    channel.on('error', (err) => {
      this.failure ??= err;
    });
    channel.on('close', () => {
      if (this.ended) return;
      this.failure ??= channel.error;
      // Messages with fds nobody took are closed; the others (a REFUSED, say) stay readable by next().
      for (const message of this.backlog.splice(0)) {
        if ('fds' in message) closeFds(message.fds);
        else this.backlog.push(message);
      }
      this.ended = true;
      debug('%s closed%s', this.label, this.failure ? `: ${this.failure.message}` : '');
      this.emit('close', this.failure);
    });
  }

  /** onMessage installs the handler of every message from now on, starting with those that waited. */
  onMessage(handler: (message: Message) => void): void {
    this.on('message', handler);
    while (this.backlog.length > 0 && this.listenerCount('message') > 0) handler(this.backlog.shift()!);
  }

  get isClosed(): boolean {
    return this.ended || this.channel.isClosed;
  }

  /**
   * Whether this end closed the session (close(), or fail() on a broken rule or garbage it
   * detected) rather than the peer going away. A peer that is still alive may be on the other end.
   */
  get closedLocally(): boolean {
    return this.closedHere || (!this.channel.peerEnded && this.channel.error instanceof HandoverError && this.channel.error.code === 'ERR_HANDOVER_PROTOCOL');
  }

  /** send encodes and queues a message; fds of LISTENERS/CONN are closed after sending when `closeFds`. */
  send(message: Message, options: { closeFdsAfterSend?: boolean } = {}): Promise<void> {
    const { payload, fds } = encode(message);
    debug('%s -> %s', this.label, message.type);
    return this.channel.send(payload, { fds, closeAfterSend: options.closeFdsAfterSend === true });
  }

  /** fail ends the session with an error (garbage, a broken rule of the exchange). */
  fail(err: Error): void {
    if (!this.isClosed) this.closedHere = true;
    this.failure ??= err;
    this.channel.close();
  }

  close(): void {
    if (!this.isClosed) this.closedHere = true;
    this.channel.close();
  }

  /**
   * next resolves with the next message of one of `types`; rejects on close, on another message
   * type (a broken exchange) or after `timeoutMs`.
   */
  next<T extends Message['type']>(types: readonly T[], timeoutMs: number, what: string): Promise<Extract<Message, { type: T }>> {
    return new Promise((resolve, reject) => {
      // The awaited message, or a broken exchange: its fds closed, the session failed.
      const deliver = (message: Message): void => {
        if ((types as readonly string[]).includes(message.type)) {
          resolve(message as Extract<Message, { type: T }>);
          return;
        }
        if ('fds' in message) closeFds(message.fds);
        const err = new HandoverError('ERR_HANDOVER_PROTOCOL', `expected ${types.join(' or ')} (${what}), got ${message.type}`);
        this.fail(err);
        reject(err);
      };
      const waiting = this.backlog.shift();
      if (waiting) {
        deliver(waiting);
        return;
      }
      if (this.isClosed) {
        reject(this.failure ?? this.channel.error ?? new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `the control channel closed while waiting for ${what}`));
        return;
      }
      const cleanup = (): void => {
        clearTimeout(timer);
        this.removeListener('message', onMessage);
        this.removeListener('close', onClose);
      };
      const onMessage = (message: Message): void => {
        cleanup();
        deliver(message);
      };
      const onClose = (error: Error | undefined): void => {
        cleanup();
        reject(error ?? new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', `the control channel closed while waiting for ${what}`));
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new HandoverError('ERR_UPGRADE_READY_TIMEOUT', `timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      this.on('message', onMessage);
      this.on('close', onClose);
    });
  }
}
