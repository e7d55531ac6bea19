// HTTP: what happens to an http.Server's connections when its process retires, and to the
// connections its successor adopts. Plain HTTP/1.1 connections move at a message boundary (idle:
// no response in flight, nothing unwritten, the parser between messages); TLS connections and
// HTTP/2 sessions, whose state cannot move, are drained (`Connection: close`, GOAWAY).
import * as http from 'node:http';
import * as https from 'node:https';
import type * as net from 'node:net';
import createDebug from 'debug';
import { registerAdapter } from './adapter';

const debug = createDebug('handover:http');

interface HttpSocket extends net.Socket {
  _httpMessage?: (http.ServerResponse & { finished?: boolean }) | null;
  parser?: object | null;
  _handle?: { writeQueueSize?: number } | null;
}

interface ConnectionsList {
  idle(): { socket?: net.Socket }[];
  expired(headersTimeout: number, requestTimeout: number): { socket?: net.Socket }[];
}

/** The server's internal list of HTTP parsers (Node >= 18.2), which knows which are between messages. */
function connectionsList(server: http.Server): ConnectionsList | undefined {
  const symbol = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  const list = symbol ? (server as unknown as Record<symbol, unknown>)[symbol] : undefined;
  return list && typeof (list as ConnectionsList).idle === 'function' ? (list as ConnectionsList) : undefined;
}

/** What Node adds to keepAliveTimeout before it closes an idle connection (lib/_http_server.js). */
const KEEP_ALIVE_TIMEOUT_BUFFER = 1000;

/** A function that moves one socket to the successor (rejects when it stays here). */
export type MoveConnection = (socket: net.Socket) => Promise<void>;

/**
 * HttpAdapter follows one HTTP server's connections. On retire it moves every idle plain-HTTP
 * connection at once and each busy one right after its response; without a way to move (TLS,
 * HTTP/2, or an old runtime) it ends keep-alive instead: `Connection: close` on the next response,
 * idle connections closed.
 */
export class HttpAdapter {
  private retiring = false;
  private move: MoveConnection | undefined;
  private readonly server: http.Server;
  private readonly sockets = new Set<HttpSocket>();
  private readonly sessions = new Set<{ close(): void; closed?: boolean; destroyed?: boolean }>();
  private readonly adoptedIdle = new WeakSet<net.Socket>();
  private readonly submitted = new WeakSet<net.Socket>();
  private readonly lastResponse = new WeakSet<net.Socket>();
  readonly canMove: boolean;

