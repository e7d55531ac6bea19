// handover/ws: the WebSocket connections of a `ws` WebSocketServer move to the successor between
// two frames, with the bytes their receiver has not parsed yet and the state the application
// attaches; the successor builds a WebSocket on each adopted socket with the negotiated subprotocol
// and compression, and emits it as 'connection'. The ws internals it reads: ./ws-runtime.ts.
import type * as http from 'node:http';
import type * as net from 'node:net';
import createDebug from 'debug';
import type { WebSocket, WebSocketServer } from 'ws';
import type { Upgrader } from '../upgrader';
import type { AdoptedConnection } from '../connections';
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
  unparsedBytes,
  wsProblems,
  wsSocketListener,
  type NegotiatedWebSocket,
} from './ws-runtime';

const debug = createDebug('handover:ws');

/** Close code 1012 (Service Restart): a WebSocket whose state cannot move is closed with it, never left to 1006. */
export const SERVICE_RESTART = 1012;

/** How often a connection whose sender is in the middle of a message looks again (only while retiring). */
const SENDER_RECHECK_MS = 2;

export interface WebSocketHandoverOptions {
  /** The http.Server the upgrade requests come through. Default: the WebSocketServer's `server` option (required with `noServer`). */
  server?: http.Server;
  /**
   * Predecessor: `ws` is at a frame boundary and moves now. Stop everything that sends on it by
   * itself (timers, subscriptions) and return the state the successor needs to continue it (small,
   * JSON). Sends made on `ws` from here on are forwarded, in order, to the successor.
   */
  onMove?(ws: WebSocket): unknown;
  /** Predecessor: the move failed (the successor died or refused it) and `ws` is served here again: restart what onMove stopped. */
  onStay?(ws: WebSocket): void;
  /**
   * Predecessor: resolves once this process will send no more on a moved `ws` (replies still being
   * computed when it moved). Until then sends are forwarded; then this process lets go of it.
   * Default: it lets go right after the move.
   */
  whenIdle?(ws: WebSocket): Promise<void> | void;
}

/** The state a moved WebSocket carries (the successor's adopt tells its connections from plain HTTP ones by it). */
interface MovedState {
  ws: NegotiatedWebSocket;
  app: unknown;
}

function isMovedState(state: unknown): state is MovedState {
  return typeof state === 'object' && state !== null && typeof (state as MovedState).ws === 'object' && (state as MovedState).ws !== null && typeof (state as MovedState).ws.protocol === 'string';
}

/**
 * WebSocketHandover moves the open WebSockets of one WebSocketServer at retirement, and adopts the
 * ones a predecessor moves here. Create it in every generation with handoverWebSockets().
 */
export class WebSocketHandover {
  private readonly upgrades = new WeakMap<WebSocket, { url: string; headers: http.IncomingHttpHeaders }>();
  private readonly open = new Set<WebSocket>();
  private retiring = false;
  readonly server: http.Server | undefined;

  constructor(
    private readonly upgrader: Upgrader,
    private readonly wss: WebSocketServer,
    private readonly options: WebSocketHandoverOptions = {},
  ) {
    this.server = options.server ?? (wss.options.server as http.Server | undefined) ?? undefined;
    wss.prependListener('connection', (ws: WebSocket, request: http.IncomingMessage) => {
      this.upgrades.set(ws, { url: request.url ?? '/', headers: request.headers });
      this.open.add(ws);
      ws.once('close', () => this.open.delete(ws));
      if (this.retiring) setImmediate(() => this.retireOne(ws));
    });
    upgrader.on('retiring', () => this.retire());
    upgrader.on('rollback', () => {
      this.retiring = false;
    });
  }

  /** How many WebSockets this process holds (open, not moved). */
  get size(): number {
    return this.open.size;
  }

  /**
   * adopt: the successor's half, for `listen(server, target, { adopt })`. A moved WebSocket is
   * rebuilt and emitted as 'connection' on the WebSocketServer with (ws, request, state); any
   * other connection goes to the HTTP server as an accepted one would.
   */
  readonly adopt = (socket: net.Socket, connection: AdoptedConnection): void => {
    const state = connection.state;
    if (!isMovedState(state)) {
      if (connection.pending.length > 0) socket.unshift(connection.pending);
      this.server?.emit('connection', socket);
      socket.resume();
      return;
    }
    const { ws, request } = buildWebSocket(this.wss, socket, connection.pending, state.ws);
    debug('adopted a WebSocket (%s, %s)', state.ws.url, state.ws.deflate ? 'compressed' : 'uncompressed');
    this.wss.emit('connection', ws, request, state.app);
    socket.resume();
  };

  /** retire: every open WebSocket moves at its next frame boundary, or is closed with 1012 if it cannot move. */
  private retire(): void {
    this.retiring = true;
    for (const ws of [...this.open]) this.retireOne(ws);
  }

  private retireOne(ws: WebSocket): void {
    if (!this.retiring || !this.open.has(ws) || !isOpen(ws)) return; // closing: it ends by itself
    const problems = wsProblems(ws);
    if (problems.length > 0) {
      debug('cannot move a WebSocket (this ws lacks %s); closing it with 1012', problems.join(', '));
      this.closeForRestart(ws);
      return;
    }
    if (!compressionCanMove(deflateParams(ws))) {
      this.closeForRestart(ws);
      return;
    }
    this.toBoundary(ws);
  }

  /** closeForRestart: 1012 after the messages already being sent (the close frame queues behind them). */
  private closeForRestart(ws: WebSocket): void {
    debug('closing a WebSocket with 1012 (its state cannot move)');
    ws.close(SERVICE_RESTART, 'service restart');
  }

