// The predecessor's end of the exchange with one successor: the uid check, HELLO and the offer of
// the listeners, READY and its acknowledgement, the messages of the move phase, and how the link
// ended (aborted, said BYE, went away, or was closed from here).
import { createDebug } from './log';
import { HandoverError, type HandoverErrorCode } from './errors';
import { connectChannelWithin } from './channel-endpoints';
import type { FdChannel } from './channel';
import { accepts, FROM_SUCCESSOR, type LinkPhase } from './lifecycle';
import { closeFds } from './listeners';
import { PROTOCOL_VERSION, type ListenerEntry, type Message } from './protocol';
import { ControlSession } from './session';
import { fault } from './faults';

const debug = createDebug('handover:successor-link');

/** How a link ended, as the predecessor saw it. */
export type LinkEnd =
  /** The successor gave up (before or after READY) and closed its listeners. */
  | { kind: 'aborted'; reason: string }
  /** The successor left the exchange in order and serves on (it stopped its upgrader). */
  | { kind: 'bye'; reason: string }
  /** This end closed the link: a broken rule, garbage, a refusal or a timeout (the peer may be alive). */
  | { kind: 'closed-here'; error: HandoverError | undefined }
  /** The other end went away without a word: crashed, killed, or closed on an error of its own. */
  | { kind: 'peer-gone'; error: Error | undefined };

export interface SuccessorLinkHooks {
  /** HELLO is valid: may this successor go on? Returns a refusal, or undefined to accept. */
  admit(link: SuccessorLink): { code: HandoverErrorCode; reason: string } | undefined;
  /** The listeners to offer (dups, owned by the link once returned), and this generation's number. Throws to refuse. */
  offer(): { listeners: ListenerEntry[]; fds: number[]; generation: number };
  /** A control client's request (STATUS, UPGRADE): the link is released; the owner answers on its session, then closes it. */
  request(link: SuccessorLink, request: Extract<Message, { type: 'STATUS' | 'UPGRADE' }>): void;
  /** READY arrived in the right phase. The owner stops accepting, then calls acknowledgeReady(). */
  ready(link: SuccessorLink): void;
  /** A message of the move phase (CONN_ACK, WRITE_ACK). */
  message(link: SuccessorLink, message: Message): void;
  /** The link is over (called once, after the change that ended it). */
  ended(link: SuccessorLink, end: LinkEnd): void;
}

/** SuccessorLink is one connected successor, seen from the predecessor. */
export class SuccessorLink {
  readonly session: ControlSession;
  readonly uid: number;
  /** The successor's pid as this process sees it (0 in another PID namespace). */
  readonly peerPid: number;
  /** The fd credit the successor announced in READY (fd flow control), if it did. */
  readyCredit: number | undefined;
  /** The pid the successor announced in HELLO (its own namespace's view). */
  pid = 0;
  private phaseValue: LinkPhase = 'connected';
  private endValue: LinkEnd | undefined;
  private readonly timer: NodeJS.Timeout;
  private committedValue = false;
  private settleCommitted: () => void = () => undefined;
  /**
   * Resolves once the successor said COMMIT (it owns control.sock and pid) or the link ended:
   * retiring never finishes before it, or a successor that fails to take over would leave nobody.
   */
  readonly commitSettled = new Promise<void>((resolve) => {
    this.settleCommitted = resolve;
  });

  constructor(channel: FdChannel, credentials: { uid: number; pid: number }, readyTimeout: number, private readonly hooks: SuccessorLinkHooks) {
    this.session = new ControlSession(channel, 'predecessor');
    this.uid = credentials.uid;
    this.peerPid = credentials.pid;
    this.pid = credentials.pid;
    // A successor that connects but never says READY must not hold upgrades up forever.
    this.timer = setTimeout(() => {
      this.refuse('ERR_UPGRADE_READY_TIMEOUT', `the successor (pid ${this.pid}) was not ready within ${readyTimeout} ms`);
    }, readyTimeout);
    this.session.onMessage((message) => this.onMessage(message));
    this.session.on('close', (error) => this.onClose(error));
    fault('connected', 'predecessor', this.peerPid);
  }

  get phase(): LinkPhase {
    return this.phaseValue;
  }

  /** Whether the successor said COMMIT. */
  get committed(): boolean {
    return this.committedValue;
  }

  /** How the link ended, once it has. */
  get end(): LinkEnd | undefined {
    return this.endValue;
  }

  /** refuse answers REFUSED with a reason, then closes the link (it ends as closed-here with that error). */
  refuse(code: HandoverErrorCode, reason: string): void {
    if (this.phaseValue === 'released') return;
    debug('refusing pid %d: %s', this.pid, reason);
    const error = new HandoverError(code, reason);
    this.endValue ??= { kind: 'closed-here', error };
    this.phaseValue = 'released';
    clearTimeout(this.timer);
    this.session
      .send({ type: 'REFUSED', code, reason })
      .catch(() => undefined)
      .finally(() => this.session.close());
  }

  /** acknowledgeReady: this process stopped accepting; READY_ACK goes out and connections may move. */
  acknowledgeReady(): void {
    this.phaseValue = 'ready';
    this.session.send({ type: 'READY_ACK' }).then(
      () => fault('ready-acked', 'predecessor', this.peerPid),
      () => undefined,
    );
  }

