// handover/ws: the WebSocket connections of a `ws` WebSocketServer move to the successor between
// two frames, with the bytes their receiver has not parsed yet and the state the application
// attaches; the successor builds a WebSocket on each adopted socket with the negotiated subprotocol
// and compression, and emits it as 'connection'. Built on the protocol-author contract
// (./net.ts: prepareMove now/later/never, resume, drain, moved; adopt), as any user's adapter
// would be. The ws internals it reads are in ./ws-runtime.ts.
import type * as http from 'node:http';
import * as net from 'node:net';
import { createDebug } from '../log';
import type { WebSocket, WebSocketServer } from 'ws';
import type { AdoptedProtocolConnection, MoveAnswer, ProtocolAdapter } from './contract';
import {
  buildWebSocket,
  bytesToNextStep,
  compressionCanMove,
  deflateParams,
  internals,
  isOpen,
  letGo,
  receiverAtBoundary,
  senderIdle,
  takeUnparsedBytes,
  wsProblems,
  wsSocketListener,
  type NegotiatedWebSocket,
  type ReceiverInternals,
} from './ws-runtime';

const debug = createDebug('handover:ws');

/** Close code 1012 (Service Restart): a WebSocket that cannot move is closed with it, never left to a 1006. */
export const SERVICE_RESTART = 1012;

/** The most the upgrade request's headers take in a moved WebSocket's state (JSON); larger ones stay behind. */
const MAX_HEADERS_BYTES = 8 * 1024;

/** How often a connection whose sender is in the middle of a message looks again (only while it waits to move). */
const SENDER_RECHECK_MS = 2;

export interface WebSocketAdapterOptions {
  /**
   * Predecessor: `ws` is at a frame boundary and moves now. Stop everything that sends on it by
   * itself (timers, subscriptions) and return the state the successor needs to continue it (small,
   * JSON); the successor's 'connection' receives it as its third argument.
   */
  onMove?(ws: WebSocket): unknown;
  /** Predecessor: the move failed (the successor died or refused it): `ws` is served here again; restart what onMove stopped. */
  onStay?(ws: WebSocket): void;
  /**
   * Predecessor: resolves once this process will send no more on a moved `ws` (replies still being
   * computed when it moved). Until then its sends are forwarded to the client through the
   * successor, in order; then it reads as CLOSED. Default: none; a moved `ws` is CLOSED here at
   * once and sends on it fail as on a closed WebSocket.
   */
  whenIdle?(ws: WebSocket): PromiseLike<unknown> | void;
}

/** The state a moved WebSocket carries; the successor tells its WebSockets from plain HTTP connections by it. */
interface MovedState {
  ws: NegotiatedWebSocket;
  app?: unknown;
}

function isMovedState(state: unknown): state is MovedState {
  const ws = (state as Partial<MovedState> | null | undefined)?.ws;
  return typeof ws === 'object' && ws !== null && typeof ws.protocol === 'string' && typeof ws.url === 'string';
}

type Listener = (...args: unknown[]) => void;
const WS_SOCKET_EVENTS = ['close', 'data', 'end', 'error'] as const;

/** A WebSocket being fed by hand to its next frame boundary (its socket's bytes go through `queue`). */
interface ReadingOn {
  socketOnData: Listener;
  queue: Buffer;
  busy: boolean;
  /** At a boundary with the sender idle: the next prepareMove() moves it. */
  ready: boolean;
  stop(): void;
}

function noop(): void {}

/**
 * WebSocketAdapter: the ProtocolAdapter of an http.Server's WebSockets. Plain HTTP connections are
 * answered `later` and left to the built-in HTTP adapter; one that becomes a WebSocket during the
 * retirement is asked about again.
 */
export class WebSocketAdapter implements ProtocolAdapter<unknown> {
  private readonly bySocket = new WeakMap<net.Socket, WebSocket>();
  private readonly upgrades = new WeakMap<WebSocket, { url: string; headers: http.IncomingHttpHeaders }>();
  private readonly askAgainFor = new WeakMap<net.Socket, () => void>();
  private readonly readingOn = new Map<net.Socket, ReadingOn>();
  /** ws's own socket listeners while the socket travels (put back if it stays). */
  private readonly detached = new WeakMap<net.Socket, Map<string, Listener>>();
  /** What whenIdle() answered for a WebSocket on its way: its sends are late writes until it settles. */
  private readonly lateWrites = new WeakMap<WebSocket, PromiseLike<unknown>>();
  /** The WebSockets this process holds (not moved). */
  readonly open = new Set<WebSocket>();

  constructor(
    private readonly wss: WebSocketServer,
    private readonly options: WebSocketAdapterOptions = {},
  ) {
    wss.prependListener('connection', (ws: WebSocket, request: http.IncomingMessage) => {
      const socket = internals(ws)._socket;
      if (!socket) return;
      // Over TLS (wss://) ws reads a TLSSocket; the library asks about the TCP socket under it.
      const parent = (socket as net.Socket & { _parent?: unknown })._parent;
      const transport = parent instanceof net.Socket ? parent : socket;
      this.bySocket.set(socket, ws);
      this.bySocket.set(transport, ws);
      this.upgrades.set(ws, { url: request.url ?? '/', headers: request.headers });
      this.open.add(ws);
      ws.once('close', () => this.open.delete(ws));
      // An HTTP connection asked about during the retirement just became a WebSocket: ask again,
      // once the application's own 'connection' handler has set it up.
      const askAgain = this.askAgainFor.get(transport);
      if (askAgain) setImmediate(askAgain);
    });
  }