  /**
   * toBoundary: bytes reach the receiver only through here, never past the end of the frame it
   * is in; once it is between two messages (and the sender too), the connection moves with what
   * was read beyond.
   */
  private toBoundary(ws: WebSocket): void {
    const own = internals(ws);
    const socket = own._socket!;
    const receiver = own._receiver!;
    const socketOnData = wsSocketListener(socket, 'data')!;
    socket.removeListener('data', socketOnData);
    let queue: Buffer = Buffer.alloc(0);
    let busy = false;
    let done = false;
    const finish = (): void => {
      done = true;
      socket.removeListener('data', onData);
      socket.removeListener('close', giveBack);
    };
    // Not moving after all (closing, an error): the receiver gets what was read, as before.
    const giveBack = (): void => {
      if (done) return;
      finish();
      if (!isOpen(ws) || socket.destroyed) return;
      if (queue.length > 0) receiver.write(queue);
      socket.on('data', socketOnData);
      if (!ws.isPaused) socket.resume();
    };
    const pump = (): void => {
      if (done || busy) return;
      if (!this.retiring || !isOpen(ws) || socket.destroyed) return giveBack();
      if (receiverAtBoundary(receiver)) {
        socket.pause();
        if (!senderIdle(ws)) {
          // A message is being deflated or sent in fragments: it goes out whole first.
          busy = true;
          setTimeout(() => {
            busy = false;
            pump();
          }, SENDER_RECHECK_MS);
          return;
        }
        finish();
        this.move(ws, socketOnData, queue);
        return;
      }
      const need = bytesToNextStep(receiver);
      if (need === 0) {
        // Inflating or emitting: the receiver finishes what it has first.
        socket.pause();
        busy = true;
        setImmediate(() => {
          busy = false;
          pump();
        });
        return;
      }
      if (queue.length === 0) {
        socket.resume();
        return;
      }
      socket.pause();
      const slice = queue.subarray(0, need);
      queue = queue.subarray(need);
      busy = true;
      receiver.write(slice, (err) => {
        busy = false;
        if (err) return giveBack();
        pump();
      });
    };
    const onData = (chunk: Buffer): void => {
      queue = queue.length > 0 ? Buffer.concat([queue, chunk]) : chunk;
      pump();
    };
    socket.on('data', onData);
    socket.once('close', giveBack);
    pump();
  }

  /** move: at a frame boundary, in one tick: the application's state, then the transfer. */
  private move(ws: WebSocket, socketOnData: (...args: unknown[]) => void, tail: Buffer): void {
    const own = internals(ws);
    const socket = own._socket!;
    const receiver = own._receiver!;
    const upgrade = this.upgrades.get(ws) ?? { url: '/', headers: {} };
    const negotiated: NegotiatedWebSocket = { protocol: ws.protocol, deflate: deflateParams(ws), url: upgrade.url, headers: upgrade.headers };
    // The receiver keeps its own bytes: if the move fails it simply goes on from there.
    const pending = Buffer.concat([unparsedBytes(receiver), tail]);
    let app: unknown;
    try {
      app = this.options.onMove?.(ws);
    } catch (err) {
      debug('onMove threw (%s); the WebSocket stays', (err as Error).message);
      this.stay(ws, socketOnData, tail);
      return;
    }
    const state: MovedState = { ws: negotiated, app };
    this.upgrader.transferConnection(socket, { pending, state, lateWrites: true }).then(
      () => this.moved(ws),
      (err: Error & { code?: string }) => {
        debug('a WebSocket stays: %s', err.message);
        this.stay(ws, socketOnData, tail);
        this.options.onStay?.(ws);
        // Refused while still retiring: it cannot stay open past this process's exit.
        if (this.retiring && this.upgrader.state === 'retiring' && isOpen(ws)) this.closeForRestart(ws);
      },
    );
  }

  /** stay: the receiver gets the bytes read past its boundary, then the socket again. */
  private stay(ws: WebSocket, socketOnData: (...args: unknown[]) => void, tail: Buffer): void {
    const own = internals(ws);
    const socket = own._socket;
    if (!socket || socket.destroyed || !isOpen(ws)) return;
    if (tail.length > 0) own._receiver!.write(tail);
    socket.on('data', socketOnData);
    if (!ws.isPaused) socket.resume();
  }

  /** moved: the successor owns it. This generation no longer holds it (broadcasts skip it); late sends are forwarded until whenIdle. */
  private moved(ws: WebSocket): void {
    this.open.delete(ws);
    (this.wss.clients as Set<WebSocket> | undefined)?.delete(ws);
    const socket = internals(ws)._socket!;
    const release = (): void => {
      letGo(ws);
      // end(): late sends still queued go first; then the forwarder closes (nothing reaches the client).
      if (socket.writableLength === 0) socket.destroy();
      else socket.end();
    };
    let idle: Promise<void> | void;
    try {
      idle = this.options.whenIdle?.(ws);
    } catch {
      idle = undefined;
    }
    if (idle && typeof idle.then === 'function') idle.then(release, release);
    else release();
  }
}

/**
 * handoverWebSockets makes the WebSockets of `wss` survive upgrades: create it in every generation
 * after createUpgrader(), and give its `adopt` to listen() for the HTTP server:
 *
 *   const wss = new WebSocketServer({ server, path: '/ws' });
 *   const sockets = handoverWebSockets(upgrader, wss, { onMove: (ws) => ({ n: ws.n }) });
 *   await upgrader.listen(server, { port }, { adopt: sockets.adopt });
 *   wss.on('connection', (ws, req, state) => { ws.n = state?.n ?? 0; });
 */
export function handoverWebSockets(upgrader: Upgrader, wss: WebSocketServer, options?: WebSocketHandoverOptions): WebSocketHandover {
  return new WebSocketHandover(upgrader, wss, options);
}