  /** bye: retiring is over; the successor owns everything now. */
  async bye(reason: string): Promise<void> {
    if (this.phaseValue === 'released') return;
    this.phaseValue = 'released';
    this.endValue ??= { kind: 'closed-here', error: undefined };
    clearTimeout(this.timer);
    await this.session.send({ type: 'BYE', reason }).catch(() => undefined);
    this.session.close();
  }

  /** close ends the link from here without a word (stop()). */
  close(): void {
    this.endValue ??= { kind: 'closed-here', error: undefined };
    this.phaseValue = 'released';
    clearTimeout(this.timer);
    this.session.close();
  }

  private onMessage(message: Message): void {
    if (!accepts(FROM_SUCCESSOR, this.phaseValue, message)) {
      if ('fds' in message) closeFds(message.fds);
      this.fail(`unexpected ${message.type} from the successor while ${this.phaseValue}`);
      return;
    }
    switch (message.type) {
      case 'PING':
        void this.session.send({ type: 'PONG', pid: process.pid }).catch(() => undefined);
        return;
      case 'HELLO':
        this.onHello(message);
        return;
      case 'STATUS':
      case 'UPGRADE':
        // A client, not a successor: no readyTimeout (an upgrade takes as long as it takes), nothing more accepted from it.
        clearTimeout(this.timer);
        if (message.version !== PROTOCOL_VERSION) {
          this.refuse('ERR_HANDOVER_VERSION', `protocol version ${message.version} is not ${PROTOCOL_VERSION}`);
          return;
        }
        this.phaseValue = 'released';
        this.hooks.request(this, message);
        return;
      case 'READY':
        clearTimeout(this.timer);
        this.readyCredit = message.credit;
        fault('ready-sent', 'predecessor', this.peerPid);
        this.hooks.ready(this);
        return;
      case 'COMMIT':
        this.committedValue = true;
        this.settleCommitted();
        return;
      case 'ABORT':
      case 'BYE':
        debug('successor pid %d: %s %s', this.pid, message.type, message.reason);
        this.endValue ??= message.type === 'ABORT' ? { kind: 'aborted', reason: message.reason } : { kind: 'bye', reason: message.reason };
        this.phaseValue = 'released';
        clearTimeout(this.timer);
        this.session.close();
        return;
      default:
        this.hooks.message(this, message);
    }
  }

  private onHello(message: Extract<Message, { type: 'HELLO' }>): void {
    if (message.version !== PROTOCOL_VERSION) {
      this.refuse('ERR_HANDOVER_VERSION', `protocol version ${message.version} is not ${PROTOCOL_VERSION}`);
      return;
    }
    if (this.peerPid <= 0) this.pid = message.pid;
    const refusal = this.hooks.admit(this);
    if (refusal) {
      this.refuse(refusal.code, refusal.reason);
      return;
    }
    fault('hello', 'predecessor', this.peerPid);
    let offer;
    try {
      offer = this.hooks.offer();
    } catch (err) {
      const code = err instanceof HandoverError ? err.code : 'ERR_UPGRADE_REFUSED';
      this.refuse(code, (err as Error).message);
      return;
    }
    this.phaseValue = 'offered';
    this.session.send({ type: 'LISTENERS', pid: process.pid, listeners: offer.listeners, fds: offer.fds, generation: offer.generation }, { closeFdsAfterSend: true }).then(
      () => fault('listeners', 'predecessor', this.peerPid),
      (err: Error) => debug('sending listeners failed: %s', err.message),
    );
  }

  /** fail: a broken rule of the exchange, detected here. */
  fail(reason: string): void {
    const error = new HandoverError('ERR_HANDOVER_PROTOCOL', reason);
    this.endValue ??= { kind: 'closed-here', error };
    this.phaseValue = 'released';
    this.session.fail(error);
  }

  private onClose(error: Error | undefined): void {
    clearTimeout(this.timer);
    this.settleCommitted();
    this.phaseValue = 'released';
    if (this.endValue === undefined) {
      this.endValue = this.session.closedLocally
        ? { kind: 'closed-here', error: error instanceof HandoverError ? error : error ? new HandoverError('ERR_HANDOVER_PROTOCOL', error.message, { cause: error }) : undefined }
        : { kind: 'peer-gone', error };
    }
    this.hooks.ended(this, this.endValue);
  }
}

/**
 * probeGeneration asks whoever listens on `socketPath` whether it is alive (PING, PONG), changing
 * nothing there. It resolves true on an answer, false when nobody listens or the connection dies
 * unanswered (a dying process resets the connections waiting in its backlog), and true when
 * nothing is decided within `timeoutMs` (alive, but busy: never assume a live server is gone).
 */
export async function probeGeneration(socketPath: string, timeoutMs: number): Promise<boolean> {
  let channel: FdChannel;
  try {
    channel = await connectChannelWithin(socketPath, timeoutMs);
  } catch (err) {
    // Only "nobody listens there" means gone; EMFILE, EACCES or a full backlog say nothing of the other end.
    const code = (err as { code?: string }).code;
    return code !== 'ECONNREFUSED' && code !== 'ENOENT';
  }
  const session = new ControlSession(channel, 'probe');
  try {
    await session.send({ type: 'PING' });
    await session.next(['PONG'], timeoutMs, 'an answer to PING');
    return true;
  } catch (err) {
    return (err as { code?: string }).code === 'ERR_UPGRADE_READY_TIMEOUT';
  } finally {
    session.close();
  }
}
