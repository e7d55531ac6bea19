// The upgrader: the state machine of one generation.
//   starting -> serving -> upgrading -> retiring -> retired      (and retiring -> serving on rollback)
// It composes the control directory, the session with the predecessor or successor, the listeners
// and (through adapters) the connections. It never makes a syscall itself.
import { EventEmitter } from 'node:events';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import createDebug from 'debug';
import { binding, isNativeError } from './native';
import { connectChannel, type FdChannel } from './channel';
import {
  CONTROL_SOCKET,
  prepareDir,
  releaseControlSocket,
  removePidFile,
  removeStaleSocket,
  takeOverControlSocket,
  writePidFile,
  type OwnedControlSocket,
} from './control-dir';
import { HandoverError, isHandoverError, type HandoverErrorCode } from './errors';
import {
  closeFds,
  describeFd,
  listenerKey,
  listenOnFd,
  listenWith,
  serverFd,
  stopAccepting,
  type InheritedListener,
  type ListenTarget,
} from './listeners';
import { PROTOCOL_VERSION, type ListenerKind, type Message } from './protocol';
import { ControlSession } from './session';
import { HttpAdapter } from './adapters/http';
import { ConnectionAdopter, ConnectionMover, readyCredit, type AdoptHandler, type TransferOptions } from './connections';
import * as https from 'node:https';

const debug = createDebug('handover:upgrader');

export type UpgraderState = 'starting' | 'serving' | 'upgrading' | 'retiring' | 'retired' | 'stopped';

/** What upgrade() starts. Defaults to this very process: execPath, execArgv, argv, cwd, env. */
export interface SuccessorCommand {
  file: string;
  args?: readonly string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** The successor's stdio. Default 'inherit': it writes where this process writes. */
  stdio?: 'inherit' | 'ignore';
}

export interface UpgraderOptions {
  /** The control directory shared by every generation (created 0700). Required. */
  dir: string;
  /** How long a successor may take from connecting (or being spawned) to READY. Default 10 000 ms. */
  readyTimeout?: number;
  /** How long a retiring process waits for its connections before it retires anyway. Default 30 000 ms. */
  gracefulTimeout?: number;
  /** What upgrade() starts. */
  command?: SuccessorCommand;
  /** uids allowed to take over. Default: this process's own uid. */
  allowedUids?: readonly number[];
}

/** Counts reported by waitConnectionsDone() and the 'retired' event. */
export interface ConnectionsReport {
  /** Connections that closed while waiting. */
  closed: number;
  /** Connections moved to the successor while waiting. */
  moved: number;
  /** Connections still open at the timeout (0 when everything finished). */
  remaining: number;
  /** True when the wait ended at the timeout. */
  timedOut: boolean;
}

export interface UpgraderEvents {
  /** This process serves (after ready()). */
  ready: [{ pid: number; predecessorPid: number | undefined }];
  /** A successor connected and asked for the listeners. */
  upgrading: [{ pid: number }];
  /** The successor is ready; this process stopped accepting and is retiring. */
  retiring: [{ successorPid: number }];
  /** An upgrade failed; this process serves on, unchanged. */
  upgradeFailed: [HandoverError];
  /** The successor died after READY: this process accepts again and owns the control socket. */
  rollback: [{ successorPid: number; reason: string }];
  /** The predecessor finished retiring (said BYE or exited). Upgrades are possible from now on. */
  predecessorRetired: [{ pid: number; clean: boolean }];
  /** Retiring is over: exit the process now. */
  retired: [ConnectionsReport];
  /** Something went wrong that did not stop this process from serving (garbage on the socket, a refused peer). */
  warning: [HandoverError];
}

interface ServerEntry {
  server: net.Server;
  key: string;
  kind: ListenerKind;
  /** A dup of the listening fd, kept while retiring so that a rollback can accept again. */
  keptFd?: number;
  backlog?: number;
  http?: HttpAdapter;
  adopt?: AdoptHandler;
}

/** Per-server options of listen(). */
export interface ListenOptions {
  /**
   * Receives the connections this server's predecessor moved here, paused, with the bytes the
   * predecessor had read but not processed. Without it, they are emitted as 'connection' with
   * those bytes unshifted (right for http.Server and for protocols that decode from 'data').
   */
  adopt?: AdoptHandler;
}

interface PendingUpgrade {
  child: ChildProcess | undefined;
  timer: NodeJS.Timeout;
  resolve: (pid: number) => void;
  reject: (err: HandoverError) => void;
}

