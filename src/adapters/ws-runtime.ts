// The internals of the `ws` package a move reads, in one place (as src/runtime.ts does for Node's):
// where a WebSocket's receiver stands in the frame it is parsing and which bytes it has not parsed
// yet, whether its sender is between two messages, the negotiated compression, and building a
// server-side WebSocket on a socket that is already open. Read from ws 8's lib/receiver.js,
// lib/sender.js, lib/websocket.js and lib/websocket-server.js (completeUpgrade).
import * as http from 'node:http';
import type * as net from 'node:net';
import type { WebSocket, WebSocketServer } from 'ws';

/** Receiver states (lib/receiver.js). */
const GET_INFO = 0;
const GET_PAYLOAD_LENGTH_16 = 1;
const GET_PAYLOAD_LENGTH_64 = 2;
const GET_MASK = 3;
const GET_DATA = 4;

/** Sender state between two messages (lib/sender.js DEFAULT; DEFLATING and GET_BLOB_DATA are busy). */
const SENDER_DEFAULT = 0;

/** WebSocket.OPEN / CLOSED. */
const OPEN = 1;
const CLOSED = 3;

const DEFLATE = 'permessage-deflate';

export interface ReceiverInternals {
  _state: number;
  _fragmented: number;
  _bufferedBytes: number;
  _buffers: Buffer[];
  _payloadLength: number;
  _errored: boolean;
  writableLength: number;
  write(chunk: Buffer, cb?: (err?: Error | null) => void): boolean;
  removeAllListeners(): this;
}

interface SenderInternals {
  _state: number;
  _queue: unknown[];
  _firstFragment: boolean;
}

export interface DeflateInternals {
  params: Record<string, boolean | number> | null;
  cleanup(): void;
}

/** The fields of a ws WebSocket a move reads or sets. */
export interface WebSocketInternals {
  _socket: net.Socket | null;
  _receiver: ReceiverInternals | null;
  _sender: SenderInternals | null;
  _extensions: Record<string, DeflateInternals | undefined>;
  _protocol: string;
  _readyState: number;
  _closeTimer: NodeJS.Timeout | null;
  _isServer: boolean;
}

/** The negotiated parts of a WebSocket connection that travel with it (JSON). */
export interface NegotiatedWebSocket {
  protocol: string;
  /** The accepted permessage-deflate parameters, or null without compression. */
  deflate: Record<string, boolean | number> | null;
  /** The upgrade request, as far as an application may read it again. */
  url: string;
  headers: http.IncomingHttpHeaders;
  /** ws.binaryType and ws.isPaused, as the application left them. */
  binaryType?: string;
  paused?: boolean;
}

export function internals(ws: WebSocket): WebSocketInternals {
  return ws as unknown as WebSocketInternals;
}

/** wsProblems: what this ws lacks that a move reads (an empty list on ws 8). */
export function wsProblems(ws: WebSocket): string[] {
  const { _receiver: receiver, _sender: sender, _socket: socket } = internals(ws);
  const problems: string[] = [];
  if (!socket) problems.push('WebSocket#_socket');
  if (!receiver || typeof receiver._state !== 'number' || typeof receiver._fragmented !== 'number' || !Array.isArray(receiver._buffers) || typeof receiver._bufferedBytes !== 'number') problems.push('Receiver#_state/_fragmented/_buffers');
  if (!sender || typeof sender._state !== 'number' || !Array.isArray(sender._queue)) problems.push('Sender#_state/_queue');
  if (socket && !wsSocketListener(socket, 'data')) problems.push('the socket\'s socketOnData listener');
  return problems;
}

/**
 * receiverAtBoundary: the receiver is between two messages: no frame begun past its first byte,
 * no fragmented message begun, nothing waiting to be parsed or being inflated. The bytes it holds
 * then (at most one: the first of the next frame) are all it has not parsed.
 */
export function receiverAtBoundary(receiver: ReceiverInternals): boolean {
  return receiver._state === GET_INFO && receiver._fragmented === 0 && receiver.writableLength === 0 && receiver._bufferedBytes < 2 && !receiver._errored;
}

/**
 * bytesToNextStep: how many more bytes complete the step the receiver is in (the frame's first two
 * bytes, its extended length, its mask, its payload). Feeding at most that many never passes the
 * end of the frame; 0 when it is busy (inflating, or a deferred event) and must be waited for.
 */
export function bytesToNextStep(receiver: ReceiverInternals): number {
  if (receiver.writableLength > 0) return 0;
  const have = receiver._bufferedBytes;
  switch (receiver._state) {
    case GET_INFO:
    case GET_PAYLOAD_LENGTH_16:
      return Math.max(2 - have, 1);
    case GET_PAYLOAD_LENGTH_64:
      return Math.max(8 - have, 1);
    case GET_MASK:
      return Math.max(4 - have, 1);
    case GET_DATA:
      return Math.max(receiver._payloadLength - have, 1);
    default:
      return 0;
  }
}

/** takeUnparsedBytes: what the receiver holds but has not parsed (at a boundary: at most the next frame's first byte), taken out of it. */
export function takeUnparsedBytes(receiver: ReceiverInternals): Buffer {
  const bytes = Buffer.concat(receiver._buffers);
  receiver._buffers = [];
  receiver._bufferedBytes = 0;
  return bytes;
}