  /** The WebSocket on `socket`, if it is one of this server's. */
  webSocketOf(socket: net.Socket): WebSocket | undefined {
    return this.bySocket.get(socket);
  }

  prepareMove(socket: net.Socket, askAgain: () => void): MoveAnswer<unknown> {
    this.askAgainFor.set(socket, askAgain);
    const ws = this.bySocket.get(socket);
    if (!ws) return { move: 'later' }; // plain HTTP (the built-in adapter's), or not upgraded yet
    if (!isOpen(ws)) return { move: 'never', reason: 'the WebSocket is closing' };
    const reading = this.readingOn.get(socket);
    if (reading) {
      // Asked again while it is fed by hand: it moves once at its boundary.
      if (!reading.ready) return { move: 'later' };
      reading.stop();
      return this.moveNow(ws, socket, reading.socketOnData, reading.queue);
    }
    if (socket !== internals(ws)._socket || (socket as net.Socket & { encrypted?: boolean }).encrypted) return { move: 'never', reason: 'wss:// (TLS): its session cannot move' };
    const problems = wsProblems(ws);
    if (problems.length > 0) return { move: 'never', reason: `this ws lacks ${problems.join(', ')}` };
    if (!compressionCanMove(deflateParams(ws))) return { move: 'never', reason: 'permessage-deflate with context takeover: its compression context cannot move' };
    const receiver = internals(ws)._receiver!;
    if (receiverAtBoundary(receiver) && senderIdle(ws)) return this.moveNow(ws, socket, wsSocketListener(socket, 'data')!, Buffer.alloc(0));
    this.readOn(ws, socket, receiver, askAgain);
    return { move: 'later' };
  }

  /** moveNow: in the tick of the answer: the application's state, ws's listeners off the socket, the unparsed bytes out of the receiver. */
  private moveNow(ws: WebSocket, socket: net.Socket, socketOnData: Listener, tail: Buffer): MoveAnswer<unknown> {
    const app = this.options.onMove?.(ws); // a throw here is the contract's `never`; nothing changed yet
    const listeners = new Map<string, Listener>([['data', socketOnData]]);
    socket.removeListener('data', socketOnData);
    for (const event of WS_SOCKET_EVENTS) {
      const listener = wsSocketListener(socket, event);
      if (!listener) continue;
      listeners.set(event, listener);
      socket.removeListener(event, listener);
    }
    socket.on('error', noop);
    this.detached.set(socket, listeners);
    const upgrade = this.upgrades.get(ws) ?? { url: '/', headers: {} };
    // The state travels in at most 16 KiB: the request headers go with it when they leave room for the rest.
    const headers = JSON.stringify(upgrade.headers).length <= MAX_HEADERS_BYTES ? upgrade.headers : {};
    const negotiated: NegotiatedWebSocket = { protocol: ws.protocol, deflate: deflateParams(ws), url: upgrade.url, headers, binaryType: ws.binaryType, paused: ws.isPaused };
    const pending = Buffer.concat([takeUnparsedBytes(internals(ws)._receiver!), tail]);
    const state: MovedState = app === undefined ? { ws: negotiated } : { ws: negotiated, app };
    const idle = this.options.whenIdle?.(ws);
    if (!idle) return { move: 'now', pending, state };
    this.lateWrites.set(ws, idle);
    return { move: 'now', pending, state, lateWrites: idle };
  }