  constructor(server: http.Server, options: { tls: boolean; http2: boolean }) {
    this.server = server;
    const list = connectionsList(server);
    this.canMove = !options.tls && !options.http2 && list !== undefined;
    if (list && typeof list.expired === 'function') {
      // An adopted socket's parser starts as if a request had just begun (the C++ list stamps it
      // at initialize), so Node's periodic check would answer 408 to a client that simply stayed
      // idle. The check removes expired parsers from its active list; for adopted idle sockets we
      // let that happen silently: their next request puts them back, with fresh timers.
      const expired = list.expired.bind(list);
      list.expired = (headersTimeout, requestTimeout) => expired(headersTimeout, requestTimeout).filter((parser) => !(parser.socket && this.adoptedIdle.has(parser.socket)));
    }
    // For TLS the HTTP state lives on the TLSSocket, not on the TCP socket under it.
    server.on(options.tls ? 'secureConnection' : 'connection', (socket: HttpSocket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    if (options.http2) {
      server.on('session', (session: { close(): void; once(event: 'close', fn: () => void): void }) => {
        this.sessions.add(session);
        session.once('close', () => this.sessions.delete(session));
        if (this.retiring) session.close();
      });
    }
    // First in line, so that the application's handler already sees the final decision.
    server.prependListener('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const socket = req.socket as HttpSocket;
      if (this.adoptedIdle.has(socket)) {
        // An adopted keep-alive connection sent its next request: back to the server's own timeout.
        this.adoptedIdle.delete(socket);
        socket.setTimeout(this.server.timeout || 0);
      }
      if (!this.retiring) return;
      if (this.move && this.canMove && !this.lastResponse.has(socket)) {
        res.once('finish', () => setImmediate(() => this.tryMove(socket)));
      } else {
        res.shouldKeepAlive = false;
      }
    });
  }

  /** retire: move what can move now, the rest after its response; or drain if moving is not possible. */
  retire(move: MoveConnection | undefined): void {
    this.retiring = true;
    this.move = move;
    for (const session of this.sessions) session.close();
    if (this.move && this.canMove) {
      const idle = this.idleParsers();
      for (const socket of this.sockets) {
        if (this.isIdle(socket, idle)) this.transfer(socket);
        else this.afterResponse(socket);
      }
      return;
    }
    for (const socket of this.sockets) {
      const res = socket._httpMessage;
      if (!res || res.writableFinished) continue;
      if (!res.headersSent) res.shouldKeepAlive = false;
      else this.afterResponse(socket);
    }
    this.closeIdle();
  }

  /** resume (after a rollback): keep-alive as usual. */
  resume(): void {
    this.retiring = false;
    this.move = undefined;
  }

  /** afterAdopt: an adopted connection is idle keep-alive; give it the keep-alive timeout, not the headers timeout. */
  afterAdopt(socket: net.Socket): void {
    this.adoptedIdle.add(socket);
    if (this.server.keepAliveTimeout > 0) {
      // As Node itself does after a response (HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER).
      socket.setTimeout(this.server.keepAliveTimeout + KEEP_ALIVE_TIMEOUT_BUFFER);
    }
  }

  /** closeIdle: closeIdleConnections where the server has it (h2c's Http2Server does not). */
  private closeIdle(): void {
    const server = this.server as Partial<http.Server>;
    if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
  }

  private idleParsers(): Set<object> {
    return new Set(connectionsList(this.server)?.idle() ?? []);
  }

  /** isIdle: between two messages, with nothing in flight either way. */
  private isIdle(socket: HttpSocket, idleParsers: Set<object>): boolean {
    if (socket.destroyed || !socket.parser) return false; // gone, or upgraded to another protocol
    if (socket._httpMessage) return false; // a response (or a queue of pipelined ones) in flight
    if (socket.writableLength > 0 || (socket._handle?.writeQueueSize ?? 0) > 0) return false;
    return idleParsers.has(socket.parser) || socket.bytesRead === 0;
  }

  private afterResponse(socket: HttpSocket): void {
    const res = socket._httpMessage;
    if (!res) return;
    res.once('finish', () => setImmediate(() => this.tryMove(socket)));
  }

  private tryMove(socket: HttpSocket): void {
    if (!this.retiring || socket.destroyed || this.submitted.has(socket) || this.lastResponse.has(socket)) return;
    if (!this.move || !this.canMove) {
      this.closeIdle();
      return;
    }
    if (this.isIdle(socket, this.idleParsers())) this.transfer(socket);
    else this.afterResponse(socket);
  }

  private transfer(socket: HttpSocket): void {
    const move = this.move;
    if (!move || this.submitted.has(socket)) return;
    this.submitted.add(socket);
    move(socket).catch((err: Error & { code?: string }) => {
      this.submitted.delete(socket);
      debug('connection stays: %s', err.message);
      // Rolled back: it is simply ours again. Still retiring: it stays here and ends gracefully,
      // with `Connection: close` on its next response (never a close under a request on the wire).
      if (!this.retiring || socket.destroyed) return;
      this.lastResponse.add(socket);
      const res = socket._httpMessage;
      if (res && !res.headersSent) res.shouldKeepAlive = false;
    });
  }
}

/** http2's server classes are not exported: know them by the settings API only they have. */
function isHttp2Server(server: net.Server): boolean {
  return typeof (server as unknown as { updateSettings?: unknown }).updateSettings === 'function' && !(server instanceof http.Server);
}

registerAdapter({
  name: 'http',
  matches: (server) => server instanceof http.Server || server instanceof https.Server || isHttp2Server(server),
  create: (server) => {
    const http2 = isHttp2Server(server);
    // An Http2SecureServer is a tls.Server; an https.Server too; h2c is a plain net.Server.
    const tls = server instanceof https.Server || (http2 && typeof (server as unknown as { setSecureContext?: unknown }).setSecureContext === 'function');
    return new HttpAdapter(server as http.Server, { tls, http2 });
  },
});
