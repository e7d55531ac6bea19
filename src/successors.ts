// The predecessor's side of upgrades: successors accepted on the control socket one at a time,
// the spawned one watched, READY turned into retirement, and a link that ends early turned into a
// rollback (the successor is gone) or a quiet finish (it serves on).
import * as net from 'node:net';
import * as path from 'node:path';
import { createDebug } from './log';
import { CONTROL_SOCKET, ownsControlSocket, takeOverControlSocket, type OwnedControlSocket } from './control-dir';
import { HandoverError, type HandoverErrorCode } from './errors';
import type { ChangeQueue, Lifecycle, LifecycleEvent } from './lifecycle';
import { startParkedConnections, type TransferOptions } from './connections';
import type { ConnectionsReport, ConnectionTracker } from './connection-tracker';
import type { LinkEnd, SuccessorLink } from './successor-link';
import { SpawnedSuccessor, EXIT_GRACE_MS, waitGone, type ProcessLayer } from './spawner';
import type { Retirement } from './retirement';
import type { ServerSet } from './servers';
import type { ResolvedOptions, UpgraderEvents } from './options';
import type { FdChannel } from './channel';
import type { Message } from './protocol';
import { runtimeCapabilities } from './runtime';

const debug = createDebug('handover:successors');

/** The successor's link, loaded when the first successor connects: a process that never upgrades never loads it (start-up cost). */
const successorLink = (): typeof import('./successor-link') => require('./successor-link') as typeof import('./successor-link');

/** What the parts of one generation share: its state, its servers and connections, its directory. */
export interface Generation {
  readonly dir: string;
  /** 1 on a fresh start, the predecessor's number plus one after an upgrade (known once the listeners arrived). */
  number: number;
  readonly options: ResolvedOptions;
  readonly os: ProcessLayer;
  readonly lifecycle: Lifecycle;
  readonly queue: ChangeQueue;
  readonly servers: ServerSet;
  readonly tracker: ConnectionTracker;
  /** This generation's control socket, once it owns one. */
  control: OwnedControlSocket | undefined;
  /** This generation's own predecessor while it still retires (no upgrade before it is done). */
  readonly predecessor: { pid: number } | undefined;
  emit<K extends keyof UpgraderEvents>(event: K, ...args: UpgraderEvents[K]): boolean;
  warn(err: HandoverError): void;
  /** transition applies an internal event where the table allows it (a late event after stop() changes nothing). */
  transition(event: LifecycleEvent): void;
}

/** Successors runs this generation's upgrades, as the predecessor. */
export class Successors {
  /** Links that connected and have not ended; `successor` is the one past HELLO, if any. */
  private readonly links = new Set<SuccessorLink>();
  private successor: SuccessorLink | undefined;
  private retirement: Retirement | undefined;
  private pendingUpgrade: { spawned: SpawnedSuccessor; resolve: (pid: number) => void; reject: (err: HandoverError) => void } | undefined;

  constructor(
    private readonly generation: Generation,
    /** A control client's request (STATUS, UPGRADE), answered on the link's session. */
    private readonly onRequest: (link: SuccessorLink, request: Extract<Message, { type: 'STATUS' | 'UPGRADE' }>) => void,
  ) {}

  /** The pid of the successor upgrade() spawned, while it is not ready yet. */
  get spawnedPid(): number | undefined {
    return this.pendingUpgrade?.spawned.pid;
  }

  /** Whether upgrade() started a successor that is not ready yet. */
  get upgradePending(): boolean {
    return this.pendingUpgrade !== undefined;
  }

