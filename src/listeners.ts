// Listener keys and the bridge between listening fds and net.Server: what a predecessor offers,
// what a successor claims, and closing what nobody claimed.
import type { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { createDebug } from './log';
import { binding, type SocketInfo } from './native';
import { HandoverError } from './errors';
import type { ListenerKind } from './protocol';

const debug = createDebug('handover:listeners');

/** Where a server listens: TCP host and port, or a unix socket path, optionally under a chosen key. */
export interface ListenTarget {
  port?: number;
  host?: string;
  path?: string;
  /** A stable name of your own; defaults to `tcp:HOST:PORT` or `unix:PATH`. */
  key?: string;
  backlog?: number;
  ipv6Only?: boolean;
  /**
   * Bind a fresh socket with `SO_REUSEPORT` (Node >= 22.12, Linux), so that several workers, each
   * with its own `dir`, serve one port; each worker's socket then passes to its own successor.
   * An inherited socket is used as it is: it already belongs to the reuseport group.
   */
  reusePort?: boolean;
}

/** A listening socket received from the predecessor, not yet claimed by a server. */
export interface InheritedListener {
  key: string;
  kind: ListenerKind;
  /** The fd in this process. Owned by the upgrader until claimed; closed at ready() if unclaimed. */
  fd: number;
  info: SocketInfo;
}

function normaliseHost(host: string): string {
  const lower = host.trim().toLowerCase();
  const bare = lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower;
  // Every IPv6 address has a colon; the test spares compiling net.isIPv6's large regex (~4 ms) at start-up.
  if (bare.includes(':') && net.isIPv6(bare)) {
    // Canonical IPv6 text, so '::0' and '::' name the same listener.
    return `[${new URL(`http://[${bare}]/`).hostname.slice(1, -1)}]`;
  }
  return bare;
}

/**
 * listenerKey names a listener stably across generations: `tcp:HOST:PORT` (IPv6 hosts in brackets,
 * `*` for "all addresses" when no host is given), `udp:HOST:PORT` for a UDP socket, `unix:PATH`,
 * or the user's own key.
 */
export function listenerKey(target: ListenTarget, transport: 'stream' | 'dgram' = 'stream'): { key: string; kind: ListenerKind } {
  if (target.key !== undefined) {
    if (typeof target.key !== 'string' || target.key.length === 0 || target.key.length > 1024) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.key must be a non-empty string of at most 1024 characters');
    }
    if (transport === 'dgram') return { key: target.key, kind: 'udp' };
    return { key: target.key, kind: target.path !== undefined ? 'unix' : target.port !== undefined ? 'tcp' : 'named' };
  }
  if (transport === 'dgram' && target.path !== undefined) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'a UDP socket listens on { port, host }, not on a path');
  }
  if (target.path !== undefined) {
    if (typeof target.path !== 'string' || target.path.length === 0) {
      throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.path must be a non-empty string');
    }
    return { key: `unix:${target.path}`, kind: 'unix' };
  }
  const port = target.port;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.port must be an integer from 0 to 65535 (or give options.path), got ${String(port)}`);
  }
  const host = target.host === undefined || target.host === '' ? '*' : normaliseHost(target.host);
  return transport === 'dgram' ? { key: `udp:${host}:${port}`, kind: 'udp' } : { key: `tcp:${host}:${port}`, kind: 'tcp' };
}

/** reusePortSupported tells whether `server.listen()` of this Node knows `reusePort` (22.12 and 23.1 on). */
export function reusePortSupported(version: string = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}

/**
 * checkReusePort validates `target.reusePort`. Older Nodes ignore the option without a word, so
 * the second worker would fail with EADDRINUSE: say why instead, whether this process binds or
 * inherits (a successor must not succeed where a fresh start fails).
 */
export function checkReusePort(target: ListenTarget): void {
  if (target.reusePort === undefined || target.reusePort === false) return;
  if (target.reusePort !== true) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.reusePort must be a boolean, got ${String(target.reusePort)}`);
  if (target.path !== undefined) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.reusePort is for TCP ports, not unix socket paths');
  if (!reusePortSupported()) {
    throw new HandoverError('ERR_HANDOVER_UNSUPPORTED_RUNTIME', `options.reusePort needs Node.js 22.12 or later (this is ${process.versions.node})`);
  }
}

