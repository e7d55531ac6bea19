// The servers given to listen(): binding each to an inherited or a fresh socket, offering dups of
// their listening fds to a successor, and stopping or resuming accepting during retirement.
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { createDebug } from './log';
import { binding, isNativeError } from './native';
import { HandoverError } from './errors';
import { closeFds, listenOnFd, listenWith, serverFd, stopAccepting, type InheritedListener, type ListenTarget } from './listeners';
import { bindDatagram, datagramBound, datagramFd, pauseDatagrams, resumeDatagrams } from './datagram';
import type { ListenerEntry, ListenerKind } from './protocol';
import type { ServerAdapter } from './adapters/adapter';
import type { AdoptHandler } from './connections';

const debug = createDebug('handover:servers');

export interface ServerEntry {
  /** A stream server, or a UDP socket (nothing to accept: it is received on, see ./datagram.ts). */
  readonly server: net.Server | dgram.Socket;
  readonly key: string;
  readonly kind: ListenerKind;
  readonly backlog: number | undefined;
  readonly adapter: ServerAdapter | undefined;
  readonly adopt: AdoptHandler | undefined;
  /** A dup of the listening fd, kept while retiring so that a rollback can accept again. */
  keptFd?: number;
}

/** ServerSet owns the servers of one generation by listener key. */
export class ServerSet {
  private readonly entries = new Map<string, ServerEntry>();

  has(key: string): boolean {
    return this.entries.has(key);
  }

  get(key: string): ServerEntry | undefined {
    return this.entries.get(key);
  }

  values(): IterableIterator<ServerEntry> {
    return this.entries.values();
  }

  /**
   * bind makes `server` listen on the inherited socket if there is one, else on a fresh one (unix
   * paths bound by us: libuv unlinks a path it bound when the server closes, which would pull it
   * from under the successor that inherits the socket).
   */
  async bind(server: net.Server | dgram.Socket, target: ListenTarget, inherited: InheritedListener | undefined): Promise<void> {
    if (server instanceof dgram.Socket) {
      if (inherited) debug('receive %s on inherited fd %d', inherited.key, inherited.fd);
      try {
        await bindDatagram(server, inherited ? { fd: inherited.fd } : { port: target.port ?? 0, ...(target.host ? { address: target.host } : {}) });
      } catch (err) {
        if (inherited) closeFds([inherited.fd]);
        throw err;
      }
      return;
    }
    if (inherited) {
      debug('listen %s on inherited fd %d', inherited.key, inherited.fd);
      await listenOnFdOrClose(server, inherited.fd, target.backlog);
    } else if (target.path !== undefined) {
      await listenOnFdOrClose(server, bindUnixPath(target.path, target.backlog ?? 511), target.backlog);
    } else {
      const options: net.ListenOptions = { port: target.port ?? 0 };
      if (target.host !== undefined && target.host !== '') options.host = target.host;
      if (target.backlog !== undefined) options.backlog = target.backlog;
      if (target.ipv6Only !== undefined) options.ipv6Only = target.ipv6Only;
      if (target.reusePort === true) (options as net.ListenOptions & { reusePort?: boolean }).reusePort = true; // @types/node 20 lacks it
      await listenWith(server, options);
    }
  }

  add(entry: ServerEntry): void {
    this.entries.set(entry.key, entry);
  }

  /**
   * offer duplicates the listening fd of every server still listening (a server the application
   * closed is not offered). The dups travel; the servers' own fds stay untouched whatever happens.
   */
  offer(): { listeners: ListenerEntry[]; fds: number[] } {
    const dups = this.dupListening((entry) => listening(entry.server), 'duplicate');
    return { listeners: dups.map(([entry]) => ({ key: entry.key, kind: entry.kind })), fds: dups.map(([, fd]) => fd) };
  }

  /**
   * stopAccepting closes every server's listening handle, keeping a dup of its fd first: the
   * kernel socket and its accept queue stay alive for the successor, and for a rollback.
   */
  stopAccepting(): void {
    // Every dup first: if one fails (EMFILE), nothing has changed and READY can be refused.
    const kept = this.dupListening((entry) => entry.keptFd === undefined && listening(entry.server), 'keep a copy of');
    for (const [entry, fd] of kept) {
      entry.keptFd = fd;
      if (entry.server instanceof dgram.Socket) pauseDatagrams(entry.server);
      else stopAccepting(entry.server);
      debug('stopped accepting %s', entry.key);
    }
  }

  /** dupListening dups the listening fd of every server `which` selects: all of them, or none (ERR_UPGRADE_REFUSED). */
  private dupListening(which: (entry: ServerEntry) => boolean, verb: string): [ServerEntry, number][] {
    const native = binding();
    const dups: [ServerEntry, number][] = [];
    try {
      for (const entry of this.entries.values()) {
        if (which(entry)) dups.push([entry, native.dup(entry.server instanceof dgram.Socket ? datagramFd(entry.server) : serverFd(entry.server))]);
      }
    } catch (err) {
      closeFds(dups.map(([, fd]) => fd));
      throw new HandoverError('ERR_UPGRADE_REFUSED', `cannot ${verb} a listening socket: ${(err as Error).message}`, { cause: err });
    }
    return dups;
  }

  /** resumeAccepting listens again on every kept fd (rollback); failures are reported, the rest resume. */
  resumeAccepting(report: (err: HandoverError) => void): void {
    for (const entry of this.entries.values()) {
      const fd = entry.keptFd;
      if (fd === undefined) continue;
      delete entry.keptFd;
      if (entry.server instanceof dgram.Socket) {
        // Never closed, only paused: the socket's own fd receives again; the dup goes.
        closeFds([fd]);
        if (!resumeDatagrams(entry.server)) report(new HandoverError('ERR_HANDOVER_INVALID_STATE', `rollback: cannot receive again on ${entry.key} (this Node hides the UDP handle: it was closed)`));
        continue;
      }
      listenOnFd(entry.server, fd, entry.backlog).catch((err: Error) => {
        closeFds([fd]);
        report(new HandoverError('ERR_HANDOVER_INVALID_STATE', `rollback: cannot accept again on ${entry.key}: ${err.message}`, { cause: err }));
      });
    }
  }

  /** releaseKept closes the kept dups: the successor owns the listening sockets for good. */
  releaseKept(): void {
    for (const entry of this.entries.values()) {
      if (entry.keptFd !== undefined) closeFds([entry.keptFd]);
      delete entry.keptFd;
    }
  }

  /** closeListeners stops every server accepting, keeping nothing (a successor that gives up after READY). */
  closeListeners(): void {
    for (const entry of this.entries.values()) {
      if (entry.server instanceof dgram.Socket) {
        if (datagramBound(entry.server)) entry.server.close();
      } else if (entry.server.listening) stopAccepting(entry.server);
    }
  }
}

/** listening: a server accepts, or a UDP socket is bound and not closed. */
export function listening(server: net.Server | dgram.Socket): boolean {
  return server instanceof dgram.Socket ? datagramBound(server) : server.listening;
}

async function listenOnFdOrClose(server: net.Server, fd: number, backlog: number | undefined): Promise<void> {
  try {
    await listenOnFd(server, fd, backlog);
  } catch (err) {
    closeFds([fd]);
    throw err;
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
      // EAGAIN: a live listener with a full backlog; only ECONNREFUSED means nobody listens.
      stale = isNativeError(connectErr) && connectErr.code === 'ECONNREFUSED';
    }
    if (!stale || !fs.lstatSync(socketPath).isSocket()) throw err;
    fs.rmSync(socketPath, { force: true });
    return native.unixStreamListen(socketPath, backlog);
  }
}
