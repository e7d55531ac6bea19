// The upgrader: the public front of one generation. It validates options, owns the one state
// value (src/lifecycle.ts) and wires the parts: the predecessor link (this process as successor),
// successor links and the spawner (as predecessor), retirement, servers and connection counting.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';
import createDebug from 'debug';
import { abandonControl, commitControl, CONTROL_SOCKET, ownsControlSocket, prepareControl, prepareDir, releaseControlSocket, removePidFile, takeOverControlSocket, type OwnedControlSocket } from './control-dir';
import { HandoverError, type HandoverErrorCode } from './errors';
import { ChangeQueue, Lifecycle, type LifecycleEvent, type UpgraderState } from './lifecycle';
import { closeFds, listenerKey, type InheritedListener, type ListenTarget } from './listeners';
import { ConnectionAdopter, type TransferOptions } from './connections';
import { ConnectionTracker, type ConnectionsReport } from './connection-tracker';
import { PredecessorLink } from './predecessor-link';
import { probeGeneration, SuccessorLink, type LinkEnd } from './successor-link';
import { SpawnedSuccessor, systemProcesses, type ProcessLayer } from './spawner';
import { Retirement } from './retirement';
import { ServerSet } from './servers';
import { adapterFor } from './adapters/adapter';
import { checkTimeout, resolveOptions, type ListenOptions, type ResolvedOptions, type UpgraderEvents, type UpgraderOptions } from './options';
import type { FdChannel } from './channel';
import { fault } from './faults';

const debug = createDebug('handover:upgrader');

/** How long a predecessor waits for a successor whose link broke to be gone before it counts it alive. */
const EXIT_GRACE_MS = 1000;

/**
 * Upgrader runs one generation of a server. Create it first thing, give it your servers with
 * listen(), call ready() when you serve; call upgrade() (on SIGHUP, say) to hand over to a new
 * process, and exit on 'retired'.
 */
export class Upgrader extends EventEmitter<UpgraderEvents> {
  readonly dir: string;
  readonly readyTimeout: number;
  readonly gracefulTimeout: number;
  private readonly options: ResolvedOptions;
  private readonly lifecycle = new Lifecycle((from, to, event) => debug('state %s -> %s (%s)', from, to, event));
  private readonly queue = new ChangeQueue();
  private readonly servers = new ServerSet();
  private readonly tracker = new ConnectionTracker();
  private readonly inherited = new Map<string, InheritedListener>();
  private readonly started: Promise<void>;
  private readyPromise: Promise<void> | undefined;
  private predecessor: PredecessorLink | undefined;
  private control: OwnedControlSocket | undefined;
  /** Links that connected and have not ended; `successor` is the one past HELLO, if any. */
  private readonly links = new Set<SuccessorLink>();
  private successor: SuccessorLink | undefined;
  private retirement: Retirement | undefined;
  private pendingUpgrade: { spawned: SpawnedSuccessor; resolve: (pid: number) => void; reject: (err: HandoverError) => void } | undefined;

  constructor(options: UpgraderOptions, private readonly os: ProcessLayer = systemProcesses) {
    super();
    const resolved = resolveOptions(options);
    this.options = { ...resolved, dir: prepareDir(resolved.dir) };
    this.dir = this.options.dir;
    this.readyTimeout = this.options.readyTimeout;
    this.gracefulTimeout = this.options.gracefulTimeout;
    this.started = this.start();
    // Errors surface through listen()/ready()/inheritListeners(); never as an unhandled rejection.
    this.started.catch(() => undefined);
  }

  /** The current state of this generation. */
  get state(): UpgraderState {
    return this.lifecycle.state;
  }

  /** Whether this process took over from a running predecessor. */
  get hasPredecessor(): boolean {
    return this.predecessor !== undefined;
  }

  /** Open connections of the servers given to listen() (tracked, not yet closed or moved). */
  get connectionCount(): number {
    return this.tracker.size;
  }

  private async start(): Promise<void> {
    const found = await PredecessorLink.connect(this.dir, this.options);
    if (!found) return;
    this.predecessor = found.link;
    for (const listener of found.listeners) this.inherited.set(listener.key, listener);
    for (const warning of found.warnings) this.warn(warning);
  }