/**
 * mismatch tells why an inherited listener cannot serve `target` (another family, port, host or
 * path than its key says), or undefined when it fits. A predecessor that sends a socket under the
 * wrong key must not make this process serve the wrong port.
 */
export function mismatch(listener: InheritedListener, target: ListenTarget, transport: 'stream' | 'dgram' = 'stream'): string | undefined {
  const { info } = listener;
  if ((info.type === 'dgram') !== (transport === 'dgram')) return `${listener.key} is not a ${transport === 'dgram' ? 'UDP' : 'stream'} socket`;
  if (target.path !== undefined) {
    return info.family === 'unix' && info.path === target.path ? undefined : `${listener.key} is not a unix socket bound at ${target.path}`;
  }
  if (target.port === undefined) return undefined; // a named listener: whatever the application put under its name
  if (info.family !== 'inet' && info.family !== 'inet6') return `${listener.key} is not an IP socket`;
  if (target.port !== 0 && info.port !== target.port) return `${listener.key} is bound to port ${info.port}, not ${target.port}`;
  if (target.host !== undefined && target.host !== '' && info.address !== undefined && listenerKey({ host: info.address, port: 1 }).key !== listenerKey({ host: target.host, port: 1 }).key) {
    return `${listener.key} is bound to ${info.address}, not ${target.host}`;
  }
  return undefined;
}

/** listeningFd returns the fd of a listening net.Server (POSIX, Node internals). */
export function serverFd(server: net.Server): number {
  const handle = (server as unknown as { _handle?: { fd?: number } | null })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw new HandoverError('ERR_HANDOVER_INVALID_STATE', 'the server is not listening (no handle fd)');
  }
  return fd;
}

/** listenOnFd makes `server` accept on an existing listening fd and resolves once it listens. */
export function listenOnFd(server: net.Server, fd: number, backlog?: number): Promise<void> {
  return listenWith(server, backlog === undefined ? { fd } : { fd, backlog });
}

/** listenWith calls server.listen(options) and settles on 'listening' or 'error'. */
export function listenWith(server: net.Server, options: net.ListenOptions & { fd?: number }): Promise<void> {
  return untilListening(server, () => server.listen(options as net.ListenOptions));
}

/**
 * untilListening runs `start` (a listen() or bind()) and settles on the emitter's first
 * 'listening' or 'error' (or what `start` throws), leaving neither listener behind.
 */
export function untilListening(emitter: EventEmitter, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      emitter.removeListener('listening', onListening);
      reject(err);
    };
    const onListening = (): void => {
      emitter.removeListener('error', onError);
      resolve();
    };
    emitter.once('error', onError);
    emitter.once('listening', onListening);
    try {
      start();
    } catch (err) {
      emitter.removeListener('error', onError);
      onError(err as Error);
    }
  });
}

/**
 * stopAccepting closes only the server's listening handle: never http.Server.close(), which in
 * Node >= 19 also destroys idle keep-alive sockets. The caller keeps a dup of the fd so the kernel
 * socket (and its accept queue) stays alive.
 */
export function stopAccepting(server: net.Server): void {
  net.Server.prototype.close.call(server);
}

/** describe introspects a received fd, closing nothing. */
export function describeFd(fd: number): SocketInfo {
  return binding().socketInfo(fd);
}

/** closeFds closes fds nobody will use, ignoring the already-closed. */
export function closeFds(fds: Iterable<number>): void {
  const native = binding();
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch (err) {
      debug('close %d: %o', fd, err);
    }
  }
}
