// systemd without libsystemd: readiness and the main pid over $NOTIFY_SOCKET (sd_notify), the
// listeners of socket activation ($LISTEN_FDS), and the fd store ($FDSTORE) that keeps the
// listening sockets alive across a crash. The datagram is one syscall in the addon
// (native/notify.cc); what is sent, and when, is decided here. See docs/systemd.md.
import type * as net from 'node:net';
import { createDebug } from './log';
import { binding } from './native';
import { HandoverError } from './errors';
import { closeFds, describeFd, listenerKey, serverFd, type InheritedListener, type ListenTarget } from './listeners';

const debug = createDebug('handover:systemd');

/** sd_listen_fds(3): the first fd passed by the service manager. */
const LISTEN_FDS_START = 3;
/** How long one notification may wait for room in systemd's queue (libsystemd blocks too). */
const NOTIFY_TIMEOUT_MS = 1000;
/** systemd's FDNAME_MAX. */
const FDNAME_MAX = 255;

/**
 * notifyAddress turns $NOTIFY_SOCKET into a socket address: an absolute path, or `@name` (an
 * abstract socket, '\0name' on the wire). Anything else (vsock:, relative paths) is not for us.
 */
export function notifyAddress(value: string | undefined): string | undefined {
  if (value === undefined || value.length < 2) return undefined;
  if (value.startsWith('/')) return value;
  if (value.startsWith('@')) return `\0${value.slice(1)}`;
  return undefined;
}

/**
 * fdName turns a listener key into a valid FDNAME= (printable ASCII without ':', at most 255
 * characters): '%', ':' and every other character outside printable ASCII are percent-encoded,
 * so `tcp:127.0.0.1:8080` is stored as `tcp%3A127.0.0.1%3A8080`. Undefined when too long.
 */
export function fdName(key: string): string | undefined {
  let name = '';
  for (const character of key) {
    const code = character.codePointAt(0)!;
    if (character === '%' || character === ':' || code < 0x20 || code > 0x7e) {
      for (const byte of Buffer.from(character, 'utf8')) name += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    } else name += character;
  }
  return name.length <= FDNAME_MAX ? name : undefined;
}