  /** listen takes successors on this generation's control socket. */
  listen(control: OwnedControlSocket): void {
    control.listener.on('channel', (channel) => this.onChannel(channel));
    control.listener.on('error', (err) => this.generation.warn(err instanceof HandoverError ? err : new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', err.message, { cause: err })));
  }

  private onChannel(channel: FdChannel): void {
    let credentials;
    try {
      credentials = channel.peerCredentials();
    } catch (err) {
      channel.close();
      this.generation.warn(new HandoverError('ERR_UPGRADE_REFUSED', `cannot read the credentials of a connecting successor: ${(err as Error).message}`));
      return;
    }
    const link = new (successorLink().SuccessorLink)(channel, credentials, this.generation.options.readyTimeout, {
      admit: (candidate) => this.admit(candidate),
      offer: () => ({ ...this.generation.servers.offer(), generation: this.generation.number }),
      request: (from, request) => this.onRequest(from, request),
      ready: (ready) => this.generation.queue.run(() => this.onSuccessorReady(ready)),
      message: (from, message) => (from === this.successor && this.retirement ? this.retirement.onMessage(message) : from.fail(`unexpected ${message.type}`)),
      ended: (ended, end) => this.generation.queue.run(() => this.onSuccessorEnded(ended, end)),
    });
    this.links.add(link);
    if (!this.generation.options.allowedUids.has(credentials.uid)) {
      const reason = `uid ${credentials.uid} is not allowed (allowedUids) to take over or control this process`;
      link.refuse('ERR_UPGRADE_REFUSED', reason);
      this.generation.warn(new HandoverError('ERR_UPGRADE_REFUSED', `refused a successor (pid ${credentials.pid}, uid ${credentials.uid}): ${reason}`));
    }
  }

  /** admit: HELLO from a permitted uid. One upgrade at a time, and none while this generation's own predecessor still retires. */
  private admit(link: SuccessorLink): { code: HandoverErrorCode; reason: string } | undefined {
    let reason: string | undefined;
    if (this.generation.lifecycle.state === 'retiring' || this.generation.lifecycle.state === 'retired') reason = 'this process is retiring';
    else if (this.generation.lifecycle.state !== 'serving' || this.successor) reason = 'an upgrade is in progress';
    else if (this.generation.predecessor) reason = `this process's own predecessor (pid ${this.generation.predecessor.pid}) is still retiring`;
    if (reason !== undefined) {
      this.generation.warn(new HandoverError('ERR_UPGRADE_IN_PROGRESS', `refused a successor (pid ${link.pid}): ${reason}`));
      return { code: 'ERR_UPGRADE_IN_PROGRESS', reason };
    }
    this.successor = link;
    this.generation.lifecycle.apply('successor-connected');
    this.generation.emit('upgrading', { pid: link.pid });
    return undefined;
  }

  private onSuccessorReady(link: SuccessorLink): void {
    if (link !== this.successor || this.generation.lifecycle.state !== 'upgrading') {
      link.fail('READY out of turn');
      return;
    }
    try {
      this.generation.servers.stopAccepting();
    } catch (err) {
      // Without a kept copy of every listening socket there is no rollback: refuse, serve on unchanged.
      link.refuse('ERR_UPGRADE_REFUSED', (err as Error).message);
      return;
    }
    link.acknowledgeReady();
    this.generation.lifecycle.apply('successor-ready');
    const pending = this.pendingUpgrade;
    this.pendingUpgrade = undefined;
    if (pending) {
      // Another successor (started by hand) may have won: ours would later take over from it, unasked.
      if (pending.spawned.owns(link.pid)) pending.spawned.succeeded();
      else pending.spawned.kill();
      pending.resolve(link.pid);
    }
    debug('successor pid %d is ready; retiring', link.pid);
    // Loaded here, not at import: a process that never upgrades never loads retirement and the mover (start-up cost).
    const { Retirement } = require('./retirement') as typeof import('./retirement');
    this.retirement = new Retirement(link, this.generation.servers, this.generation.tracker, { gracefulTimeout: this.generation.options.gracefulTimeout, answerTimeout: this.generation.options.readyTimeout, canMove: moveConnectionsPossible() }, {
      retired: (report) => this.generation.queue.run(() => this.onRetired(report)),
    });
    // Connections adopted from this process's own predecessor and still parked become sockets
    // first: the application and the adapters move what their servers have seen.
    startParkedConnections();
    this.generation.emit('retiring', { successorPid: link.pid });
    this.retirement.start();
  }

  private onSuccessorEnded(link: SuccessorLink, end: LinkEnd): void {
    this.links.delete(link);
    // Garbage or a broken rule from any peer: said once, whatever the link was doing.
    if (end.kind === 'closed-here' && end.error?.code === 'ERR_HANDOVER_PROTOCOL') this.generation.warn(end.error);
    if (link !== this.successor) return;
    if (this.generation.lifecycle.state === 'upgrading') {
      this.successor = undefined;
      this.generation.transition('successor-failed');
      const err =
        end.kind === 'aborted'
          ? new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${link.pid}) gave up before it was ready: ${end.reason}`)
          : end.kind !== 'bye' && end.error instanceof HandoverError
            ? end.error
            : new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${link.pid}) went away before it was ready`);
      if (this.pendingUpgrade?.spawned.owns(link.pid)) this.failUpgrade(err);
      else this.generation.emit('upgradeFailed', err);
      return;
    }
    if (this.generation.lifecycle.state !== 'retiring') return;
    // After READY: roll back only when the successor is gone, or gave up and said so.
    const control = this.generation.control;
    if (end.kind === 'aborted') this.rollback(link, `the successor gave up: ${end.reason}`);
    else if (end.kind === 'peer-gone' && !link.committed && control && ownsControlSocket(control)) {
      // It never took over the directory, so it will not serve: dead, or gone without a word.
      this.rollback(link, end.error ? end.error.message : 'the successor went away before it took over');
    } else if (end.kind === 'peer-gone') {
      void this.successorGone(link).then((gone) =>
        this.generation.queue.run(() => {
          if (this.successor !== link || this.generation.lifecycle.state !== 'retiring') return;
          if (gone) this.rollback(link, end.error ? end.error.message : 'the successor went away');
          else this.successorLeft(link, 'the control channel broke; the successor is alive and serves');
        }),
        (err: Error) => this.generation.warn(new HandoverError('ERR_HANDOVER_INVALID_STATE', `deciding whether the successor is gone failed: ${err.message}`, { cause: err })),
      );
    } else this.successorLeft(link, end.kind === 'bye' ? end.reason : (end.error?.message ?? 'closed'));
  }