  /**
   * readOn: bytes reach the receiver only through here, never past the end of the step of the frame
   * it is in; once it is between two messages (and the sender too), it is asked about again.
   */
  private readOn(ws: WebSocket, socket: net.Socket, receiver: ReceiverInternals, askAgain: () => void): void {
    const socketOnData = wsSocketListener(socket, 'data')!;
    const reading: ReadingOn = { socketOnData, queue: Buffer.alloc(0), busy: false, ready: false, stop: () => stop() };
    const stop = (): void => {
      this.readingOn.delete(socket);
      socket.removeListener('data', onData);
      socket.removeListener('close', stop);
    };
    // It did not move at its boundary (the retirement is over): the receiver gets what was read, as before.
    const giveBack = (): void => {
      stop();
      if (!isOpen(ws) || socket.destroyed) return;
      if (reading.queue.length > 0) receiver.write(reading.queue);
      socket.on('data', socketOnData);
      if (!ws.isPaused) socket.resume();
    };
    const later = (then: () => void, timer: boolean): void => {
      socket.pause();
      reading.busy = true;
      const go = (): void => {
        reading.busy = false;
        then();
      };
      if (timer) setTimeout(go, SENDER_RECHECK_MS);
      else setImmediate(go);
    };
    const pump = (): void => {
      if (reading.busy || !this.readingOn.has(socket)) return;
      if (!isOpen(ws) || socket.destroyed) return giveBack();
      if (receiverAtBoundary(receiver)) {
        // A message being deflated or sent in fragments goes out whole first.
        if (!senderIdle(ws)) return later(pump, true);
        socket.pause();
        reading.ready = true;
        askAgain();
        if (this.readingOn.has(socket)) giveBack(); // not taken: nobody asks any more
        return;
      }
      const need = bytesToNextStep(receiver);
      if (need === 0) return later(pump, false); // inflating, or a deferred event: it finishes first
      if (reading.queue.length === 0) {
        socket.resume();
        return;
      }
      socket.pause();
      const slice = reading.queue.subarray(0, need);
      reading.queue = reading.queue.subarray(need);
      reading.busy = true;
      receiver.write(slice, (err) => {
        reading.busy = false;
        if (err) return giveBack();
        pump();
      });
    };
    const onData = (chunk: Buffer): void => {
      reading.queue = reading.queue.length > 0 ? Buffer.concat([reading.queue, chunk]) : chunk;
      pump();
    };
    this.readingOn.set(socket, reading);
    debug('a WebSocket is mid-frame: reading on to its boundary');
    socket.removeListener('data', socketOnData);
    socket.on('data', onData);
    socket.once('close', stop);
    pump();
  }

  resume(socket: net.Socket, pending: Buffer): void {
    const ws = this.bySocket.get(socket);
    const listeners = this.detached.get(socket);
    this.detached.delete(socket);
    if (ws) this.lateWrites.delete(ws);
    if (!ws || !listeners) {
      // Not one of ours (a plain HTTP connection): the default.
      if (pending.length > 0) socket.unshift(pending);
      socket.resume();
      return;
    }
    socket.removeListener('error', noop);
    for (const [event, listener] of listeners) if (event !== 'data') socket.on(event, listener);
    if (socket.destroyed) return;
    // The receiver gets back what it handed over, then the socket's bytes.
    if (pending.length > 0) internals(ws)._receiver!.write(pending);
    socket.on('data', listeners.get('data')!);
    this.options.onStay?.(ws);
    if (!ws.isPaused) socket.resume();
  }

  drain(socket: net.Socket): void {
    const ws = this.bySocket.get(socket);
    // The close frame queues behind the messages being sent: they are written first.
    if (ws && isOpen(ws)) {
      debug('closing a WebSocket with 1012 (it cannot move)');
      ws.close(SERVICE_RESTART, 'service restart');
    }
  }

  moved(socket: net.Socket): void {
    const ws = this.bySocket.get(socket);
    this.detached.delete(socket);
    if (!ws) return;
    // This generation no longer holds it: its broadcasts (wss.clients) skip it from now on.
    this.open.delete(ws);
    (this.wss.clients as Set<WebSocket> | undefined)?.delete(ws);
    // Until whenIdle settles, its sends are late writes; then it reads as CLOSED here.
    const idle = this.lateWrites.get(ws);
    this.lateWrites.delete(ws);
    if (idle) idle.then(() => letGo(ws), () => letGo(ws));
    else letGo(ws);
  }

  /**
   * adopt (successor): a moved WebSocket is rebuilt on its socket and emitted as 'connection' on
   * the WebSocketServer with (ws, request, state); any other connection goes to the HTTP server.
   */
  adopt(socket: net.Socket, connection: AdoptedProtocolConnection<unknown>): void {
    const state = connection.state;
    if (!isMovedState(state)) {
      // Not a WebSocket this adapter moved (the library routes only those here): the HTTP server's, if any.
      if (connection.pending.length > 0) socket.unshift(connection.pending);
      (this.wss.options.server as net.Server | undefined)?.emit('connection', socket);
      socket.resume();
      return;
    }
    const { ws, request } = buildWebSocket(this.wss, socket, connection.pending, state.ws);
    debug('adopted a WebSocket (%s, %s)', state.ws.url, state.ws.deflate ? 'compressed' : 'uncompressed');
    this.wss.emit('connection', ws, request, state.app);
    // A WebSocket the application had paused stays paused until it calls ws.resume().
    if (state.ws.paused === true && !ws.isPaused) ws.pause();
    if (!ws.isPaused) socket.resume();
  }
}

/**
 * webSocketAdapter: the ProtocolAdapter that moves the WebSockets of `wss` at upgrades. Give it to
 * listen() for the HTTP server the WebSocketServer is attached to, in every generation:
 *
 *   const wss = new WebSocketServer({ server, path: '/ws' });
 *   const protocol = webSocketAdapter(wss, { onMove: (ws) => ({ n: ws.n }) });
 *   await upgrader.listen(server, { port }, { protocol });
 *   wss.on('connection', (ws, req, state) => { ws.n = state?.n ?? 0; });
 */
export function webSocketAdapter(wss: WebSocketServer, options?: WebSocketAdapterOptions): WebSocketAdapter {
  return new WebSocketAdapter(wss, options);
}
