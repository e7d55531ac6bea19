// HTTP: what happens to an http.Server's connections when its process retires, and to the
// connections its successor adopts. Plain HTTP/1.1 connections move at a message boundary: a busy
// one stops reading at the kernel, answers what its parser already holds, and moves once nothing
// is in flight; TLS connections and HTTP/2 sessions, whose state cannot move, are drained
// (`Connection: close` on the next response, GOAWAY), never closed under a request that may be on
// the wire. Feeding a busy parser to its message boundary: ./http-boundary.ts.
import type { EventEmitter } from 'node:events';
import * as http from 'node:http';
import type * as https from 'node:https';
import type * as net from 'node:net';
import { createDebug } from '../log';
import { freezeReading } from '../runtime';
import { httpConnectionsList, httpMessage, httpParser, kOnExecute, parserCallback, setParserCallback, type HttpParser } from '../runtime-http';
import { registerAdapter, serviceControl, type MoveConnection, type ServerAdapter } from './adapter';
import { instrumentParser, readToBoundary, type Draining } from './http-boundary';
import type { Http2Sessions, Http2SessionLike } from './http2-sessions';

const debug = createDebug('handover:http');

/** Connections stopped and checked per turn of the event loop when retirement begins. */
const RETIRE_SLICE = 1024;

/** What Node adds to keepAliveTimeout before it closes an idle connection (lib/_http_server.js). */
const KEEP_ALIVE_TIMEOUT_BUFFER = 1000;

/**
 * HttpAdapter follows one HTTP server's connections. On retire it moves every idle plain-HTTP
 * connection at once; a busy one stops reading, answers the requests its parser already holds,
 * and moves at the first message boundary. Without a way to move (TLS, HTTP/2, or an old runtime)
 * it ends keep-alive instead: `Connection: close` on the next response; a connection that stays
 * idle goes by the server's own keep-alive timeout (closing it now would reset the request its
 * client may be sending at this very moment).
 */
export class HttpAdapter implements ServerAdapter {
  private retiring = false;
  private move: MoveConnection | undefined;
  private readonly server: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly sessions: Http2Sessions | undefined;
  /** Adopted connections and how many bytes they had read when adopted idle (none since: still idle). */
  private readonly adoptedIdle = new WeakMap<net.Socket, number>();
  private readonly draining = new Map<net.Socket, Draining>();
  private readonly lastResponse = new WeakSet<net.Socket>();
  /** Responses with our one 'finish' listener: never a second one on the same response. */
  private readonly watched = new WeakSet<object>();
  /** HTTP/1.1 fallback connections of an HTTP/2 server told to close after their next response: their parser's own onIncoming and ours. */
  private readonly fallbackClosing = new Map<net.Socket, { parser: ParserWithIncoming; own: OnIncoming; closing: OnIncoming }>();
  private readonly http2: boolean;
  private readonly scheduled = new Set<net.Socket>();
  private checkScheduled = false;
  readonly canMove: boolean;
  /** One 'close' listener shared by every connection (`this` is the socket): no closure per connection. */
  private readonly onClose = (() => {
    const adapter = this;
    return function (this: net.Socket): void {
      adapter.forget(this);
    };
  })();