interface SuccessorLink {
  session: ControlSession;
  pid: number;
  readyAcked: boolean;
  timer: NodeJS.Timeout | undefined;
}

const DEFAULT_READY_TIMEOUT = 10_000;
const DEFAULT_GRACEFUL_TIMEOUT = 30_000;

function checkTimeout(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.${name} must be a positive number of milliseconds, got ${String(value)}`);
  }
  return value;
}

const REFUSAL_CODES: ReadonlySet<string> = new Set<HandoverErrorCode>(['ERR_UPGRADE_IN_PROGRESS', 'ERR_UPGRADE_REFUSED', 'ERR_HANDOVER_VERSION', 'ERR_UPGRADE_READY_TIMEOUT']);

/**
 * Upgrader runs one generation of a server. Create it first thing, give it your servers with
 * listen(), call ready() when you serve; call upgrade() (on SIGHUP, say) to hand over to a new
 * process, and exit on 'retired'.
 */
export class Upgrader extends EventEmitter<UpgraderEvents> {
  readonly dir: string;
  readonly readyTimeout: number;
  readonly gracefulTimeout: number;
  private readonly allowedUids: ReadonlySet<number>;
  private readonly command: SuccessorCommand;
  private stateValue: UpgraderState = 'starting';
  private readonly started: Promise<void>;
  private readonly inherited = new Map<string, InheritedListener>();
  private readonly servers = new Map<string, ServerEntry>();
  private readonly connections = new Set<net.Socket>();
  private readonly socketKeys = new WeakMap<net.Socket, string>();
  private readonly movedSockets = new WeakSet<net.Socket>();
  private mover: ConnectionMover | undefined;
  private adopter: ConnectionAdopter | undefined;
  private readonly connectionWaiters = new Set<() => void>();
  private closedWhileWaiting = 0;
  private movedWhileWaiting = 0;
  private predecessor: { session: ControlSession; pid: number; peerPid: number } | undefined;
  private successor: SuccessorLink | undefined;
  private pendingUpgrade: PendingUpgrade | undefined;
  private control: OwnedControlSocket | undefined;
  private readyPromise: Promise<void> | undefined;

  constructor(options: UpgraderOptions) {
    super();
    if (typeof options !== 'object' || options === null) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'createUpgrader needs an options object with dir');
    }
    this.readyTimeout = checkTimeout('readyTimeout', options.readyTimeout, DEFAULT_READY_TIMEOUT);
    this.gracefulTimeout = checkTimeout('gracefulTimeout', options.gracefulTimeout, DEFAULT_GRACEFUL_TIMEOUT);
    const ownUid = process.getuid?.() ?? 0;
    if (options.allowedUids !== undefined && (!Array.isArray(options.allowedUids) || !options.allowedUids.every((uid) => Number.isInteger(uid) && uid >= 0))) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.allowedUids must be an array of uids');
    }
    this.allowedUids = new Set(options.allowedUids ?? [ownUid]);
    this.command = options.command ?? {
      file: process.execPath,
      args: [...process.execArgv, ...process.argv.slice(1)],
      cwd: process.cwd(),
      env: process.env,
    };
    if (typeof this.command.file !== 'string' || this.command.file.length === 0) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.command.file must be a non-empty string');
    }
    this.dir = prepareDir(options.dir);
    this.started = this.start();
    // Errors surface through listen()/ready()/inheritListeners(); never as an unhandled rejection.
    this.started.catch(() => undefined);
  }

  /** The current state of this generation. */
  get state(): UpgraderState {
    return this.stateValue;
  }

  /** Whether this process took over from a running predecessor. */
  get hasPredecessor(): boolean {
    return this.predecessor !== undefined;
  }

  /** Open connections of the servers given to listen() (tracked, not yet closed or moved). */
  get connectionCount(): number {
    return this.connections.size;
  }

  private setState(next: UpgraderState): void {
    debug('state %s -> %s', this.stateValue, next);
    this.stateValue = next;
  }

  private async start(): Promise<void> {
    const socketPath = path.join(this.dir, CONTROL_SOCKET);
    let channel: FdChannel;
    try {
      channel = connectChannel(socketPath);
    } catch (err) {
      if (isNativeError(err) && err.code === 'ENOENT') {
        debug('no predecessor in %s', this.dir);
        return;
      }
      if (isNativeError(err) && err.code === 'ECONNREFUSED') {
        debug('stale control socket in %s', this.dir);
        removeStaleSocket(this.dir);
        return;
      }
      throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot connect to the predecessor at ${socketPath}: ${(err as Error).message}`, { cause: err });
    }
    const session = new ControlSession(channel, 'successor');
    const peer = channel.peerCredentials();
    if (!this.allowedUids.has(peer.uid)) {
      session.close();
      throw new HandoverError('ERR_UPGRADE_REFUSED', `the process listening on ${socketPath} runs as uid ${peer.uid}, which is not allowed`);
    }
    await session.send({ type: 'HELLO', version: PROTOCOL_VERSION, pid: process.pid });
    let reply: Extract<Message, { type: 'LISTENERS' | 'REFUSED' }>;
    try {
      reply = await session.next(['LISTENERS', 'REFUSED'], this.readyTimeout, 'the listeners of the predecessor');
    } catch (err) {
      session.close();
      if (isHandoverError(err, 'ERR_HANDOVER_CHANNEL_CLOSED')) {
        // The predecessor went away between connect and reply (it crashed): start fresh.
        debug('predecessor closed before answering; starting fresh');
        return;
      }
      throw err;
    }
    if (reply.type === 'REFUSED') {
      session.close();
      const code = (REFUSAL_CODES.has(reply.code) ? reply.code : 'ERR_UPGRADE_REFUSED') as HandoverErrorCode;
      throw new HandoverError(code, `the predecessor (pid ${peer.pid}) refused the upgrade: ${reply.reason}`);
    }
    for (const [index, entry] of reply.listeners.entries()) {
      const fd = reply.fds[index]!;
      let info;
      try {
        info = describeFd(fd);
      } catch {
        info = undefined;
      }
      if (info === undefined || !info.listening) {
        closeFds([fd]);
        this.warn(new HandoverError('ERR_HANDOVER_PROTOCOL', `the predecessor sent ${entry.key} but its fd is not a listening socket; ignored`));
        continue;
      }
      this.inherited.set(entry.key, { key: entry.key, kind: entry.kind, fd, info });
    }
    // peerPid is the pid as this process's namespace sees it (0 when the predecessor runs in another one).
    this.predecessor = { session, pid: reply.pid, peerPid: peer.pid };
    session.on('close', (error) => this.onPredecessorClosed(error));
    debug('inherited %d listeners from pid %d', this.inherited.size, reply.pid);
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
    const { key, kind } = listenerKey(target);
    await this.started;
    if (this.stateValue !== 'starting' && this.stateValue !== 'serving') {
      throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `listen() is not possible while ${this.stateValue}`);
    }
    if (this.servers.has(key)) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `a server already listens on ${key}`);
    }
    const inherited = this.inherited.get(key) ?? this.inheritedByAddress(target);
    if (inherited) {
      this.inherited.delete(key);
      debug('listen %s on inherited fd %d', key, inherited.fd);
      try {
        await listenOnFd(server, inherited.fd, target.backlog);
      } catch (err) {
        closeFds([inherited.fd]);
        throw err;
      }
    } else if (kind === 'unix' && target.path !== undefined) {
      // Bound by us, not by libuv: libuv unlinks a path it bound when the server closes, which
      // would pull the path from under the successor that inherits the socket.
      const fd = bindUnixPath(target.path, target.backlog ?? 511);
      try {
        await listenOnFd(server, fd, target.backlog);
      } catch (err) {
        closeFds([fd]);
        throw err;
      }
    } else {
      debug('listen %s fresh', key);
      const options: net.ListenOptions = { port: target.port ?? 0 };
      if (target.host !== undefined && target.host !== '') options.host = target.host;
      if (target.backlog !== undefined) options.backlog = target.backlog;
      if (target.ipv6Only !== undefined) options.ipv6Only = target.ipv6Only;
      await listenWith(server, options);
    }
    const entry: ServerEntry = { server, key, kind };
    if (target.backlog !== undefined) entry.backlog = target.backlog;
    if (options.adopt !== undefined) {
      if (typeof options.adopt !== 'function') throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.adopt must be a function');
      entry.adopt = options.adopt;
    }
    const http2 = /^Http2(Secure)?Server$/.test(server.constructor.name);
    if (server instanceof http.Server || server instanceof https.Server || http2) {
      entry.http = new HttpAdapter(server as http.Server, { tls: server instanceof https.Server || server.constructor.name === 'Http2SecureServer', http2 });
    }
    this.servers.set(key, entry);
    server.on('connection', (socket: net.Socket) => this.track(socket, key));
  }

  /**
   * transferConnection moves one live connection to the successor (in the retiring process,
   * after the successor is ready). Reading stops at once; once the socket's writes are flushed its
   * fd travels with `pending` and `state`; the promise resolves when the successor acknowledged
   * it, and this process's copy is closed (a plain close). On refusal, or if the successor dies
   * first, it rejects and the connection stays here, untouched.
   */
  transferConnection(socket: net.Socket, options: TransferOptions = {}): Promise<void> {
    if (!this.mover || this.stateValue !== 'retiring') {
      return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `transferConnection() needs a ready successor (state is ${this.stateValue})`));
    }
    return this.mover.transfer(socket, options);
  }

  /**
   * inheritedByAddress finds an inherited TCP listener bound to exactly this host and port when
   * the keys differ (the predecessor asked for port 0, or spelled the host another way).
   */
  private inheritedByAddress(target: ListenTarget): InheritedListener | undefined {
    if (target.key !== undefined || target.path !== undefined || !target.port || !target.host) return undefined;
    for (const listener of this.inherited.values()) {
      const { family, address, port } = listener.info;
      if ((family !== 'inet' && family !== 'inet6') || port !== target.port || address === undefined) continue;
      if (listenerKey({ host: address, port }).key === listenerKey({ host: target.host, port }).key) {
        this.inherited.delete(listener.key);
        return listener;
      }
    }
    return undefined;
  }

  /** track counts a connection until it closes (a moved one counts as moved, not closed). */
  private track(socket: net.Socket, key: string): void {
    if (this.connections.has(socket)) return;
    this.connections.add(socket);
    this.socketKeys.set(socket, key);
    socket.once('close', () => {
      if (this.connections.delete(socket)) {
        if (!this.movedSockets.has(socket)) this.closedWhileWaiting++;
        this.notifyConnections();
      }
    });
  }

  private notifyConnections(): void {
    for (const waiter of [...this.connectionWaiters]) waiter();
  }

  /**
   * ready says this process serves. With a predecessor: it stops accepting (keeping its sockets
   * for a rollback) and starts retiring; this process takes over control.sock and pid, and the
   * inherited listeners nobody claimed are closed.
   */
  ready(): Promise<void> {
    this.readyPromise ??= this.becomeReady();
    return this.readyPromise;
  }

  private async becomeReady(): Promise<void> {
    await this.started;
    if (this.stateValue !== 'starting') {
      throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `ready() is not possible while ${this.stateValue}`);
    }
    const predecessor = this.predecessor;
    if (predecessor) {
      let reply;
      try {
        if (!predecessor.session.isClosed) await predecessor.session.send({ type: 'READY', pid: process.pid, ...readyCredit() });
        reply = await predecessor.session.next(['READY_ACK', 'REFUSED'], this.readyTimeout, 'the predecessor to stop accepting');
      } catch (err) {
        if (!isHandoverError(err, 'ERR_HANDOVER_CHANNEL_CLOSED')) {
          predecessor.session.close();
          throw err;
        }
        // The channel closed without an answer. Serving alone is right only if the predecessor
        // is really gone: a live one (that dropped us) still serves, and two generations must not.
        if (predecessor.peerPid <= 0 || processAlive(predecessor.peerPid)) {
          throw new HandoverError('ERR_UPGRADE_REFUSED', `the predecessor (pid ${predecessor.pid}) closed the control channel before acknowledging READY; it still serves`);
        }
        debug('predecessor gone before READY_ACK; serving alone');
        reply = undefined;
      }
      if (reply?.type === 'REFUSED') {
        predecessor.session.close();
        throw new HandoverError('ERR_UPGRADE_REFUSED', `the predecessor refused READY: ${reply.reason}`);
      }
    }
    this.control = takeOverControlSocket(this.dir);
    this.control.listener.on('channel', (channel) => this.onSuccessorChannel(channel));
    writePidFile(this.dir);
    const unclaimed = [...this.inherited.values()];
    this.inherited.clear();
    if (unclaimed.length > 0) debug('closing %d unclaimed listeners: %s', unclaimed.length, unclaimed.map((l) => l.key).join(', '));
    closeFds(unclaimed.map((l) => l.fd));
    this.setState('serving');
    if (predecessor && predecessor.session.isClosed) {
      this.predecessor = undefined;
    } else if (predecessor) {
      this.adopter = new ConnectionAdopter(predecessor.session, {
        serverFor: (key) => {
          const entry = this.servers.get(key);
          if (!entry) return undefined;
          const http = entry.http;
          return { server: entry.server, adopt: entry.adopt, ...(http ? { afterAdopt: (socket: net.Socket) => http.afterAdopt(socket) } : {}) };
        },
        track: (socket, key) => this.track(socket, key),
        failed: (err) => this.warn(err),
      });
      predecessor.session.onMessage((message) => this.onPredecessorMessage(message));
    }
    this.emit('ready', { pid: process.pid, predecessorPid: predecessor?.pid });
  }

  private onPredecessorMessage(message: Message): void {
    if (this.adopter?.onMessage(message)) return;
    switch (message.type) {
      case 'BYE': {
        const predecessor = this.predecessor;
        debug('predecessor said BYE: %s', message.reason);
        if (predecessor) {
          this.predecessor = undefined;
          predecessor.session.close();
          this.emit('predecessorRetired', { pid: predecessor.pid, clean: true });
        }
        return;
      }
      default:
        if ('fds' in message) closeFds(message.fds);
        this.predecessor?.session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `unexpected ${message.type} from the predecessor`));
    }
  }

  private onPredecessorClosed(error: Error | undefined): void {
    const predecessor = this.predecessor;
    if (!predecessor) return;
    // Still starting: ready() reads why the channel closed (a REFUSED, or a dead predecessor).
    if (this.stateValue === 'starting') return;
    this.predecessor = undefined;
    if (error) this.warn(error instanceof HandoverError ? error : new HandoverError('ERR_HANDOVER_PROTOCOL', error.message, { cause: error }));
    this.emit('predecessorRetired', { pid: predecessor.pid, clean: false });
  }

  /** upgrade starts a successor and resolves with its pid once it is ready (this process then retires). */
  upgrade(): Promise<number> {
    if (this.stateValue === 'upgrading' || this.stateValue === 'retiring' || this.pendingUpgrade || this.successor) {
      return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', 'an upgrade is already in progress'));
    }
    if (this.predecessor) {
      return Promise.reject(new HandoverError('ERR_UPGRADE_IN_PROGRESS', `the predecessor (pid ${this.predecessor.pid}) is still retiring`));
    }
    if (this.stateValue !== 'serving') {
      return Promise.reject(new HandoverError('ERR_HANDOVER_INVALID_STATE', `upgrade() is not possible while ${this.stateValue}`));
    }
    return new Promise<number>((resolve, reject) => {
      const pending: PendingUpgrade = {
        child: undefined,
        resolve,
        reject,
        timer: setTimeout(() => {
          const err = new HandoverError('ERR_UPGRADE_READY_TIMEOUT', `the successor was not ready within ${this.readyTimeout} ms`);
          this.failUpgrade(err);
        }, this.readyTimeout),
      };
      this.pendingUpgrade = pending;
      const { file, args = [], cwd, env, stdio = 'inherit' } = this.command;
      let child: ChildProcess;
      try {
        child = spawn(file, args, { cwd: cwd ?? process.cwd(), env: env ?? process.env, stdio, detached: true });
      } catch (err) {
        this.failUpgrade(new HandoverError('ERR_UPGRADE_SPAWN_FAILED', `cannot start the successor: ${(err as Error).message}`, { cause: err }));
        return;
      }
      pending.child = child;
      debug('spawned successor pid %d', child.pid);
      child.once('error', (err) => {
        this.failUpgrade(new HandoverError('ERR_UPGRADE_SPAWN_FAILED', `cannot start the successor: ${err.message}`, { cause: err }));
      });
      child.once('exit', (code, signal) => {
        if (this.pendingUpgrade === pending) {
          const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
          this.failUpgrade(new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${child.pid}) ${how} before it was ready`));
        }
      });
    });
  }

  /** failUpgrade ends the pending upgrade() with an error; this process serves on. */
  private failUpgrade(err: HandoverError): void {
    const pending = this.pendingUpgrade;
    if (!pending) return;
    this.pendingUpgrade = undefined;
    clearTimeout(pending.timer);
    const child = pending.child;
    const link = this.successor;
    const ours = link !== undefined && !link.readyAcked && (child === undefined || spawnedBy(child, link.pid));
    // A successor that missed its deadline must not wake up later and take over: kill its whole
    // process group (it was spawned detached, so a wrapper's children are in it too).
    if (child) killGroup(child);
    if (link && ours) {
      void link.session.send({ type: 'REFUSED', code: err.code, reason: err.message }).catch(() => undefined);
      link.session.close();
    }
    debug('upgrade failed: %s', err.message);
    this.emit('upgradeFailed', err);
    pending.reject(err);
  }

  private onSuccessorChannel(channel: FdChannel): void {
    const session = new ControlSession(channel, 'predecessor');
    let uid: number;
    let pid: number;
    try {
      ({ uid, pid } = channel.peerCredentials());
    } catch (err) {
      session.close();
      this.warn(new HandoverError('ERR_UPGRADE_REFUSED', `cannot read the credentials of a connecting successor: ${(err as Error).message}`));
      return;
    }
    const refuse = (code: HandoverErrorCode, reason: string): void => {
      debug('refusing pid %d: %s', pid, reason);
      session
        .send({ type: 'REFUSED', code, reason })
        .catch(() => undefined)
        .finally(() => session.close());
      this.warn(new HandoverError(code, `refused a successor (pid ${pid}, uid ${uid}): ${reason}`));
    };
    if (!this.allowedUids.has(uid)) {
      refuse('ERR_UPGRADE_REFUSED', `uid ${uid} is not allowed to take over`);
      return;
    }
    if (this.stateValue !== 'serving' || this.successor) {
      refuse('ERR_UPGRADE_IN_PROGRESS', this.stateValue === 'retiring' ? 'this process is retiring' : 'an upgrade is in progress');
      return;
    }
    if (this.predecessor) {
      refuse('ERR_UPGRADE_IN_PROGRESS', `this process's own predecessor (pid ${this.predecessor.pid}) is still retiring`);
      return;
    }
    const link: SuccessorLink = { session, pid, readyAcked: false, timer: undefined };
    this.successor = link;
    this.setState('upgrading');
    // A successor that connects but never says READY must not block upgrades forever.
    link.timer = setTimeout(() => {
      if (this.successor === link && !link.readyAcked) {
        const err = new HandoverError('ERR_UPGRADE_READY_TIMEOUT', `the successor (pid ${pid}) was not ready within ${this.readyTimeout} ms`);
        void session.send({ type: 'REFUSED', code: err.code, reason: err.message }).catch(() => undefined);
        session.close();
        this.failUpgrade(err);
      }
    }, this.readyTimeout);
    session.on('close', (error) => this.onSuccessorClosed(link, error));
    session.onMessage((message) => this.onSuccessorMessage(link, message));
    this.emit('upgrading', { pid });
  }

  private onSuccessorMessage(link: SuccessorLink, message: Message): void {
    const { session } = link;
    switch (message.type) {
      case 'HELLO': {
        if (message.version !== PROTOCOL_VERSION) {
          void session.send({ type: 'REFUSED', code: 'ERR_HANDOVER_VERSION', reason: `protocol version ${message.version} is not ${PROTOCOL_VERSION}` }).catch(() => undefined);
          session.close();
          return;
        }
        // Dups travel; the servers' own fds stay untouched whatever happens to the message. A
        // server the application closed since is not offered.
        const native = binding();
        const listeners: { key: string; kind: ListenerKind }[] = [];
        const fds: number[] = [];
        try {
          for (const entry of this.servers.values()) {
            if (!entry.server.listening) continue;
            fds.push(native.dup(serverFd(entry.server)));
            listeners.push({ key: entry.key, kind: entry.kind });
          }
        } catch (err) {
          closeFds(fds);
          const reason = `cannot duplicate a listening socket: ${(err as Error).message}`;
          void session.send({ type: 'REFUSED', code: 'ERR_UPGRADE_REFUSED', reason }).catch(() => undefined);
          session.close();
          this.warn(new HandoverError('ERR_UPGRADE_REFUSED', `refused a successor (pid ${link.pid}): ${reason}`, { cause: err }));
          return;
        }
        session.send({ type: 'LISTENERS', pid: process.pid, listeners, fds }, { closeFdsAfterSend: true }).catch((err: Error) => {
          debug('sending listeners failed: %s', err.message);
        });
        return;
      }
      case 'READY': {
        if (link.readyAcked) {
          session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', 'READY sent twice'));
          return;
        }
        this.onSuccessorReady(link, message.credit);
        return;
      }
      default:
        if (link.readyAcked && this.mover?.onMessage(message)) return;
        if ('fds' in message) closeFds(message.fds);
        session.fail(new HandoverError('ERR_HANDOVER_PROTOCOL', `unexpected ${message.type} from the successor`));
    }
  }

  private onSuccessorReady(link: SuccessorLink, credit: number | undefined): void {
    clearTimeout(link.timer);
    const native = binding();
    // Stop accepting, keeping a dup of every listening socket: the accept queue stays alive and a
    // rollback can accept on it again.
    for (const entry of this.servers.values()) {
      if (entry.keptFd !== undefined) continue;
      try {
        entry.keptFd = native.dup(serverFd(entry.server));
        stopAccepting(entry.server);
      } catch (err) {
        debug('stop accepting %s: %s', entry.key, (err as Error).message);
      }
    }
    link.readyAcked = true;
    void link.session.send({ type: 'READY_ACK' }).catch(() => undefined);
    this.mover = new ConnectionMover(link.session, {
      keyOf: (socket) => this.socketKeys.get(socket),
      moved: (socket) => {
        this.movedSockets.add(socket);
        this.movedWhileWaiting++;
        this.notifyConnections();
      },
    }, { credit });
    this.setState('retiring');
    const pending = this.pendingUpgrade;
    if (pending) {
      this.pendingUpgrade = undefined;
      clearTimeout(pending.timer);
      if (pending.child && !spawnedBy(pending.child, link.pid)) {
        // Another successor (started by hand) was ready first. Ours would later take over from
        // that one, unasked: stop it.
        debug('successor pid %d is not the one upgrade() spawned (%d); killing ours', link.pid, pending.child.pid);
        killGroup(pending.child);
      }
      pending.child?.unref();
      pending.resolve(link.pid);
    }
    debug('successor pid %d is ready; retiring', link.pid);
    this.emit('retiring', { successorPid: link.pid });
    this.retire(link).catch((err: Error) => {
      this.warn(new HandoverError('ERR_HANDOVER_INVALID_STATE', `retiring failed: ${err.message}`, { cause: err }));
    });
  }

  private onSuccessorClosed(link: SuccessorLink, error: Error | undefined): void {
    if (this.successor !== link) return;
    clearTimeout(link.timer);
    // Every connection the successor did not acknowledge stays here, untouched.
    this.mover?.close();
    this.mover = undefined;
    if (!link.readyAcked) {
      this.successor = undefined;
      this.setState('serving');
      const err =
        error instanceof HandoverError
          ? error
          : new HandoverError('ERR_UPGRADE_SUCCESSOR_EXITED', `the successor (pid ${link.pid}) went away before it was ready${error ? `: ${error.message}` : ''}`);
      if (error) this.warn(err);
      // A spawned successor settles upgrade() through its exit; an external one ends here.
      if (!this.pendingUpgrade?.child || this.pendingUpgrade.child.pid !== link.pid) {
        this.emit('upgradeFailed', err);
      }
      return;
    }
    if (this.stateValue === 'retiring') {
      this.rollback(link, error ? error.message : 'the successor closed the control channel');
    }
  }

  /** rollback: the successor died after READY; accept again on the kept sockets and own the directory again. */
  private rollback(link: SuccessorLink, reason: string): void {
    debug('rollback: successor pid %d lost (%s)', link.pid, reason);
    this.successor = undefined;
    for (const entry of this.servers.values()) {
      const fd = entry.keptFd;
      if (fd === undefined) continue;
      delete entry.keptFd;
      listenOnFd(entry.server, fd, entry.backlog).catch((err: Error) => {
        closeFds([fd]);
        this.warn(new HandoverError('ERR_HANDOVER_INVALID_STATE', `rollback: cannot accept again on ${entry.key}: ${err.message}`, { cause: err }));
      });
    }
    for (const entry of this.servers.values()) entry.http?.resume();
    const previous = this.control;
    try {
      this.control = takeOverControlSocket(this.dir);
      this.control.listener.on('channel', (channel) => this.onSuccessorChannel(channel));
      previous?.listener.close();
      writePidFile(this.dir);
    } catch (err) {
      // Serving again matters more than being reachable for the next upgrade.
      this.warn(new HandoverError('ERR_HANDOVER_DIR_UNSAFE', `rollback: cannot take back ${this.dir}: ${(err as Error).message}`, { cause: err }));
    }
    this.setState('serving');
    this.notifyConnections();
    this.emit('rollback', { successorPid: link.pid, reason });
  }

  private async retire(link: SuccessorLink): Promise<void> {
    const mover = this.mover;
    const move = mover ? (socket: net.Socket) => mover.transfer(socket) : undefined;
    for (const entry of this.servers.values()) entry.http?.retire(move);
    const report = await this.waitConnectionsDone(this.gracefulTimeout, () => this.successor !== link);
    if (this.successor !== link || this.stateValue !== 'retiring') return; // rolled back meanwhile
    // Connections already sent get their answer before anything is handed back.
    await this.mover?.settle(this.readyTimeout);
    if (this.successor !== link || this.stateValue !== 'retiring') return;
    this.mover?.close();
    this.mover = undefined;
    await link.session.send({ type: 'BYE', reason: report.timedOut ? `graceful timeout with ${report.remaining} connections left` : 'all connections done' }).catch(() => undefined);
    this.successor = undefined;
    link.session.close();
    for (const entry of this.servers.values()) {
      if (entry.keptFd !== undefined) closeFds([entry.keptFd]);
      delete entry.keptFd;
    }
    // control.sock belongs to the successor now; only our listening fd goes.
    this.control?.listener.close();
    this.control = undefined;
    this.setState('retired');
    debug('retired: %o', report);
    this.emit('retired', report);
  }

  /**
   * waitConnectionsDone resolves once every tracked connection has closed or moved, or at
   * `timeout` ms with what remained. It counts; it never sleeps a fixed time.
   */
  waitConnectionsDone(timeout: number = this.gracefulTimeout, abandon?: () => boolean): Promise<ConnectionsReport> {
    checkTimeout('timeout', timeout, timeout);
    this.closedWhileWaiting = 0;
    this.movedWhileWaiting = 0;
    return new Promise((resolve) => {
      const finish = (timedOut: boolean): void => {
        clearTimeout(timer);
        this.connectionWaiters.delete(check);
        resolve({ closed: this.closedWhileWaiting, moved: this.movedWhileWaiting, remaining: this.connections.size, timedOut });
      };
      const check = (): void => {
        if (this.connections.size === 0 || abandon?.() === true) finish(false);
      };
      const timer = setTimeout(() => finish(true), timeout);
      this.connectionWaiters.add(check);
      check();
    });
  }

  /**
   * stop ends this generation without a successor: it stops the control socket (removing
   * control.sock and pid only if they are still ours) and closes unclaimed inherited fds. Your
   * servers are yours to close.
   */
  stop(): void {
    if (this.stateValue === 'stopped') return;
    this.setState('stopped');
    if (this.pendingUpgrade) this.failUpgrade(new HandoverError('ERR_HANDOVER_STOPPED', 'the upgrader was stopped'));
    this.successor?.session.close();
    this.successor = undefined;
    this.predecessor?.session.close();
    this.predecessor = undefined;
    closeFds([...this.inherited.values()].map((l) => l.fd));
    this.inherited.clear();
    for (const entry of this.servers.values()) {
      if (entry.keptFd !== undefined) closeFds([entry.keptFd]);
      delete entry.keptFd;
    }
    if (this.control) {
      releaseControlSocket(this.control);
      removePidFile(this.dir);
      this.control = undefined;
    }
    this.notifyConnections();
  }

  private warn(err: HandoverError): void {
    debug('warning: %s', err.message);
    this.emit('warning', err);
  }
}

/** processGroup reads a process's group id from /proc (Linux); undefined where unknown. */
function processGroup(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const pgrp = Number(fields[2]);
    return Number.isSafeInteger(pgrp) ? pgrp : undefined;
  } catch {
    return undefined;
  }
}

/** spawnedBy: whether pid is the spawned child or runs in its process group (a wrapper's child). */
function spawnedBy(child: ChildProcess, pid: number): boolean {
  return child.pid === pid || (child.pid !== undefined && processGroup(pid) === child.pid);
}

/** killGroup kills a detached child and everything in its process group. */
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

/** processAlive tells whether a pid still names a live process (ESRCH: gone; EPERM: alive, not ours). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** bindUnixPath binds a unix stream socket at `path`, replacing a stale socket file nobody listens on. */
function bindUnixPath(socketPath: string, backlog: number): number {
  const native = binding();
  try {
    return native.unixStreamListen(socketPath, backlog);
  } catch (err) {
    if (!isNativeError(err) || err.code !== 'EADDRINUSE') throw err;
    let stale = false;
    try {
      native.close(native.unixStreamConnect(socketPath));
    } catch (connectErr) {
      stale = isNativeError(connectErr) && connectErr.code === 'ECONNREFUSED';
    }
    if (!stale || !fs.lstatSync(socketPath).isSocket()) throw err;
    fs.rmSync(socketPath, { force: true });
    return native.unixStreamListen(socketPath, backlog);
  }
}

/** createUpgrader creates the upgrader of this process and looks for a predecessor in `options.dir`. */
export function createUpgrader(options: UpgraderOptions): Upgrader {
  return new Upgrader(options);
}