/** senderIdle: no frame half-sent, no message half-sent (fragments), nothing deflating or queued. */
export function senderIdle(ws: WebSocket): boolean {
  const sender = internals(ws)._sender;
  return sender !== null && sender._state === SENDER_DEFAULT && sender._queue.length === 0 && sender._firstFragment !== false;
}

export function isOpen(ws: WebSocket): boolean {
  return internals(ws)._readyState === OPEN;
}

/** deflateParams: the accepted permessage-deflate parameters, or null when not negotiated. */
export function deflateParams(ws: WebSocket): Record<string, boolean | number> | null {
  return internals(ws)._extensions[DEFLATE]?.params ?? null;
}

/**
 * compressionCanMove: only without context takeover on both sides does a message boundary leave
 * no compression state behind (each message is deflated and inflated on its own); a sliding
 * window of past messages lives in zlib and cannot be handed over.
 */
export function compressionCanMove(params: Record<string, boolean | number> | null): boolean {
  return params === null || (params.server_no_context_takeover === true && params.client_no_context_takeover === true);
}

/** wsSocketListener: the listener ws's setSocket() added to the socket for `event` (socketOnData, ...). */
export function wsSocketListener(socket: net.Socket, event: 'data' | 'close' | 'end' | 'error'): ((...args: unknown[]) => void) | undefined {
  const name = `socketOn${event[0]!.toUpperCase()}${event.slice(1)}`;
  return socket.listeners(event).find((fn) => (fn as { name?: string }).name === name) as ((...args: unknown[]) => void) | undefined;
}

/**
 * letGo: the connection belongs to the successor now: this process's WebSocket forgets its socket
 * without emitting 'close' (nothing closed for the client), and reads as CLOSED from here on.
 */
export function letGo(ws: WebSocket): void {
  const own = internals(ws);
  const socket = own._socket;
  if (socket) {
    for (const event of ['close', 'data', 'end', 'error'] as const) {
      const listener = wsSocketListener(socket, event);
      if (listener) socket.removeListener(event, listener);
    }
    // ws's own error handler is gone: a late error on the forwarder must not throw.
    socket.on('error', () => undefined);
  }
  clearTimeout(own._closeTimer ?? undefined);
  own._receiver?.removeAllListeners();
  own._extensions[DEFLATE]?.cleanup();
  own._readyState = CLOSED;
}

/** The options of WebSocketServer a rebuilt WebSocket takes (lib/websocket-server.js). */
interface ServerOptions {
  WebSocket: (new (address: null, protocols: undefined, options: object) => WebSocket) & { PerMessageDeflate?: new (options: object) => DeflateInternals };
  perMessageDeflate: false | object;
  allowSynchronousEvents?: boolean;
  maxBufferedChunks?: number;
  maxFragments?: number;
  maxPayload?: number;
  skipUTF8Validation?: boolean;
  clientTracking?: boolean;
}

/**
 * buildWebSocket: what WebSocketServer#completeUpgrade does after the handshake, on a socket whose
 * handshake happened in another process: a server-side WebSocket with the negotiated subprotocol
 * and compression parameters, `pending` parsed first, tracked in `wss.clients`. The socket starts
 * reading when the caller resumes it. Returns the WebSocket and a request that carries the
 * original upgrade request's url and headers.
 */
export function buildWebSocket(wss: WebSocketServer, socket: net.Socket, pending: Buffer, negotiated: NegotiatedWebSocket): { ws: WebSocket; request: http.IncomingMessage } {
  const options = (wss as unknown as { options: ServerOptions }).options;
  const ws = new options.WebSocket(null, undefined, options);
  const own = internals(ws);
  own._protocol = negotiated.protocol;
  if (negotiated.deflate) {
    // ws's CommonJS entry hangs it on WebSocket; its ESM entry does not: then the package's own.
    const PerMessageDeflate = options.WebSocket.PerMessageDeflate ?? (require('ws') as { PerMessageDeflate?: NonNullable<ServerOptions['WebSocket']['PerMessageDeflate']> }).PerMessageDeflate;
    if (!PerMessageDeflate) throw new Error('this ws has no PerMessageDeflate to resume a compressed connection');
    const deflate = new PerMessageDeflate({ ...(options.perMessageDeflate || {}), isServer: true, maxPayload: options.maxPayload });
    // The parameters both ends accepted in the original handshake, not a new negotiation.
    deflate.params = negotiated.deflate;
    own._extensions = { [DEFLATE]: deflate };
  }
  (ws as unknown as { setSocket(socket: net.Socket, head: Buffer, options: object): void }).setSocket(socket, pending, {
    allowSynchronousEvents: options.allowSynchronousEvents,
    maxBufferedChunks: options.maxBufferedChunks,
    maxFragments: options.maxFragments,
    maxPayload: options.maxPayload,
    skipUTF8Validation: options.skipUTF8Validation,
  });
  if (typeof negotiated.binaryType === 'string') ws.binaryType = negotiated.binaryType as WebSocket['binaryType'];
  const clients = (wss as unknown as { clients?: Set<WebSocket> }).clients;
  if (clients) {
    clients.add(ws);
    ws.on('close', () => clients.delete(ws));
  }
  const request = new http.IncomingMessage(socket);
  request.method = 'GET';
  request.url = negotiated.url;
  request.headers = negotiated.headers;
  request.httpVersion = '1.1';
  request.httpVersionMajor = 1;
  request.httpVersionMinor = 1;
  request.complete = true;
  return { ws, request };
}
