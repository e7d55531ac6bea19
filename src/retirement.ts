// Retirement of a predecessor after its successor said READY: connections move (through the
// adapters) or finish, counted; already-sent ones get their answer; then BYE and 'retired'. A
// rollback undoes it: accept again on the kept sockets, serve every connection as before.
import type * as net from 'node:net';
import { createDebug } from './log';
import { HandoverError } from './errors';
import type { ConnectionMover, TransferOptions } from './connections';
import type { ConnectionsReport } from './connection-tracker';
import type { ConnectionTracker } from './connection-tracker';
import type { ServerSet } from './servers';
import type { SuccessorLink } from './successor-link';
import type { Message } from './protocol';
import { fault } from './faults';

const debug = createDebug('handover:retirement');

export interface RetirementOptions {
  gracefulTimeout: number;
  /** How long connections already sent may wait for their answer after the graceful timeout. */
  answerTimeout: number;
  /** Whether this runtime can move connections (else every adapter drains). */
  canMove: boolean;
}

export interface RetirementHooks {
  /** Retirement is over: exit now. */
  retired(report: ConnectionsReport): void;
}

/** Retirement drives one predecessor's retirement towards one successor link. */
export class Retirement {
  private readonly mover: ConnectionMover;
  /** The link ended early (rollback, or a successor that left): stop waiting for it. */
  private linkLost = false;
  private finished = false;
  private decide: () => void = () => undefined;
  /** Resolves when the owner decided what a link that ended early means (rollback or successorLeft). */
  private readonly decided = new Promise<void>((resolve) => {
    this.decide = resolve;
  });

  constructor(
    private readonly link: SuccessorLink,
    private readonly servers: ServerSet,
    private readonly tracker: ConnectionTracker,
    private readonly options: RetirementOptions,
    private readonly hooks: RetirementHooks,
  ) {
    // Loaded here, not at import: a process that never retires never loads the connection mover (start-up cost).
    const { ConnectionMover } = require('./connections') as typeof import('./connections');
    this.mover = new ConnectionMover(link.session, {
      peerPid: link.peerPid,
      keyOf: (socket) => tracker.keyOf(socket),
      moved: (socket) => tracker.markMoved(socket),
    }, { credit: link.readyCredit });
  }

  /** start: every adapter moves what it can (or drains), and the wait for the connections begins. */
  start(): void {
    fault('retiring', 'predecessor', this.link.peerPid);
    const move = this.options.canMove ? (socket: net.Socket, options?: TransferOptions) => this.mover.transfer(socket, options) : undefined;
    for (const entry of this.servers.values()) entry.adapter?.retire(move);
    // Only a listener of 'retired' can throw here: it throws as any listener would, not swallowed.
    this.run().catch((err: unknown) => process.nextTick(() => {
      throw err;
    }));
  }

  /** transfer moves one connection (transferConnection()). */
  transfer(socket: net.Socket, options?: TransferOptions): Promise<void> {
    if (this.linkLost || this.finished) {
      return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', 'the successor link is over: the connection stays here'));
    }
    return this.mover.transfer(socket, options);
  }

  /** onMessage takes the move-phase messages of the link (CONN_ACK, WRITE_ACK). */
  onMessage(message: Message): void {
    if (!this.mover.onMessage(message)) this.link.fail(`unexpected ${message.type} from the successor`);
  }

  /**
   * successorLeft: the link ended before retirement did, with the successor alive (it said BYE,
   * or this end closed the link on a broken rule). Nothing more moves; connections already sent
   * but unanswered are not given back (the successor may hold them); the rest finish here.
   */
  successorLeft(): void {
    this.linkLost = true;
    this.mover.close({ successorAlive: true });
    this.decide();
  }

  /**
   * stop: the upgrader was stopped while retiring. Nothing more moves or waits (no timer keeps the
   * process alive); connections sent but unanswered are closed here, never thawed.
   */
  stop(): void {
    this.linkLost = true;
    this.finished = true;
    this.mover.close({ successorAlive: true });
    this.tracker.changed();
    this.decide();
  }

  /** rollback: the successor is gone. Accept again, and serve every connection that did not move. */
  rollback(report: (err: HandoverError) => void): void {
    this.linkLost = true;
    this.finished = true;
    this.mover.close();
    this.tracker.changed();
    this.servers.resumeAccepting(report);
    for (const entry of this.servers.values()) entry.adapter?.resume();
    this.decide();
  }

  private async run(): Promise<void> {
    const report = await this.tracker.waitDone(this.options.gracefulTimeout, () => this.finished);
    if (this.finished) return;
    // Connections already sent get their answer before anything is let go.
    await this.mover.settle(this.options.answerTimeout);
    // Never before the successor took over the directory (or the link ended, which decides).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.link.commitSettled, new Promise((resolve) => (timer = setTimeout(resolve, this.options.answerTimeout)))]);
    clearTimeout(timer);
    // A link that ended early is decided by the owner (rollback or successorLeft) before anything else.
    if (this.link.end !== undefined) await this.decided;
    if (this.finished) return;
    this.finished = true;
    this.mover.close();
    await this.link.bye(report.timedOut ? `graceful timeout with ${report.remaining} connections left` : 'all connections done');
    fault('retired', 'predecessor', this.link.peerPid);
    this.servers.releaseKept();
    debug('retired: %o', report);
    this.hooks.retired(report);
  }
}
