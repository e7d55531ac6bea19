// HTTP: what happens to an http.Server's connections when its process retires, and to the
// connections its successor adopts. Plain HTTP/1.1 connections move at a message boundary: a busy
// one stops reading at the kernel, answers what its parser already holds, and moves once nothing
// is in flight; TLS connections and HTTP/2 sessions, whose state cannot move, are drained
// (`Connection: close`, GOAWAY).
import { EventEmitter } from 'node:events';
import * as http from 'node:http';
import * as https from 'node:https';
import type * as net from 'node:net';
import createDebug from 'debug';
import { registerAdapter, serviceControl, type MoveConnection, type ServerAdapter } from './adapter';

const debug = createDebug('handover:http');

// ---------------------------------------------------------------------------------------------
// The Node internals this adapter reads (POSIX, Node 20-26), each behind one accessor so that a
// runtime module can check them once. Sources: lib/_http_server.js, lib/_http_common.js,
// src/node_http_parser.cc.

/** The C++ HTTP parser of a server connection (internalBinding('http_parser').HTTPParser). */
interface HttpParser {
  [index: number]: unknown;
  socket: net.Socket | null;
  incoming: (http.IncomingMessage & { complete: boolean }) | null;
  unconsume(): void;
}

interface ConnectionsList {
  idle(): HttpParser[];
  expired(headersTimeout: number, requestTimeout: number): HttpParser[];
}

interface TcpHandle {
  reading?: boolean;
  readStart(): number;
  readStop(): number;
}

/** Indices of the parser's JS callbacks (HTTPParser.kOnBody, kOnMessageComplete, kOnExecute; stable since Node 12). */
const kOnBody = 3;
const kOnMessageComplete = 4;
const kOnExecute = 5;

/** connectionsList: the server's list of HTTP parsers (Node >= 18.2), which knows which are between messages. */
function connectionsList(server: http.Server): ConnectionsList | undefined {
  const symbol = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  const list = symbol ? (server as unknown as Record<symbol, unknown>)[symbol] : undefined;
  return list && typeof (list as ConnectionsList).idle === 'function' ? (list as ConnectionsList) : undefined;
}

/** responseInFlight: the response being written on a connection (pipelined ones queue behind it). */
function responseInFlight(socket: net.Socket): (http.ServerResponse & EventEmitter) | null {
  return (socket as unknown as { _httpMessage?: http.ServerResponse | null })._httpMessage ?? null;
}

/** httpParser: the connection's parser; null once the connection left HTTP (upgrade, CONNECT) or closed. */
function httpParser(socket: net.Socket): HttpParser | null {
  const parser = (socket as unknown as { parser?: HttpParser | null }).parser;
  return parser && typeof parser === 'object' ? parser : null;
}

/** parserRequest: the request a parser is reading or read last (IncomingMessage; `complete` once its body ended). */
function parserRequest(parser: HttpParser): (http.IncomingMessage & { complete: boolean }) | null {
  return parser.incoming ?? null;
}

/** parserCallback / setParserCallback: the parser's JS callbacks, by index (see kOnBody). */
function parserCallback(parser: HttpParser, index: number): ((...args: unknown[]) => unknown) | undefined {
  const callback = parser[index];
  return typeof callback === 'function' ? (callback as (...args: unknown[]) => unknown) : undefined;
}

function setParserCallback(parser: HttpParser, index: number, callback: (this: HttpParser, ...args: never[]) => unknown): void {
  parser[index] = callback;
}

/** stopConsuming: bytes stop going from the handle straight into the parser and reach the stream ('data') instead, as for an upgrade. */
function stopConsuming(parser: HttpParser): boolean {
  if (typeof parser.unconsume !== 'function') return false;
  parser.unconsume();
  return true;
}

/** pausedByServer: the http server paused the connection (its responses are not being read: back-pressure). */
function pausedByServer(socket: net.Socket): boolean {
  return (socket as unknown as { _paused?: boolean })._paused === true;
}

/** tcpHandle: the socket's libuv stream handle, with the reading switch Node itself uses (onSocketResume/onSocketPause). */
function tcpHandle(socket: net.Socket): TcpHandle | null {
  const handle = (socket as unknown as { _handle?: Partial<TcpHandle> | null })._handle;
  return handle && typeof handle.readStop === 'function' && typeof handle.readStart === 'function' ? (handle as TcpHandle) : null;
}

/** serverDataListener: the http server's own 'data' listener on a connection (socketOnData), which feeds its parser. */
function serverDataListener(socket: net.Socket): ((chunk: Buffer) => void) | undefined {
  return socket.listeners('data').find((fn) => fn.name === 'bound socketOnData') as ((chunk: Buffer) => void) | undefined;
}

/**
 * freezeReading stops reading at the kernel (what the parser consumes directly, bypassing the
 * stream) and keeps anything (resume(), the server's readStart after a message) from restarting
 * it. Bytes left in the kernel move with the fd. Returns the undo. (As src/connections.ts does.)
 */