  /** inheritListeners resolves with the listeners received from the predecessor, by key (empty on a fresh start). */
  async inheritListeners(): Promise<ReadonlyMap<string, InheritedListener>> {
    await this.started;
    return new Map(this.inherited);
  }

  /**
   * listen binds `server` to the inherited socket of the same key, or to a fresh one, and resolves
   * once it listens. Works for net, http, https and http2 servers, TCP and unix paths.
   */
  async listen(server: net.Server, target: ListenTarget, options: ListenOptions = {}): Promise<void> {
    if (!(server instanceof net.Server)) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'listen() needs a net.Server (http, https and http2 servers are net.Servers)');
    }
    if (typeof target !== 'object' || target === null) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'listen() needs a target: { port, host } or { path }');
    }
    if (options.adopt !== undefined && typeof options.adopt !== 'function') throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.adopt must be a function');
    const { key, kind } = listenerKey(target);
    await this.started;
    if (this.state !== 'starting' && this.state !== 'serving') {
      throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `listen() is not possible while ${this.state}`);
    }
    if (this.servers.has(key)) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `a server already listens on ${key}`);
    const inherited = this.inherited.get(key) ?? this.inheritedByAddress(target);
    if (inherited) this.inherited.delete(inherited.key);
    await this.servers.bind(server, target, inherited);
    this.servers.add({ server, key, kind, backlog: target.backlog, adapter: adapterFor(server), adopt: options.adopt });
    server.on('connection', (socket: net.Socket) => this.tracker.track(socket, key));
  }

  /**
   * inheritedByAddress finds an inherited TCP listener bound to exactly this host and port when
   * the keys differ (the predecessor asked for port 0, or spelled the host another way).
   */
  private inheritedByAddress(target: ListenTarget): InheritedListener | undefined {
    if (target.key !== undefined || target.path !== undefined || !target.port || !target.host) return undefined;
    const wanted = listenerKey({ host: target.host, port: target.port }).key;
    for (const listener of this.inherited.values()) {
      const { family, address, port } = listener.info;
      if ((family === 'inet' || family === 'inet6') && address !== undefined && port === target.port && listenerKey({ host: address, port }).key === wanted) return listener;
    }
    return undefined;
  }

  /**
   * ready says this process serves. With a predecessor: READY makes it stop accepting (keeping
   * its sockets for a rollback) and retire; this process takes over control.sock and pid, and the
   * inherited listeners nobody claimed are closed.
   */
  ready(): Promise<void> {
    this.readyPromise ??= this.becomeReady();
    return this.readyPromise;
  }

  private async becomeReady(): Promise<void> {
    await this.started;
    if (this.state !== 'starting') throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `ready() is not possible while ${this.state}`);
    const predecessor = this.predecessor;
    fault('servers-built', 'successor', predecessor?.peerPid);
    // Everything that can fail is done before READY, while the predecessor still serves unchanged.
    let prepared;
    try {
      prepared = prepareControl(this.dir);
    } catch (err) {
      await predecessor?.abort(`cannot prepare the control socket: ${(err as Error).message}`);
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `cannot prepare the control socket in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await predecessor?.ready(this.readyTimeout, () => this.os.liveness(predecessor.peerPid) === 'gone');
      if ((this.state as UpgraderState) !== 'starting') throw new HandoverError('ERR_HANDOVER_STOPPED', 'the upgrader was stopped before it was ready');
    } catch (err) {
      abandonControl(prepared);
      if ((this.state as UpgraderState) === 'stopped') await predecessor?.abort('the successor was stopped');
      throw err;
    }
    try {
      this.control = commitControl(prepared);
    } catch (err) {
      // Past READY the predecessor stopped accepting: give up cleanly so that it rolls back.
      this.servers.closeListeners();
      await predecessor?.abort(`cannot take over the control directory: ${(err as Error).message}`);
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `cannot take over ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    fault('control-taken', 'successor', predecessor?.peerPid);
    this.listenForSuccessors(this.control);
    const unclaimed = [...this.inherited.values()];
    this.inherited.clear();
    if (unclaimed.length > 0) debug('closing %d unclaimed listeners: %s', unclaimed.length, unclaimed.map((l) => l.key).join(', '));
    closeFds(unclaimed.map((l) => l.fd));
    this.lifecycle.apply('ready');
    if (predecessor?.phase === 'ready') this.adoptFrom(predecessor);
    else this.predecessor = undefined;
    this.emit('ready', { pid: process.pid, predecessorPid: predecessor?.pid });
  }

  /** adoptFrom takes the connections the predecessor moves here, until it says BYE or goes away. */
  private adoptFrom(predecessor: PredecessorLink): void {
    const adopter = new ConnectionAdopter(predecessor.session, {
      serverFor: (key) => {
        const entry = this.servers.get(key);
        if (!entry) return undefined;
        const adapter = entry.adapter;
        return { server: entry.server, adopt: entry.adopt, ...(adapter?.afterAdopt ? { afterAdopt: (socket: net.Socket) => adapter.afterAdopt!(socket) } : {}) };
      },
      track: (socket, key) => this.tracker.track(socket, key),
      failed: (err) => this.warn(err),
      peerPid: predecessor.peerPid,
    });
    predecessor.start(
      (message) => {
        if (!adopter.onMessage(message)) predecessor.session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `unexpected ${message.type} from the predecessor`));
      },
      (clean, error) => {
        if (this.predecessor !== predecessor) return;
        this.predecessor = undefined;
        if (error) this.warn(error instanceof HandoverError ? error : new HandoverError('ERR_HANDOVER_PROTOCOL', error.message, { cause: error }));
        this.emit('predecessorRetired', { pid: predecessor.pid, clean });
      },
    );
  }

  private listenForSuccessors(control: OwnedControlSocket): void {
    control.listener.on('channel', (channel) => this.onChannel(channel));
    control.listener.on('error', (err) => this.warn(err instanceof HandoverError ? err : new HandoverError('ERR_HANDOVER_CHANNEL_CLOSED', err.message, { cause: err })));
  }

  private onChannel(channel: FdChannel): void {
    let credentials;
    try {
      credentials = channel.peerCredentials();
    } catch (err) {
      channel.close();
      this.warn(new HandoverError('ERR_UPGRADE_REFUSED', `cannot read the credentials of a connecting successor: ${(err as Error).message}`));
      return;
    }
    const link = new SuccessorLink(channel, credentials, this.readyTimeout, {
      admit: (candidate) => this.admit(candidate),
      offer: () => this.servers.offer(),
      ready: (ready) => this.queue.run(() => this.onSuccessorReady(ready)),
      message: (from, message) => (from === this.successor && this.retirement ? this.retirement.onMessage(message) : from.fail(`unexpected ${message.type}`)),
      ended: (ended, end) => this.queue.run(() => this.onSuccessorEnded(ended, end)),
    });
    this.links.add(link);
    if (!this.options.allowedUids.has(credentials.uid)) {
      const reason = `uid ${credentials.uid} is not allowed to take over`;
      link.refuse('ERR_UPGRADE_REFUSED', reason);
      this.warn(new HandoverError('ERR_UPGRADE_REFUSED', `refused a successor (pid ${credentials.pid}, uid ${credentials.uid}): ${reason}`));
    }
  }

  /** admit: HELLO from a permitted uid. One upgrade at a time, and none while this generation's own predecessor still retires. */
  private admit(link: SuccessorLink): { code: HandoverErrorCode; reason: string } | undefined {
    let reason: string | undefined;
    if (this.state === 'retiring' || this.state === 'retired') reason = 'this process is retiring';
    else if (this.state !== 'serving' || this.successor) reason = 'an upgrade is in progress';
    else if (this.predecessor) reason = `this process's own predecessor (pid ${this.predecessor.pid}) is still retiring`;
    if (reason !== undefined) {
      this.warn(new HandoverError('ERR_UPGRADE_IN_PROGRESS', `refused a successor (pid ${link.pid}): ${reason}`));
      return { code: 'ERR_UPGRADE_IN_PROGRESS', reason };
    }
    this.successor = link;
    this.lifecycle.apply('successor-connected');
    this.emit('upgrading', { pid: link.pid });
    return undefined;
  }

  private onSuccessorReady(link: SuccessorLink): void {
    if (link !== this.successor || this.state !== 'upgrading') {
      link.fail('READY out of turn');
      return;
    }
    this.servers.stopAccepting();
    link.acknowledgeReady();
    this.lifecycle.apply('successor-ready');
    const pending = this.pendingUpgrade;
    this.pendingUpgrade = undefined;
    if (pending) {
      // Another successor (started by hand) may have won: ours would later take over from it, unasked.
      if (pending.spawned.owns(link.pid)) pending.spawned.succeeded();
      else pending.spawned.kill();
      pending.resolve(link.pid);
    }
    debug('successor pid %d is ready; retiring', link.pid);
    this.retirement = new Retirement(link, this.servers, this.tracker, { gracefulTimeout: this.gracefulTimeout, answerTimeout: this.readyTimeout, canMove: true }, {
      retired: (report) => this.queue.run(() => this.onRetired(report)),
    });
    this.emit('retiring', { successorPid: link.pid });
    this.retirement.start();
  }

  private onSuccessorEnded(link: SuccessorLink, end: LinkEnd): void {
    this.links.delete(link);
    // Garbage or a broken rule from any peer: said once, whatever the link was doing.
    if (end.kind === 'closed-here' && end.error?.code === 'ERR_HANDOVER_PROTOCOL') this.warn(end.error);
    if (link !== this.successor) return;
    if (this.state === 'upgrading') {
      this.successor = undefined;
      this.transition('successor-failed');
      const err =
        end.kind === 'aborted'
          ? new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${link.pid}) gave up before it was ready: ${end.reason}`)
          : end.kind !== 'bye' && end.error instanceof HandoverError
            ? end.error
            : new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${link.pid}) went away before it was ready`);
      if (this.pendingUpgrade?.spawned.owns(link.pid)) this.failUpgrade(err);
      else this.emit('upgradeFailed', err);
      return;
    }
    if (this.state !== 'retiring') return;
    // After READY: roll back only when the successor is gone, or gave up and said so.
    if (end.kind === 'aborted') this.rollback(link, `the successor gave up: ${end.reason}`);
    else if (end.kind === 'peer-gone') {
      void this.successorGone(link).then((gone) =>
        this.queue.run(() => {
          if (this.successor !== link || this.state !== 'retiring') return;
          if (gone) this.rollback(link, end.error ? end.error.message : 'the successor went away');
          else this.successorLeft(link, 'the control channel broke; the successor is alive and serves');
        }),
      );
    } else this.successorLeft(link, end.kind === 'bye' ? end.reason : (end.error?.message ?? 'closed'));
  }

  /**
   * successorGone decides whether a successor whose link broke after READY is really gone: by its
   * pid where this PID namespace sees it, else by asking whoever owns control.sock now.
   */
  private async successorGone(link: SuccessorLink): Promise<boolean> {
    if (link.peerPid > 0) {
      const deadline = Date.now() + EXIT_GRACE_MS;
      for (;;) {
        const liveness = this.os.liveness(link.peerPid);
        if (liveness !== 'alive') return liveness === 'gone';
        if (Date.now() >= deadline) return false;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    // A successor that could not take over says ABORT; one that did is reachable there.
    if (this.control && ownsControlSocket(this.control)) return true;
    return !(await probeGeneration(path.join(this.dir, CONTROL_SOCKET), this.readyTimeout));
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
    this.retirement?.rollback((err) => this.warn(err));
    this.retirement = undefined;
    try {
      const previous = this.control;
      this.control = takeOverControlSocket(this.dir);
      this.listenForSuccessors(this.control);
      previous?.listener.close();
    } catch (err) {
      // Serving again matters more than being reachable for the next upgrade.
      this.warn(new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `rollback: cannot take back ${this.dir}: ${(err as Error).message}`, { cause: err }));
    }
    this.lifecycle.apply('rollback');
    this.emit('rollback', { successorPid: link.pid, reason });
  }

  private onRetired(report: ConnectionsReport): void {
    if (this.state !== 'retiring') return;
    this.successor = undefined;
    this.retirement = undefined;
    // control.sock belongs to the successor now; only our listening fd goes.
    this.control?.listener.close();
    this.control = undefined;
    this.lifecycle.apply('retired');
    this.emit('retired', report);
  }

  /** upgrade starts a successor and resolves with its pid once it is ready (this process then retires). */
  upgrade(): Promise<number> {
    if (this.state === 'upgrading' || this.state === 'retiring' || this.pendingUpgrade) {
      return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', this.state === 'retiring' ? 'this process is retiring' : 'an upgrade is already in progress'));
    }
    if (this.predecessor) return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', `the predecessor (pid ${this.predecessor.pid}) is still retiring`));
    if (this.state !== 'serving') return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `upgrade() is not possible while ${this.state}`));
    return new Promise<number>((resolve, reject) => {
      const spawned = new SpawnedSuccessor(this.options.command, this.readyTimeout, this.os);
      this.pendingUpgrade = { spawned, resolve, reject };
      spawned.once('failed', (err) => this.queue.run(() => this.failUpgrade(err)));
    });
  }

  /** failUpgrade ends the pending upgrade() with an error, once; this process serves on. */
  private failUpgrade(err: HandoverError): void {
    const pending = this.pendingUpgrade;
    if (!pending) return;
    this.pendingUpgrade = undefined;
    pending.spawned.kill();
    const link = this.successor;
    if (link && this.state === 'upgrading' && pending.spawned.owns(link.pid)) {
      this.successor = undefined;
      this.transition('successor-failed');
      link.refuse(err.code, err.message);
    }
    debug('upgrade failed: %s', err.message);
    this.emit('upgradeFailed', err);
    pending.reject(err);
  }

  /** transferConnection moves one live connection to the successor (while retiring); see docs/moving.md. */
  transferConnection(socket: net.Socket, options: TransferOptions = {}): Promise<void> {
    if (!this.retirement || this.state !== 'retiring') {
      return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `transferConnection() needs a ready successor (state is ${this.state})`));
    }
    return this.retirement.transfer(socket, options);
  }

  /**
   * waitConnectionsDone resolves once every tracked connection has closed or moved, or at
   * `timeout` ms with what remained. It counts; it never sleeps a fixed time.
   */
  waitConnectionsDone(timeout: number = this.gracefulTimeout): Promise<ConnectionsReport> {
    return this.tracker.waitDone(checkTimeout('timeout', timeout, timeout));
  }

  /**
   * stop ends this generation without a successor: it stops the control socket (removing
   * control.sock and pid only if they are still ours) and closes unclaimed inherited fds. Your
   * servers are yours to close, and keep serving until you do.
   */
  stop(): void {
    if (this.state === 'stopped') return;
    this.lifecycle.apply('stop');
    this.failUpgrade(new HandoverError('ERR_HANDOVER_STOPPED', 'the upgrader was stopped'));
    for (const link of this.links) link.close();
    this.links.clear();
    this.successor = undefined;
    this.retirement?.successorLeft();
    this.retirement = undefined;
    // A successor that stops its upgrader still serves: say so, so that the predecessor never rolls back.
    if (this.predecessor?.phase === 'ready') void this.predecessor.bye('the successor stopped its upgrader');
    else this.predecessor?.close();
    this.predecessor = undefined;
    closeFds([...this.inherited.values()].map((l) => l.fd));
    this.inherited.clear();
    this.servers.releaseKept();
    if (this.control) {
      releaseControlSocket(this.control);
      removePidFile(this.dir);
      this.control = undefined;
    }
    this.tracker.changed();
  }

  /** transition applies an internal event where the table allows it (a late event after stop() changes nothing). */
  private transition(event: LifecycleEvent): void {
    if (this.lifecycle.can(event)) this.lifecycle.apply(event);
    else debug('%s ignored while %s', event, this.state);
  }

  private warn(err: HandoverError): void {
    debug('warning: %s', err.message);
    this.emit('warning', err);
  }
}

/** createUpgrader creates the upgrader of this process and looks for a predecessor in `options.dir`. */
export function createUpgrader(options: UpgraderOptions): Upgrader {
  return new Upgrader(options);
}