/** keyOfFdName reverses fdName; a name it did not make (a socket unit's `web`) is its own key. */
export function keyOfFdName(name: string): string {
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

/** A listening socket received from systemd (socket activation or the fd store), with its FDNAME. */
export interface ActivatedListener extends InheritedListener {
  /** Its name in $LISTEN_FDNAMES ('unknown' when systemd gave none). */
  name: string;
}

/**
 * LISTEN_PARENT_PID: set by `handover run` instead of LISTEN_PID when it passes the fds systemd
 * gave it on to its first generation (Node's spawn() cannot set the child's own pid between fork
 * and exec). `HANDOVER_LISTEN_PARENT_PID=P` with no LISTEN_PID says "for the direct child of P":
 * a process whose parent is P takes them; a grandchild (a wrapper that forks, `npm start`) does
 * not, exactly as LISTEN_PID would have excluded it.
 */
export const LISTEN_PARENT_PID = 'HANDOVER_LISTEN_PARENT_PID';

/** isPid: a decimal pid string equal to `pid`. */
function isPid(value: string | undefined, pid: number): boolean {
  return value !== undefined && /^\d+$/.test(value) && Number(value) === pid;
}

/**
 * takeListenFds does sd_listen_fds(3) with unset_environment: the fds of $LISTEN_FDS when
 * $LISTEN_PID is this process (or, with no LISTEN_PID, when $HANDOVER_LISTEN_PARENT_PID is its
 * parent: `handover run` passing them on), moved to close-on-exec copies (a spawned successor must
 * not inherit them by accident) and described. LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES and
 * HANDOVER_LISTEN_PARENT_PID are removed from `env` in every case, so children never take fds
 * meant for this process.
 */
export function takeListenFds(env: NodeJS.ProcessEnv, pid: number, parentPid: number = process.ppid): { listeners: ActivatedListener[]; problems: string[] } {
  const { LISTEN_PID: listenPid, LISTEN_FDS: listenFds, LISTEN_FDNAMES: listenFdNames } = env;
  const listenParentPid = env[LISTEN_PARENT_PID];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  delete env[LISTEN_PARENT_PID];
  const listeners: ActivatedListener[] = [];
  const problems: string[] = [];
  if (listenFds === undefined) return { listeners, problems };
  if (listenPid === undefined && listenParentPid !== undefined) {
    if (!isPid(listenParentPid, parentPid)) {
      problems.push(`LISTEN_FDS=${listenFds} is for a child of pid ${listenParentPid}, not this process (its parent is ${parentPid}); ignored`);
      return { listeners, problems };
    }
  } else if (!isPid(listenPid, pid)) {
    problems.push(`LISTEN_FDS=${listenFds} is for pid ${listenPid ?? '(no LISTEN_PID)'}, not this process (${pid}); ignored`);
    return { listeners, problems };
  }
  const count = /^\d+$/.test(listenFds) ? Number(listenFds) : NaN;
  if (!Number.isSafeInteger(count) || count > 65536) {
    problems.push(`LISTEN_FDS=${listenFds} is not a count of fds; ignored`);
    return { listeners, problems };
  }
  let names = listenFdNames === undefined ? undefined : listenFdNames.split(':');
  if (names !== undefined && names.length !== count) {
    problems.push(`LISTEN_FDNAMES has ${names.length} names for ${count} fds; matching by address only`);
    names = undefined;
  }
  const native = binding();
  for (let index = 0; index < count; index++) {
    const fd = LISTEN_FDS_START + index;
    const name = names?.[index] ?? 'unknown';
    let copy: number;
    try {
      copy = native.dup(fd);
    } catch (err) {
      problems.push(`fd ${fd} (${name}) of LISTEN_FDS: ${(err as Error).message}`);
      continue;
    }
    closeFds([fd]);
    try {
      const info = describeFd(copy);
      listeners.push({ key: keyOfFdName(name), name, kind: info.family === 'unix' ? 'unix' : 'tcp', fd: copy, info });
    } catch (err) {
      // Not a socket: it cannot serve a listen() target, and nobody else will find it (LISTEN_FDS is gone).
      problems.push(`fd ${fd} (${name}) of LISTEN_FDS is not a socket (${(err as Error).message}); closed`);
      closeFds([copy]);
    }
  }
  return { listeners, problems };
}

/** isListening: a listening stream socket (a datagram socket or a connection cannot serve listen()). */
function isListening(listener: ActivatedListener): boolean {
  return listener.info.type === 'stream' && listener.info.listening;
}

/** serves tells whether an activated listener is bound where `target` asks to listen. */
function serves(listener: ActivatedListener, target: ListenTarget): boolean {
  const { info } = listener;
  if (!isListening(listener)) return false;
  if (target.path !== undefined) return info.family === 'unix' && info.path === target.path;
  if (!target.port || (info.family !== 'inet' && info.family !== 'inet6') || info.port !== target.port || info.address === undefined) return false;
  if (target.host === undefined || target.host === '') return info.address === '0.0.0.0' || info.address === '::';
  return listenerKey({ host: info.address, port: 1 }).key === listenerKey({ host: target.host, port: 1 }).key;
}

/** What the systemd side needs of the upgrader it serves. */
export interface SystemdHost {
  /** The servers given to listen(), by key. */
  servers(): Iterable<{ key: string; server: net.Server }>;
  /** Whether an upgrade() is still pending (a spawned successor not yet ready). */
  upgradePending(): boolean;
  warn(err: HandoverError): void;
}

/** The events of the upgrader the systemd side follows. */
interface UpgraderEventSource {
  readonly state: string;
  on(event: 'upgrading' | 'upgradeFailed' | 'rollback' | 'retiring', listener: () => void): unknown;
}

/**
 * Systemd speaks for one generation to the service manager named by its environment, and does
 * nothing where there is none. The protocol (see docs/systemd.md):
 * - ready (first start, or a successor right before it lets its predecessor go, so always while
 *   the predecessor is alive): FDSTOREREMOVE / FDSTORE for the listening sockets, then
 *   `MAINPID=<pid>` and `READY=1` in one datagram (systemd reads MAINPID= first);
 * - an upgrade starts (upgrade(), or a successor connected): `RELOADING=1` + `MONOTONIC_USEC=`;
 *   it fails: `READY=1`; a rollback after the successor's READY: `MAINPID=<own pid>` + `READY=1`;
 * - stop() while this generation is the main process: `STOPPING=1`. Never after a hand-over:
 *   with NotifyAccess=all, STOPPING=1 from any process of the unit stops the whole service.
 */
export class Systemd {
  private readonly notifySocket: string | undefined;
  private readonly fdStore: boolean;
  private readonly activated: ActivatedListener[];
  /** For each key given to listen(): the key its socket was stored or offered under, or undefined for a fresh socket. */
  private readonly claimedFrom = new Map<string, string | undefined>();
  private reloading = false;
  private main = false;
  private notifyFailed = false;

  constructor(env: NodeJS.ProcessEnv, private readonly host: SystemdHost, private readonly pid: number = process.pid) {
    this.notifySocket = notifyAddress(env.NOTIFY_SOCKET);
    if (env.NOTIFY_SOCKET !== undefined && this.notifySocket === undefined) debug('NOTIFY_SOCKET=%s is not a unix socket address; not notifying', env.NOTIFY_SOCKET);
    // systemd >= 254 announces FileDescriptorStoreMax= as $FDSTORE; older ones can be told with Environment=FDSTORE=N.
    this.fdStore = this.notifySocket !== undefined && /^\d+$/.test(env.FDSTORE ?? '') && Number(env.FDSTORE) > 0;
    const { listeners, problems } = takeListenFds(env, pid);
    this.activated = listeners;
    if (listeners.length > 0) debug('socket activation: %s', listeners.map((l) => `fd ${l.fd} ${l.name}`).join(', '));
    // Emitted once the caller had a chance to subscribe to 'warning'.
    for (const problem of problems) process.nextTick(() => host.warn(new HandoverError('ERR_HANDOVER_SYSTEMD', problem)));
  }

  /** follow subscribes to the upgrader's events that change what systemd must be told. */
  follow(upgrader: UpgraderEventSource): void {
    upgrader.on('upgrading', () => this.reloadStarted());
    upgrader.on('upgradeFailed', () => {
      if (this.reloading && upgrader.state === 'serving' && !this.host.upgradePending()) {
        this.reloading = false;
        this.notify('READY=1');
      }
    });
    upgrader.on('rollback', () => this.rolledBack());
    upgrader.on('retiring', () => this.retiring());
  }

  /**
   * take hands listen() the activated socket for this target: the one named after its key (or its
   * own key, say `web` for FileDescriptorName=web), else the one bound to its address.
   */
  take(key: string, target: ListenTarget): InheritedListener | undefined {
    let index = this.activated.findIndex((listener) => listener.key === key && isListening(listener));
    if (index < 0) index = this.activated.findIndex((listener) => serves(listener, target));
    if (index < 0) return undefined;
    const [listener] = this.activated.splice(index, 1);
    debug('listen %s on fd %d from systemd (%s)', key, listener!.fd, listener!.name);
    return listener;
  }

  /** claimed records where the socket of `key` came from: `sourceKey` (the predecessor's or the store's key), or a fresh bind. */
  claimed(key: string, sourceKey: string | undefined): void {
    this.claimedFrom.set(key, sourceKey);
  }

  /**
   * ready: this generation serves from now on (called right before a successor lets its
   * predecessor go). Updates the fd store, closes the activated sockets nobody claimed, and says
   * MAINPID + READY. `unclaimedKeys`: the predecessor's listeners this generation did not take.
   */
  ready(unclaimedKeys: readonly string[]): void {
    this.main = true;
    this.reloading = false;
    if (this.fdStore) this.updateFdStore(unclaimedKeys);
    if (this.activated.length > 0) debug('closing %d activated sockets nobody claimed: %s', this.activated.length, this.activated.map((l) => l.name).join(', '));
    closeFds(this.activated.splice(0).map((l) => l.fd));
    this.notify(`MAINPID=${this.pid}\nREADY=1`);
  }

  /** upgradeStarted: upgrade() spawned a successor. */
  upgradeStarted(): void {
    this.reloadStarted();
  }

  /** stopping: stop() ends this generation without a successor (said only while it is the main process); unclaimed activated sockets are closed. */
  stopping(): void {
    closeFds(this.activated.splice(0).map((l) => l.fd));
    if (!this.main) return;
    this.main = false;
    this.notify('STOPPING=1');
  }

  /** retiring: a successor took over; it is the main process now (nothing is sent: see the class comment). */
  private retiring(): void {
    this.main = false;
    this.reloading = false;
  }

  private reloadStarted(): void {
    if (this.reloading || !this.main) return;
    this.reloading = true;
    // CLOCK_MONOTONIC, as systemd compares it with the time it sent its reload signal (notify-reload).
    this.notify(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`);
  }

  private rolledBack(): void {
    this.main = true;
    this.reloading = false;
    this.notify(`MAINPID=${this.pid}\nREADY=1`);
    if (!this.fdStore) return;
    // The successor may have changed the store before it went: store our sockets again once they accept again.
    for (const { key, server } of this.host.servers()) {
      if (server.listening) this.store(key, server);
      else server.once('listening', () => this.store(key, server));
    }
  }

  private updateFdStore(unclaimedKeys: readonly string[]): void {
    const listening = [...this.host.servers()].filter(({ server }) => server.listening);
    const keep = new Set<string>();
    const remove = new Set<string>();
    for (const key of unclaimedKeys) addName(remove, key);
    for (const listener of this.activated) remove.add(listener.name);
    for (const { key } of listening) {
      const source = this.claimedFrom.get(key);
      const name = fdName(key);
      if (source === undefined) {
        // A fresh socket replaces whatever the store holds under its name.
        if (name !== undefined) remove.add(name);
      } else if (fdName(source) === name) {
        if (name !== undefined) keep.add(name);
      } else addName(remove, source);
    }
    for (const name of remove) {
      if (!keep.has(name)) this.notify(`FDSTOREREMOVE=1\nFDNAME=${name}`);
    }
    for (const { key, server } of listening) this.store(key, server);
  }

  /** store puts one listening socket in the fd store under its key's name (systemd skips a socket it already holds). */
  private store(key: string, server: net.Server): void {
    const name = fdName(key);
    if (name === undefined) {
      this.host.warn(new HandoverError('ERR_HANDOVER_SYSTEMD', `the listener key ${key.slice(0, 40)}... is too long for an FDNAME (${FDNAME_MAX} characters once encoded); not kept in the fd store`));
      return;
    }
    let fd: number;
    try {
      fd = serverFd(server);
    } catch {
      return; // closed by the application meanwhile
    }
    this.notify(`FDSTORE=1\nFDNAME=${name}`, [fd]);
  }

  /** notify sends one message to systemd; a failure is a warning, said once, never a reason to stop serving. */
  private notify(message: string, fds: readonly number[] = []): void {
    if (this.notifySocket === undefined) return;
    debug('notify %s%s', message.replace(/\n/g, ' '), fds.length > 0 ? ` (fds ${fds.join(',')})` : '');
    try {
      binding().notify(this.notifySocket, Buffer.from(message), fds, NOTIFY_TIMEOUT_MS);
    } catch (err) {
      if (this.notifyFailed) return;
      this.notifyFailed = true;
      this.host.warn(new HandoverError('ERR_HANDOVER_SYSTEMD', `cannot notify systemd at NOTIFY_SOCKET (${message.split('\n')[0]}): ${(err as Error).message}`, { cause: err }));
    }
  }
}

function addName(names: Set<string>, key: string): void {
  const name = fdName(key);
  if (name !== undefined) names.add(name);
}
