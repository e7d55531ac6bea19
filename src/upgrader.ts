// The upgrader: the public front of one generation. It validates options, owns the one state
// value (src/lifecycle.ts) and wires the parts: the predecessor link (this process as successor),
// successor links and the spawner (as predecessor), retirement, servers and connection counting.
import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { createDebug } from './log';
import { abandonControl, commitControl, prepareControl, prepareDir, releaseControlSocket, removePidFile } from './control-dir';
import { HandoverError } from './errors';
import { ChangeQueue, Lifecycle, type LifecycleEvent, type UpgraderState } from './lifecycle';
import { checkReusePort, closeFds, listenerKey, mismatch, type InheritedListener, type ListenTarget } from './listeners';
import type { TransferOptions } from './connections';
import { ConnectionTracker, type ConnectionsReport } from './connection-tracker';
import { PredecessorLink } from './predecessor-link';
import { systemProcesses, EXIT_GRACE_MS, waitGone, type ProcessLayer } from './spawner';
import { Successors, type Generation } from './successors';
import { ControlRequests } from './control-requests';
import { ServerSet } from './servers';
import { adapterFor, setControlService } from './adapters/adapter';
import { checkTimeout, resolveOptions, type ListenOptions, type ResolvedOptions, type UpgraderEvents, type UpgraderOptions } from './options';
import { serviceControlSockets } from './control-service';
import { fault } from './faults';
import { runtimeCapabilities } from './runtime';
import { Systemd } from './systemd';

// Protocol adapters load with the first listen() that names one (import-time cost only).
const protocolAdapters = (): typeof import('./adapters/net') => require('./adapters/net') as typeof import('./adapters/net');

const debug = createDebug('handover:upgrader');

// Adapters service the control sockets between units of request work (a saturated server stays upgradable).
setControlService(serviceControlSockets);


/**
 * Upgrader runs one generation of a server. Create it first thing, give it your servers with
 * listen(), call ready() when you serve; call upgrade() (on SIGHUP, say) to hand over to a new
 * process, and exit on 'retired'.
 */
export class Upgrader extends EventEmitter<UpgraderEvents> {
  readonly dir: string;
  readonly readyTimeout: number;
  readonly gracefulTimeout: number;
  private readonly generation: Generation;
  private readonly lifecycle = new Lifecycle((from, to, event) => debug('state %s -> %s (%s)', from, to, event));
  private readonly servers = new ServerSet();
  private readonly tracker = new ConnectionTracker();
  private readonly inherited = new Map<string, InheritedListener>();
  private readonly started: Promise<void>;
  private readyPromise: Promise<void> | undefined;
  private predecessor: PredecessorLink | undefined;
  private readonly successors: Successors;
  private readonly systemd: Systemd | undefined;
  private readonly requests: ControlRequests;