function freezeReading(socket: net.Socket): () => void {
  const handle = tcpHandle(socket);
  if (!handle) return () => undefined;
  const own = Object.prototype.hasOwnProperty.call(handle, 'readStart') ? handle.readStart : undefined;
  handle.readStop();
  handle.reading = false;
  handle.readStart = () => 0;
  return () => {
    if (own) handle.readStart = own;
    else delete (handle as Partial<TcpHandle>).readStart;
    // Reading resumes the way Node restarts it (onSocketResume), unless something paused it meanwhile.
    if (!socket.destroyed && !pausedByServer(socket) && socket.readableFlowing !== false) {
      handle.reading = true;
      handle.readStart();
    }
  };
}

// ---------------------------------------------------------------------------------------------

/** What Node adds to keepAliveTimeout before it closes an idle connection (lib/_http_server.js). */
const KEEP_ALIVE_TIMEOUT_BUFFER = 1000;

/** Body bytes of a request its parser has delivered so far (counted by the adapter, see instrumentParser). */
const kBodyBytes = Symbol('handover.bodyBytes');
const kMessagesCompleted = Symbol('handover.messagesCompleted');
const kInstrumented = Symbol('handover.instrumented');

/** A retiring connection that is not idle yet: its reads are frozen until it reaches a message boundary. */
interface Draining {
  thaw: () => void;
  /** Bytes read past the end of the message that was completed: the next request's start, moved as pending. */
  leftover: Buffer;
  /** Set while the parser is fed by hand to complete a partial message. */
  readingOn?: () => void;
  moving: boolean;
}

/**
 * HttpAdapter follows one HTTP server's connections. On retire it moves every idle plain-HTTP
 * connection at once; a busy one stops reading, answers the requests its parser already holds,
 * and moves at the first message boundary. Without a way to move (TLS, HTTP/2, or an old runtime)
 * it ends keep-alive instead: `Connection: close` on the next response, idle connections closed.
 */
export class HttpAdapter implements ServerAdapter {
  private retiring = false;
  private move: MoveConnection | undefined;
  private readonly server: http.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly sessions = new Set<{ close(): void; closed?: boolean; destroyed?: boolean }>();
  /** Adopted connections and how many bytes they had read when adopted idle (none since: still idle). */
  private readonly adoptedIdle = new WeakMap<net.Socket, number>();
  private readonly draining = new Map<net.Socket, Draining>();
  private readonly lastResponse = new WeakSet<net.Socket>();
  /** Responses with our one 'finish' listener: never a second one on the same response. */
  private readonly watched = new WeakSet<object>();
  private readonly scheduled = new Set<net.Socket>();
  private checkScheduled = false;
  readonly canMove: boolean;

  constructor(server: http.Server, options: { tls: boolean; http2: boolean }) {
    this.server = server;
    const list = connectionsList(server);
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
      socket.once('close', () => this.forget(socket));
      serviceControlBetweenReads(socket);
      if (this.canMove) instrumentParser(socket);
      if (this.retiring && this.move && this.canMove) this.drain(socket);
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
    for (const session of this.sessions) session.close();
    if (this.move && this.canMove) {
      // Everything idle now moves now, in the same batches as the other servers' connections
      // (retirement starts every adapter in one turn); the rest at their next message boundary.
      for (const socket of this.sockets) this.drain(socket, false);
      const idle = new Set<object>(connectionsList(this.server)?.idle() ?? []);
      for (const socket of [...this.draining.keys()]) this.check(socket, idle);
      return;
    }
    for (const socket of this.sockets) {
      const res = responseInFlight(socket);
      if (!res || res.writableFinished) continue;
      if (!res.headersSent) res.shouldKeepAlive = false;
      else this.watch(res, () => this.closeIdle());
    }
    this.closeIdle();
  }