  constructor(server: http.Server, options: { tls: boolean; http2: boolean }) {
    this.server = server;
    this.http2 = options.http2;
    const list = httpConnectionsList(server);
    this.canMove = !options.tls && !options.http2 && list !== undefined;
    if (list && typeof list.expired === 'function') {
      // An adopted socket's parser starts as if a request had just begun (Initialize stamps it), so
      // Node's periodic check would answer 408 to a client that simply stayed idle. While it has
      // read nothing since its adoption, its expiry is hidden (the list drops it from its active
      // set; the first byte of a request puts it back with a fresh stamp, via on_message_begin);
      // once it has read a byte, its expiry is Node's, exactly as on a fresh connection.
      const expired = list.expired.bind(list);
      list.expired = (headersTimeout, requestTimeout) => expired(headersTimeout, requestTimeout).filter((parser) => !(parser.socket && this.stillIdleSinceAdoption(parser.socket)));
    }
    // For TLS the HTTP state lives on the TLSSocket, not on the TCP socket under it.
    server.on(options.tls ? 'secureConnection' : 'connection', (socket: net.Socket) => {
      this.sockets.add(socket);
      socket.on('close', this.onClose);
      serviceControlBetweenReads(socket);
      if (this.canMove) instrumentParser(socket);
      if (this.retiring && this.move && this.canMove) this.drain(socket);
      else if (this.retiring) this.closeAfterNextResponse(socket);
    });
    if (options.http2) {
      // Loaded for HTTP/2 servers only (import-time cost).
      const sessions = new (require('./http2-sessions') as typeof import('./http2-sessions')).Http2Sessions();
      this.sessions = sessions;
      server.on('session', (session: Http2SessionLike) => sessions.follow(session));
    }
    // An HTTP/2 server gets no 'request' listener: the first one switches on Node's compatibility
    // layer for every stream (lib/internal/http2/core.js, setupCompat), which changes how a server
    // that uses the stream API behaves (it sends trailers of its own). Its HTTP/1.1 fallback
    // connections (allowHTTP1) end keep-alive through their parser instead (closeAfterNextResponse).
    if (options.http2) return;
    // First in line, so that the application's handler already sees the final decision.
    server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket;
      if (this.adoptedIdle.has(socket)) {
        // An adopted keep-alive connection sent its next request: back to the server's own timeout.
        this.adoptedIdle.delete(socket);
        socket.setTimeout(this.server.timeout || 0);
      }
      if (!this.retiring) return;
      if (!(this.move && this.canMove) || this.lastResponse.has(socket)) res.shouldKeepAlive = false;
    });
  }

  /** retire: move what can move now, the rest at its next message boundary; or drain if moving is not possible. */
  retire(move: MoveConnection | undefined): void {
    this.retiring = true;
    this.move = move;
    this.sessions?.retire();
    // An upgraded connection (a WebSocket) speaks another protocol now: the adapter of that protocol
    // moves or drains it (handover/ws, given to listen() as `protocol`), never this one.
    for (const socket of this.sockets) if (!httpParser(socket)) this.forget(socket);
    if (this.move && this.canMove) {
      // Everything idle now moves now, in the same batches as the other servers' connections
      // (retirement starts every adapter in one turn); the rest at their next message boundary.
      // Each connection stops reading and is checked in one pass, RETIRE_SLICE per turn of the
      // event loop: the first CONN frame leaves after its 253 connections, not after every
      // connection of the server stopped reading, and between slices this process answers what
      // is in flight (a busy connection moves right after its response). The idle list is read
      // once; a slice with a connection not yet stopped that read bytes since (it may have begun
      // a request) or was busy then (it may be idle now) reads it again.
      let idle = new Set<object>(httpConnectionsList(this.server)?.idle() ?? []);
      const pending = [...this.sockets].map((socket) => ({ socket, bytesRead: socket.bytesRead }));
      let first = true;
      const slice = (): void => {
        if (!this.retiring || !this.move) return;
        const batch = pending.splice(0, RETIRE_SLICE);
        // Stale for a connection that read since, or that was busy then (it may be idle now).
        const stale = (socket: net.Socket, bytesRead: number): boolean => {
          if (socket.destroyed) return false;
          const parser = httpParser(socket);
          return socket.bytesRead !== bytesRead || (parser !== null && !idle.has(parser));
        };
        if (!first && batch.some(({ socket, bytesRead }) => stale(socket, bytesRead))) {
          idle = new Set<object>(httpConnectionsList(this.server)?.idle() ?? []);
        }
        first = false;
        for (const { socket } of batch) {
          this.drain(socket, false);
          this.check(socket, idle);
        }
        if (pending.length > 0) setImmediate(slice);
      };
      slice();
      return;
    }
    // Never closeIdleConnections(): "idle" is only the instant between a response and the next
    // request, which may already be on the wire (the client would see a reset). Each connection
    // ends after its next response instead, or by the server's keep-alive timeout if it stays idle.
    for (const socket of this.sockets) this.closeAfterNextResponse(socket);
  }

  /** resume (after a rollback): keep-alive as usual; frozen connections read again. */
  resume(): void {
    this.retiring = false;
    this.move = undefined;
    this.sessions?.resume();
    for (const { parser, own, closing } of this.fallbackClosing.values()) {
      if (parser.onIncoming === closing) parser.onIncoming = own;
    }
    this.fallbackClosing.clear();
    for (const socket of [...this.draining.keys()]) {
      if (!this.draining.get(socket)?.moving) this.release(socket);
    }
  }

  /** afterAdopt: an adopted connection is idle keep-alive; give it the keep-alive timeout, not the headers timeout. */
  afterAdopt(socket: net.Socket): void {
    // Bytes handed over with it (the start of its next request) mean a message has begun: Node's timers apply.
    if (socket.readableLength > 0) return;
    this.adoptedIdle.set(socket, socket.bytesRead);
    if (this.server.keepAliveTimeout > 0) {
      // As Node itself does after a response (HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER).
      socket.setTimeout(this.server.keepAliveTimeout + KEEP_ALIVE_TIMEOUT_BUFFER);
    }
  }

  private stillIdleSinceAdoption(socket: net.Socket): boolean {
    const bytes = this.adoptedIdle.get(socket);
    return bytes !== undefined && socket.bytesRead === bytes;
  }

  /**
   * closeAfterNextResponse: the response being written, if its head is not out yet, and every
   * later one on this connection say `Connection: close`. HTTP/1.1 servers decide that in their
   * 'request' listener; an HTTP/2 server's HTTP/1.1 fallback connection has its parser tell the
   * server that the client asked to close (parserOnIncoming's keepAlive argument).
   */
  private closeAfterNextResponse(socket: net.Socket): void {
    const res = httpMessage(socket);
    if (res && !res.headersSent) res.shouldKeepAlive = false;
    if (!this.http2) return;
    const parser = httpParser(socket) as ParserWithIncoming | null;
    const own = parser?.onIncoming;
    if (!parser || typeof own !== 'function' || this.fallbackClosing.has(socket)) return;
    const closing: OnIncoming = (req) => own(req, false);
    this.fallbackClosing.set(socket, { parser, own, closing });
    parser.onIncoming = closing;
  }

  /** watch: one 'finish' listener per response, whatever asks for it how often. */
  private watch(res: EventEmitter, then: () => void): void {
    if (this.watched.has(res)) return;
    this.watched.add(res);
    res.once('finish', then);
  }

  /** drain: stop reading a retiring connection so that it reaches a message boundary, then move it. */
  private drain(socket: net.Socket, scheduleCheck = true): void {
    if (this.draining.has(socket) || socket.destroyed || !httpParser(socket)) return; // upgraded sockets belong to their new protocol
    this.draining.set(socket, { thaw: freezeReading(socket), leftover: Buffer.alloc(0), moving: false });
    if (scheduleCheck) this.schedule(socket);
  }

  /** schedule: check a connection on the next turn, with every other one due then (one look at the list). */
  private schedule(socket: net.Socket): void {
    this.scheduled.add(socket);
    if (this.checkScheduled) return;
    this.checkScheduled = true;
    setImmediate(() => {
      this.checkScheduled = false;
      const due = [...this.scheduled];
      this.scheduled.clear();
      const idle = new Set<object>(httpConnectionsList(this.server)?.idle() ?? []);
      for (const socket of due) this.check(socket, idle);
    });
  }

  private check(socket: net.Socket, idleParsers: Set<object>): void {
    const entry = this.draining.get(socket);
    if (!entry || entry.moving || entry.readingOn) return;
    if (!this.retiring || !this.move || socket.destroyed) {
      this.release(socket);
      return;
    }
    const res = httpMessage(socket);
    if (res) {
      // Pipelined responses queue behind this one: each becomes the one in flight in turn.
      this.watch(res, () => this.schedule(socket));
      return;
    }
    const parser = httpParser(socket);
    if (!parser) {
      this.release(socket); // upgraded meanwhile: its new protocol's adapter takes it from here
      this.forget(socket);
      return;
    }
    if (idleParsers.has(parser) || socket.bytesRead === 0) this.transfer(socket, entry);
    else this.readOn(socket, parser, entry);
  }

  /** readOn: every response is out but the parser holds part of a message: read on to its end (see readToBoundary). */
  private readOn(socket: net.Socket, parser: HttpParser, entry: Draining): void {
    const reading = readToBoundary(socket, parser, entry, {
      completed: () => {
        debug('message completed; %d bytes of the next one move with the connection', entry.leftover.length);
        this.schedule(socket);
      },
      upgraded: () => this.release(socket),
    });
    if (!reading) {
      debug('cannot feed the parser by hand; the connection is drained instead');
      this.stay(socket);
    }
  }

  private transfer(socket: net.Socket, entry: Draining): void {
    const move = this.move;
    if (!move) return;
    entry.moving = true;
    // Bytes read past the last complete message travel first; if the connection stays, they are
    // still here (release() hands them to the parser).
    move(socket, entry.leftover.length > 0 ? { pending: entry.leftover } : undefined).then(
      () => this.draining.delete(socket),
      (err: Error & { code?: string }) => {
        entry.moving = false;
        debug('connection stays: %s', err.message);
        // Rolled back: it is simply ours again. Still retiring: it stays here and ends gracefully,
        // with `Connection: close` on its next response (never a close under a request on the wire).
        if (this.retiring && !socket.destroyed) this.stay(socket);
        else this.release(socket);
      },
    );
  }

  /** stay: the connection cannot move; it is served here until its next response closes it. */
  private stay(socket: net.Socket): void {
    this.lastResponse.add(socket);
    const res = httpMessage(socket);
    if (res && !res.headersSent) res.shouldKeepAlive = false;
    this.release(socket);
  }

  /** release: undo the freeze; bytes read past a message boundary go to the parser first. */
  private release(socket: net.Socket): void {
    const entry = this.draining.get(socket);
    if (!entry) return;
    this.draining.delete(socket);
    entry.readingOn?.();
    if (socket.destroyed) return;
    if (entry.leftover.length > 0) socket.unshift(entry.leftover);
    entry.thaw();
    socket.resume();
  }

  private forget(socket: net.Socket): void {
    this.sockets.delete(socket);
    this.fallbackClosing.delete(socket);
    const entry = this.draining.get(socket);
    this.draining.delete(socket);
    entry?.readingOn?.();
  }
}