  /**
   * successorGone decides whether a successor whose link broke after READY is really gone: by its
   * pid where this PID namespace sees it, else by asking whoever owns control.sock now.
   */
  private async successorGone(link: SuccessorLink): Promise<boolean> {
    if (link.peerPid > 0) return waitGone(this.generation.os, link.peerPid, EXIT_GRACE_MS);
    // Only a successor that took over gets here (one that never did was rolled back from at
    // once): it is reachable on control.sock.
    return !(await successorLink().probeGeneration(path.join(this.generation.dir, CONTROL_SOCKET), this.generation.options.readyTimeout));
  }

  /** successorLeft: the successor serves on without this link; retirement finishes without moving more. */
  private successorLeft(link: SuccessorLink, reason: string): void {
    debug('successor pid %d left the exchange: %s', link.pid, reason);
    this.successor = undefined;
    this.retirement?.successorLeft();
  }

  /** rollback: the successor is gone after READY; accept again on the kept sockets and own the directory again. */
  private rollback(link: SuccessorLink, reason: string): void {
    debug('rollback: successor pid %d lost (%s)', link.pid, reason);
    this.successor = undefined;
    this.retirement?.rollback((err) => this.generation.warn(err));
    this.retirement = undefined;
    try {
      const previous = this.generation.control;
      this.generation.control = takeOverControlSocket(this.generation.dir);
      this.listen(this.generation.control);
      previous?.listener.close();
    } catch (err) {
      // Serving again matters more than being reachable for the next upgrade.
      this.generation.warn(new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `rollback: cannot take back ${this.generation.dir}: ${(err as Error).message}`, { cause: err }));
    }
    this.generation.lifecycle.apply('rollback');
    this.generation.emit('rollback', { successorPid: link.pid, reason });
  }

  private onRetired(report: ConnectionsReport): void {
    if (this.generation.lifecycle.state !== 'retiring') return;
    this.successor = undefined;
    this.retirement = undefined;
    // control.sock belongs to the successor now; only our listening fd goes.
    this.generation.control?.listener.close();
    this.generation.control = undefined;
    this.generation.lifecycle.apply('retired');
    this.generation.emit('retired', report);
  }

  /** upgrade starts a successor and resolves with its pid once it is ready (this process then retires). */
  upgrade(): Promise<number> {
    if (this.generation.lifecycle.state === 'upgrading' || this.generation.lifecycle.state === 'retiring' || this.pendingUpgrade) {
      return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', this.generation.lifecycle.state === 'retiring' ? 'this process is retiring' : 'an upgrade is already in progress'));
    }
    const control = this.generation.control;
    if (control && !ownsControlSocket(control)) {
      return Promise.reject(new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `${control.path} is no longer this process's control socket (removed or replaced): a successor could not reach this process`));
    }
    if (this.generation.predecessor) return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', `the predecessor (pid ${this.generation.predecessor.pid}) is still retiring`));
    if (this.generation.lifecycle.state !== 'serving') return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `upgrade() is not possible while ${this.generation.lifecycle.state}`));
    return new Promise<number>((resolve, reject) => {
      const spawned = new SpawnedSuccessor(this.generation.options.command, this.generation.options.readyTimeout, this.generation.os);
      this.pendingUpgrade = { spawned, resolve, reject };
      spawned.once('failed', (err) => this.generation.queue.run(() => this.failUpgrade(err)));
    });
  }

  /** failUpgrade ends the pending upgrade() with an error, once; this process serves on. */
  private failUpgrade(err: HandoverError): void {
    const pending = this.pendingUpgrade;
    if (!pending) return;
    this.pendingUpgrade = undefined;
    pending.spawned.kill();
    const link = this.successor;
    if (link && this.generation.lifecycle.state === 'upgrading' && pending.spawned.owns(link.pid)) {
      this.successor = undefined;
      this.generation.transition('successor-failed');
      link.refuse(err.code, err.message);
    }
    debug('upgrade failed: %s', err.message);
    this.generation.emit('upgradeFailed', err);
    pending.reject(err);
  }


  /** transfer moves one connection while retiring (transferConnection()). */
  transfer(socket: net.Socket, options: TransferOptions): Promise<void> {
    if (!this.retirement || this.generation.lifecycle.state !== 'retiring') {
      return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `transferConnection() needs a ready successor (state is ${this.generation.lifecycle.state})`));
    }
    return this.retirement.transfer(socket, options);
  }

  /** stop: the upgrader was stopped; every link ends from here, nothing rolls back. */
  stop(): void {
    this.failUpgrade(new HandoverError('ERR_HANDOVER_STOPPED', 'the upgrader was stopped'));
    for (const link of this.links) link.close();
    this.links.clear();
    this.successor = undefined;
    this.retirement?.stop();
    this.retirement = undefined;
  }
}

/** moveConnectionsPossible: the runtime has what moves need (or could not tell yet: each move then checks its socket). */
function moveConnectionsPossible(): boolean {
  const capabilities = runtimeCapabilities();
  return capabilities.moveConnections || !capabilities.conclusive;
}
