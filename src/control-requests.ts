// The generation's answers to control clients (`handover status`, `handover upgrade`): what it
// is and does (STATUS), and an upgrade run on request with its progress and result (UPGRADE).
import type { EventEmitter } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createDebug } from './log';
import { listening } from './servers';
import { HandoverError } from './errors';
import type { GenerationStatus, Message, UpgradeRecord } from './protocol';
import type { SuccessorLink } from './successor-link';
import type { Generation } from './successors';
import type { UpgraderEvents } from './options';

const debug = createDebug('handover:requests');

/** describeAddress: where a server listens, as an operator writes it. */
function describeAddress(address: AddressInfo | string | null): string | undefined {
  if (address === null) return undefined;
  if (typeof address === 'string') return address;
  return address.family === 'IPv6' ? `[${address.address}]:${address.port}` : `${address.address}:${address.port}`;
}

/** The requests a generation answers; the link of each is released (no successor behind it). */
export type ControlRequest = Extract<Message, { type: 'STATUS' | 'UPGRADE' }>;

/** What ControlRequests needs of the upgrader: its events, its upgrade(), and the pid upgrade() spawned. */
export interface RequestTarget {
  readonly events: Pick<EventEmitter<UpgraderEvents>, 'on' | 'prependListener' | 'off'>;
  upgrade(): Promise<number>;
  spawnedPid(): number | undefined;
}

/** ControlRequests keeps what `handover status` shows (the last upgrade) and answers the requests. */
export class ControlRequests {
  private last: UpgradeRecord | undefined;

  constructor(
    private readonly generation: Generation,
    private readonly target: RequestTarget,
  ) {
    const { events } = target;
    events.on('ready', ({ predecessorPid }) => {
      if (predecessorPid !== undefined) this.last = { result: 'succeeded', at: Date.now(), predecessorPid, successorPid: process.pid };
    });
    events.on('upgradeFailed', (err) => {
      this.last = { result: 'failed', at: Date.now(), predecessorPid: process.pid, code: err.code, reason: err.message };
    });
    events.on('rollback', ({ successorPid, reason }) => {
      this.last = { result: 'rolled-back', at: Date.now(), predecessorPid: process.pid, successorPid, code: 'ERR_UPGRADE_ROLLED_BACK', reason };
    });
  }

  /** status: this generation now. */
  status(): GenerationStatus {
    const { generation } = this;
    const uptime = Math.round(process.uptime() * 1000);
    const status: GenerationStatus = {
      pid: process.pid,
      generation: generation.number,
      state: generation.lifecycle.state,
      startedAt: Date.now() - uptime,
      uptime,
      listeners: [...generation.servers.values()].filter((entry) => listening(entry.server) || entry.keptFd !== undefined).map((entry) => {
        const address = listening(entry.server) ? describeAddress(entry.server.address()) : undefined;
        return { key: entry.key, kind: entry.kind, ...(address === undefined ? {} : { address }) };
      }),
      connections: generation.tracker.totals,
    };
    if (generation.predecessor) status.predecessorPid = generation.predecessor.pid;
    if (this.last) status.lastUpgrade = { ...this.last };
    return status;
  }

  /** serve answers one request on the link's session, then closes it. */
  serve(link: SuccessorLink, request: ControlRequest): void {
    debug('%s from pid %d (uid %d)', request.type, link.pid, link.uid);
    const { session } = link;
    if (request.type === 'STATUS') {
      session.send({ type: 'STATUS_REPLY', status: this.status() }).then(
        () => session.close(),
        () => session.close(),
      );
      return;
    }
    this.serveUpgrade(link);
  }

  /** serveUpgrade runs upgrade() and reports each step; the result is the last message. */
  private serveUpgrade(link: SuccessorLink): void {
    const { session } = link;
    const { events } = this.target;
    let done = false;
    let successor: number | undefined;
    const send = (message: Message): void => {
      if (!session.isClosed) void session.send(message).catch(() => undefined);
    };
    // Prepended: the application's own 'retired' listener usually exits the process at once.
    const onUpgrading: (...args: UpgraderEvents['upgrading']) => void = ({ pid }) => send({ type: 'PROGRESS', step: 'connected', pid });
    const onRetiring: (...args: UpgraderEvents['retiring']) => void = ({ successorPid }) => {
      send({ type: 'PROGRESS', step: 'ready', pid: successorPid });
      send({ type: 'PROGRESS', step: 'moving', connections: this.generation.tracker.size });
      successor = successorPid;
    };
    const onRetired: (...args: UpgraderEvents['retired']) => void = (report) => {
      send({ type: 'PROGRESS', step: 'retired' });
      finish({ type: 'RESULT', ok: true, generation: this.generation.number + 1, report: { ...report }, ...(successor === undefined ? {} : { pid: successor }) });
    };
    const onRollback: (...args: UpgraderEvents['rollback']) => void = ({ successorPid, reason }) => {
      finish({ type: 'RESULT', ok: false, code: 'ERR_UPGRADE_ROLLED_BACK', reason: `the successor (pid ${successorPid}) was lost after it was ready (${reason}); this process serves again`, pid: successorPid });
    };
    const finish = (result: Extract<Message, { type: 'RESULT' }>): void => {
      if (done) return;
      done = true;
      events.off('upgrading', onUpgrading);
      events.off('retiring', onRetiring);
      events.off('retired', onRetired);
      events.off('rollback', onRollback);
      if (session.isClosed) return;
      session.send(result).then(
        () => session.close(),
        () => session.close(),
      );
    };
    events.prependListener('upgrading', onUpgrading);
    events.prependListener('retiring', onRetiring);
    events.prependListener('retired', onRetired);
    events.prependListener('rollback', onRollback);
    // The client may go away (Ctrl-C): the upgrade goes on, nobody hears of it.
    session.once('close', () => finish({ type: 'RESULT', ok: false, code: 'ERR_HANDOVER_CHANNEL_CLOSED', reason: 'the client went away' }));
    this.target.upgrade().then(
      (pid) => {
        successor ??= pid;
      },
      (err: unknown) => {
        const error = err instanceof HandoverError ? err : new HandoverError('ERR_HANDOVER_INVALID_STATE', String(err));
        finish({ type: 'RESULT', ok: false, code: error.code, reason: error.message });
      },
    );
    const spawned = this.target.spawnedPid();
    if (spawned !== undefined) send({ type: 'PROGRESS', step: 'spawned', pid: spawned });
  }
}