  constructor(options: UpgraderOptions, private readonly os: ProcessLayer = systemProcesses) {
    super();
    const resolved = resolveOptions(options);
    const settings: ResolvedOptions = { ...resolved, dir: prepareDir(resolved.dir) };
    this.dir = settings.dir;
    this.readyTimeout = settings.readyTimeout;
    this.gracefulTimeout = settings.gracefulTimeout;
    const upgrader = this;
    this.generation = {
      dir: settings.dir,
      number: 1,
      options: settings,
      os,
      lifecycle: this.lifecycle,
      queue: new ChangeQueue(),
      servers: this.servers,
      tracker: this.tracker,
      control: undefined,
      get predecessor() {
        return upgrader.predecessor;
      },
      emit: (event, ...args) => (this.emit as (name: string, ...values: unknown[]) => boolean)(event, ...args),
      warn: (err) => this.warn(err),
      transition: (event) => this.transition(event),
    };
    this.successors = new Successors(this.generation, (link, request) => this.requests.serve(link, request));
    this.requests = new ControlRequests(this.generation, { events: this, upgrade: () => this.upgrade(), spawnedPid: () => this.successors.spawnedPid });
    if (settings.systemd) {
      // The fd store keeps the stream listeners (UDP sockets are not stored yet).
      const streamServers = () => [...this.servers.values()].flatMap((entry) => (entry.server instanceof net.Server ? [{ key: entry.key, server: entry.server }] : []));
      this.systemd = new Systemd(process.env, { servers: streamServers, upgradePending: () => this.successors.upgradePending, warn: (err) => this.warn(err) });
      this.systemd.follow(this);
    }
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
    // Checked once, at start-up while fds are free: a runtime that changed an internal the moves
    // read drains instead of moving, and says so.
    const capabilities = runtimeCapabilities();
    for (const problem of capabilities.problems) this.warn(new HandoverError('ERR_HANDOVER_UNSUPPORTED_RUNTIME', `${problem}; connections will be drained, not moved`));
    const found = await PredecessorLink.connect(this.dir, { ...this.generation.options, os: this.os });
    if (!found) return;
    if (this.state === 'stopped') {
      found.link.close();
      closeFds(found.listeners.map((l) => l.fd));
      return;
    }
    this.predecessor = found.link;
    this.generation.number = (found.generation ?? 0) + 1;
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
  async listen(server: net.Server | dgram.Socket, target: ListenTarget, options: ListenOptions = {}): Promise<void> {
    const datagram = server instanceof dgram.Socket;
    if (!(server instanceof net.Server) && !datagram) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'listen() needs a net.Server (http, https and http2 servers are net.Servers) or a dgram.Socket');
    }
    if (datagram && options.adopt !== undefined) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.adopt: a UDP socket has no connections to adopt');
    if (typeof target !== 'object' || target === null) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'listen() needs a target: { port, host } or { path }');
    }
    if (options.adopt !== undefined && typeof options.adopt !== 'function') throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.adopt must be a function');
    if (options.protocol !== undefined) {
      if (datagram) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.protocol: a UDP socket has no connections to move');
      const adapters: typeof import('./adapters/net') = protocolAdapters();
      adapters.checkProtocol(options.protocol);
      if (options.adopt !== undefined) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.adopt and options.protocol cannot be used together (give protocol an adopt())');
    }
    if (datagram && target.reusePort !== undefined) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.reusePort is for TCP ports (a UDP socket takes reusePort in dgram.createSocket())');
    const transport = datagram ? 'dgram' : 'stream';
    const { key, kind } = listenerKey(target, transport);
    checkReusePort(target);
    await this.started;
    if (this.state !== 'starting' && this.state !== 'serving') {
      throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `listen() is not possible while ${this.state}`);
    }
    if (this.servers.has(key)) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `a server already listens on ${key}`);
    let inherited = this.inherited.get(key) ?? this.inheritedByAddress(target, transport);
    if (inherited) this.inherited.delete(inherited.key);
    else if (!datagram) inherited = this.systemd?.take(key, target); // socket activation hands over listening stream sockets only
    const wrong = inherited && (mismatch(inherited, target, transport) ?? (datagram && wrongFamily(server, inherited)));
    if (inherited && wrong) {
      closeFds([inherited.fd]);
      this.warn(new HandoverError('ERR_HANDOVER_PROTOCOL', `the predecessor sent ${wrong}; binding afresh`));
      inherited = undefined;
    }
    await this.servers.bind(server, target, inherited);
    this.systemd?.claimed(key, inherited?.key);
    if (server instanceof dgram.Socket) {
      this.servers.add({ server, key, kind, backlog: undefined, adapter: undefined, adopt: undefined });
      return;
    }
    // A protocol adapter is one more ServerAdapter, run beside the built-in one of the server (if any).
    const builtIn = adapterFor(server);
    const protocol = options.protocol && new (protocolAdapters().ProtocolServerAdapter)(server, options.protocol, builtIn, { warn: (err) => this.warn(err) });
    this.servers.add({ server, key, kind, backlog: target.backlog, adapter: protocol ?? builtIn, adopt: protocol?.adopt ?? options.adopt });
    server.on('connection', (socket: net.Socket) => this.tracker.track(socket, key));
  }

  /**
   * inheritedByAddress finds an inherited TCP listener bound to exactly this host and port when
   * the keys differ (the predecessor asked for port 0, or spelled the host another way).
   */
  private inheritedByAddress(target: ListenTarget, transport: 'stream' | 'dgram'): InheritedListener | undefined {
    if (target.key !== undefined || target.path !== undefined || !target.port || !target.host) return undefined;
    const wanted = listenerKey({ host: target.host, port: target.port }, transport).key;
    for (const listener of this.inherited.values()) {
      const { family, address, port } = listener.info;
      if ((family === 'inet' || family === 'inet6') && address !== undefined && port === target.port && listenerKey({ host: address, port }, listener.info.type === 'dgram' ? 'dgram' : 'stream').key === wanted) return listener;
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
    if (predecessor) fault('servers-built', 'successor', predecessor.peerPid);
    // Everything that can fail is done before READY, while the predecessor still serves unchanged.
    let prepared;
    try {
      prepared = prepareControl(this.dir);
    } catch (err) {
      await predecessor?.abort(`cannot prepare the control socket: ${(err as Error).message}`);
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `cannot prepare the control socket in ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await predecessor?.ready(this.readyTimeout, () => waitGone(this.os, predecessor.peerPid, EXIT_GRACE_MS));
      if ((this.state as UpgraderState) !== 'starting') throw new HandoverError('ERR_HANDOVER_STOPPED', 'the upgrader was stopped before it was ready');
    } catch (err) {
      abandonControl(prepared);
      // The predecessor may have stopped accepting on READY: never leave it retiring towards a
      // successor that will not serve. Close the listeners, then say so (ABORT: it rolls back).
      this.servers.closeListeners();
      await predecessor?.abort(`the successor failed before it was ready: ${(err as Error).message}`);
      throw err;
    }
    try {
      this.generation.control = commitControl(prepared);
    } catch (err) {
      // Past READY the predecessor stopped accepting: give up cleanly so that it rolls back.
      this.servers.closeListeners();
      await predecessor?.abort(`cannot take over the control directory: ${(err as Error).message}`);
      throw new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `cannot take over ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    // MAINPID and READY reach systemd before COMMIT lets the predecessor finish and exit.
    this.systemd?.ready([...this.inherited.keys()]);
    if (predecessor) {
      fault('control-taken', 'successor', predecessor.peerPid);
      predecessor.commit();
    }
    this.successors.listen(this.generation.control);
    const unclaimed = [...this.inherited.values()];
    this.inherited.clear();
    if (unclaimed.length > 0) debug('closing %d unclaimed listeners: %s', unclaimed.length, unclaimed.map((l) => l.key).join(', '));
    closeFds(unclaimed.map((l) => l.fd));
    this.lifecycle.apply('ready');
    if (predecessor?.phase === 'ready') this.adoptFrom(predecessor);
    else this.predecessor = undefined;
    this.emit('ready', { pid: process.pid, predecessorPid: predecessor?.pid });
    if (predecessor && predecessor.phase !== 'ready') this.emit('predecessorRetired', { pid: predecessor.pid, clean: false });
  }

  /** adoptFrom takes the connections the predecessor moves here, until it says BYE or goes away. */
  private adoptFrom(predecessor: PredecessorLink): void {
    // Loaded here, not at import: a first generation never loads the connection adopter (start-up cost).
    const { ConnectionAdopter } = require('./connections') as typeof import('./connections');
    const adopter = new ConnectionAdopter(predecessor.session, {
      serverFor: (key) => {
        const entry = this.servers.get(key);
        if (!entry || entry.server instanceof dgram.Socket) return undefined;
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
        // Every connection moved here reaches its server before the application hears that the
        // move is over (idle ones may still be parked: see ConnectionAdopter).
        adopter.startAll();
        this.emit('predecessorRetired', { pid: predecessor.pid, clean });
      },
    );
  }

  /** upgrade starts a successor and resolves with its pid once it is ready (this process then retires). */
  upgrade(): Promise<number> {
    const upgrading = this.successors.upgrade();
    if (this.successors.upgradePending) this.systemd?.upgradeStarted();
    return upgrading;
  }

  /** transferConnection moves one live connection to the successor (while retiring); see docs/moving.md. */
  transferConnection(socket: net.Socket, options: TransferOptions = {}): Promise<void> {
    return this.successors.transfer(socket, options);
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
    this.systemd?.stopping();
    this.lifecycle.apply('stop');
    this.successors.stop();
    // A successor that stops its upgrader still serves: say so, so that the predecessor never rolls back.
    if (this.predecessor?.phase === 'ready') void this.predecessor.bye('the successor stopped its upgrader');
    else if (this.predecessor?.phase === 'offered' && this.readyPromise) {
      // Stopped while ready() waits for READY_ACK: give up the way a failed successor does.
      this.servers.closeListeners();
      void this.predecessor.abort('the successor was stopped before it was ready');
    } else this.predecessor?.close();
    this.predecessor = undefined;
    closeFds([...this.inherited.values()].map((l) => l.fd));
    this.inherited.clear();
    this.servers.releaseKept();
    if (this.generation.control) {
      releaseControlSocket(this.generation.control);
      removePidFile(this.dir);
      this.generation.control = undefined;
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

/** wrongFamily: an inherited UDP socket of the other IP family than the dgram.Socket (udp4 / udp6) given to listen(). */
function wrongFamily(socket: dgram.Socket, inherited: InheritedListener): string | undefined {
  const family = (socket as unknown as { type?: string }).type === 'udp6' ? 'inet6' : 'inet';
  return inherited.info.family === family ? undefined : `${inherited.key} is an ${inherited.info.family} socket, not ${family}`;
}

/** createUpgrader creates the upgrader of this process and looks for a predecessor in `options.dir`. */
export function createUpgrader(options: UpgraderOptions): Upgrader {
  return new Upgrader(options);
}