  /** resume (after a rollback): keep-alive as usual; frozen connections read again. */
  resume(): void {
    this.retiring = false;
    this.move = undefined;
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

  /** closeIdle: closeIdleConnections where the server has it (h2c's Http2Server does not). */
  private closeIdle(): void {
    const server = this.server as Partial<http.Server>;
    if (typeof server.closeIdleConnections === 'function') server.closeIdleConnections();
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
      const idle = new Set<object>(connectionsList(this.server)?.idle() ?? []);
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
    const res = responseInFlight(socket);
    if (res) {
      // Pipelined responses queue behind this one: each becomes the one in flight in turn.
      this.watch(res, () => this.schedule(socket));
      return;
    }
    const parser = httpParser(socket);
    if (!parser) {
      this.release(socket); // upgraded meanwhile
      return;
    }
    if (idleParsers.has(parser) || socket.bytesRead === 0) this.transfer(socket, entry);
    else this.readOn(socket, parser, entry);
  }

  /**
   * readOn: every response is out but the parser holds part of a message: read until it completes,
   * feeding the parser by hand so that it never receives a byte past that message's end (a chunk
   * that holds the end of this request and the start of the next is split; the rest moves).
   */
  private readOn(socket: net.Socket, parser: HttpParser, entry: Draining): void {
    const onData = serverDataListener(socket);
    if (!onData || !(parser as { [kInstrumented]?: boolean })[kInstrumented] || !stopConsuming(parser)) {
      debug('cannot feed the parser by hand; the connection is drained instead');
      this.stay(socket);
      return;
    }
    let buffered: Buffer = Buffer.alloc(0);
    const before = messagesCompleted(parser);
    const completed = (): boolean => messagesCompleted(parser) !== before;
    const feed = (chunk: Buffer): void => {
      buffered = buffered.length > 0 ? Buffer.concat([buffered, chunk]) : chunk;
      while (buffered.length > 0 && !completed() && !socket.destroyed) {
        if (pausedByServer(socket)) return; // Node's back-pressure: the next chunk goes on
        const length = safeSliceLength(parser, buffered);
        const slice = buffered.subarray(0, length);
        buffered = buffered.subarray(length);
        onData(slice);
        if (httpParser(socket) !== parser) {
          // The request was an upgrade: the connection left HTTP (the server removed its own
          // listener); what follows is its new protocol's.
          finish(false);
          if (buffered.length > 0) socket.unshift(buffered);
          this.release(socket);
          return;
        }
      }
      if (completed()) {
        finish(true);
        entry.leftover = Buffer.from(buffered);
        debug('message completed; %d bytes of the next one move with the connection', entry.leftover.length);
        this.schedule(socket);
      }
    };
    // Bytes kept while the server paused the connection go on when it resumes it.
    const kick = (): void => feed(Buffer.alloc(0));
    const finish = (serverListener: boolean): void => {
      socket.removeListener('data', feed);
      socket.removeListener('resume', kick);
      if (serverListener && !socket.listeners('data').includes(onData)) EventEmitter.prototype.on.call(socket, 'data', onData);
      entry.thaw = freezeReading(socket);
      delete entry.readingOn;
    };
    entry.readingOn = () => finish(true);
    // Bytes now reach the stream (not the parser directly, see stopConsuming), and only through `feed`.
    socket.removeListener('data', onData);
    EventEmitter.prototype.on.call(socket, 'data', feed);
    socket.on('resume', kick);
    entry.thaw();
    socket.resume();
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
    const res = responseInFlight(socket);
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
    const entry = this.draining.get(socket);
    this.draining.delete(socket);
    entry?.readingOn?.();
  }
}

/**
 * instrumentParser counts, on a connection's parser, the messages it completed and the body bytes
 * of each request, so that a message frozen half-way can be completed to its exact last byte. It
 * runs at 'connection', before the parser's first byte: Node 26 reads a parser's callbacks once per
 * connection, at its first execute, so a callback replaced later is never called. The parser object
 * is pooled: the wrappers stay on it and count for whichever connection it parses next.
 */
function instrumentParser(socket: net.Socket): void {
  const parser = httpParser(socket) as (HttpParser & { [kInstrumented]?: boolean }) | null;
  if (!parser || parser[kInstrumented]) return;
  const onBody = parserCallback(parser, kOnBody);
  const onMessageComplete = parserCallback(parser, kOnMessageComplete);
  if (!onBody || !onMessageComplete) return;
  parser[kInstrumented] = true;
  setParserCallback(parser, kOnBody, function (this: HttpParser, chunk: Buffer, ...rest: unknown[]) {
    const req = parserRequest(this) as (http.IncomingMessage & { [kBodyBytes]?: number }) | null;
    if (req && chunk) req[kBodyBytes] = (req[kBodyBytes] ?? 0) + chunk.length;
    return onBody.call(this, chunk, ...rest);
  });
  setParserCallback(parser, kOnMessageComplete, function (this: HttpParser & { [kMessagesCompleted]?: number }, ...args: unknown[]) {
    this[kMessagesCompleted] = (this[kMessagesCompleted] ?? 0) + 1;
    return onMessageComplete.apply(this, args);
  });
}

/** messagesCompleted: how many messages the connection's parser completed (see instrumentParser). */
function messagesCompleted(parser: HttpParser): number {
  return (parser as HttpParser & { [kMessagesCompleted]?: number })[kMessagesCompleted] ?? 0;
}

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
  setParserCallback(parser, kOnExecute, function (this: HttpParser, ret: unknown, ...rest: unknown[]) {
    const result = onExecute.call(this, ret, ...rest);
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
 * safeSliceLength: how many of `bytes` the parser may take without passing the end of the message
 * it is in. Headers and chunked bodies end with a line feed, so feeding a line at a time never
 * passes their end; a Content-Length body ends after exactly its remaining bytes.
 */
function safeSliceLength(parser: HttpParser, bytes: Buffer): number {
  const req = parserRequest(parser) as (http.IncomingMessage & { complete: boolean; [kBodyBytes]?: number }) | null;
  const inBody = req !== null && !req.complete;
  if (inBody && req.headers['transfer-encoding'] === undefined) {
    const length = Number(req.headers['content-length']);
    const remaining = length - (req[kBodyBytes] ?? 0);
    if (Number.isSafeInteger(remaining) && remaining > 0) return Math.min(remaining, bytes.length);
    return 1; // cannot tell: one byte at a time is always safe
  }
  const lineEnd = bytes.indexOf(0x0a);
  return lineEnd < 0 ? bytes.length : lineEnd + 1;
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