/** The server's per-connection request callback on a parser (lib/_http_server.js parserOnIncoming, bound). */
type OnIncoming = (req: http.IncomingMessage, keepAlive: boolean) => unknown;
type ParserWithIncoming = HttpParser & { onIncoming?: OnIncoming | null };

/** Request bytes parsed, over all connections, between two looks at the control sockets. */
const SERVICE_EVERY = 64 * 1024;
let parsedSinceService = 0;

/**
 * serviceControlBetweenReads: after each read its parser consumed, the control sockets get a look
 * once SERVICE_EVERY bytes were parsed since the last one. Under a flood of pipelined requests one
 * turn of the event loop parses a full read on every ready connection (~1 MB, over a second on two
 * cores with 32 connections), and the control socket's own poll runs once per turn: the handshake
 * (accept, HELLO, READY: a turn each) then outlasts the successor's readyTimeout. Installed at
 * 'connection': Node 26 reads a parser's callbacks once, at its first execute.
 */
function serviceControlBetweenReads(socket: net.Socket): void {
  const parser = httpParser(socket);
  const onExecute = parser ? parserCallback(parser, kOnExecute) : undefined;
  if (!parser || !onExecute) return; // not consumed by its parser: reads come as 'data', between turns' callbacks anyway
  setParserCallback(parser, kOnExecute, function (this: HttpParser, ret: unknown) {
    // apply(arguments): no rest array allocated on every read.
    const result = onExecute.apply(this, arguments as unknown as unknown[]);
    if (typeof ret === 'number' && ret > 0) {
      parsedSinceService += ret;
      if (parsedSinceService >= SERVICE_EVERY) {
        parsedSinceService = 0;
        serviceControl();
      }
    }
    return result;
  });
}

/**
 * isHttpsServer: an https.Server is a tls.Server (it has setSecureContext); only then is node:https
 * loaded to be sure, so that plain HTTP servers never load https and tls (start-up cost).
 */
function isHttpsServer(server: net.Server): boolean {
  if (typeof (server as unknown as { setSecureContext?: unknown }).setSecureContext !== 'function') return false;
  return server instanceof (require('node:https') as typeof https).Server;
}

/** http2's server classes are not exported: know them by the settings API only they have. */
function isHttp2Server(server: net.Server): boolean {
  return typeof (server as unknown as { updateSettings?: unknown }).updateSettings === 'function' && !(server instanceof http.Server);
}

registerAdapter({
  name: 'http',
  matches: (server) => server instanceof http.Server || isHttpsServer(server) || isHttp2Server(server),
  create: (server) => {
    const http2 = isHttp2Server(server);
    // An Http2SecureServer is a tls.Server; an https.Server too; h2c is a plain net.Server.
    const tls = isHttpsServer(server) || (http2 && typeof (server as unknown as { setSecureContext?: unknown }).setSecureContext === 'function');
    return new HttpAdapter(server as http.Server, { tls, http2 });
  },
});
