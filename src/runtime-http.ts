// The HTTP half of src/runtime.ts (split off to keep each under ~350 lines): the Node internals the
// HTTP adapter reads (lib/_http_server.js, lib/_http_common.js, src/node_http_parser.cc), Node 20-26.
import * as http from 'node:http';
import type * as net from 'node:net';

/** The C++ HTTP parser of a server connection (internalBinding('http_parser').HTTPParser). */
export interface HttpParser {
  [index: number]: unknown;
  socket: net.Socket | null;
  incoming: (http.IncomingMessage & { complete: boolean }) | null;
  unconsume(): void;
}

/** The server's internal list of HTTP parsers (Node >= 18.2), which knows which are between messages. */
export interface HttpConnectionsList {
  idle(): HttpParser[];
  expired(headersTimeout: number, requestTimeout: number): HttpParser[];
}

/** Indices of the parser's JS callbacks (HTTPParser.kOnBody, kOnMessageComplete, kOnExecute; stable since Node 12). */
export const kOnBody = 3;
export const kOnMessageComplete = 4;
export const kOnExecute = 5;

/** httpConnectionsList: the server's ConnectionsList (exists once the server listens), or undefined. */
export function httpConnectionsList(server: http.Server): HttpConnectionsList | undefined {
  const symbol = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connections');
  const list = symbol ? (server as unknown as Record<symbol, unknown>)[symbol] : undefined;
  return list && typeof (list as HttpConnectionsList).idle === 'function' ? (list as HttpConnectionsList) : undefined;
}

/** httpMessage: the response in flight on a server socket (pipelined ones queue behind it), or null. */
export function httpMessage(socket: net.Socket): (http.ServerResponse & { finished?: boolean }) | null {
  return (socket as unknown as { _httpMessage?: (http.ServerResponse & { finished?: boolean }) | null })._httpMessage ?? null;
}

/** httpParser: the connection's parser; null once the connection left HTTP (upgrade, CONNECT) or closed. */
export function httpParser(socket: net.Socket): HttpParser | null {
  const parser = (socket as unknown as { parser?: HttpParser | null }).parser;
  return parser && typeof parser === 'object' ? parser : null;
}

/** parserRequest: the request a parser is reading or read last (IncomingMessage; `complete` once its body ended). */
export function parserRequest(parser: HttpParser): (http.IncomingMessage & { complete: boolean }) | null {
  return parser.incoming ?? null;
}

/**
 * parserCallback / setParserCallback: the parser's JS callbacks, by index (see kOnBody). Node 26
 * reads them once per connection, at the parser's first execute: set them at 'connection'.
 */
export function parserCallback(parser: HttpParser, index: number): ((...args: unknown[]) => unknown) | undefined {
  const callback = parser[index];
  return typeof callback === 'function' ? (callback as (...args: unknown[]) => unknown) : undefined;
}

export function setParserCallback(parser: HttpParser, index: number, callback: (this: HttpParser, ...args: never[]) => unknown): void {
  parser[index] = callback;
}

/** stopConsuming: bytes stop going from the handle straight into the parser and reach the stream ('data') instead, as for an upgrade. */
export function stopConsuming(parser: HttpParser): boolean {
  if (typeof parser.unconsume !== 'function') return false;
  parser.unconsume();
  return true;
}

/** serverDataListener: the http server's own 'data' listener on a connection (socketOnData), which feeds its parser. */
export function serverDataListener(socket: net.Socket): ((chunk: Buffer) => void) | undefined {
  return socket.listeners('data').find((fn) => fn.name === 'bound socketOnData') as ((chunk: Buffer) => void) | undefined;
}

/** checkHttpInternals (runtime's self-test): the connections list, on an http.Server that never listens. */
export function checkHttpInternals(problems: string[]): void {
  const server = http.createServer();
  // The list is created when the server starts listening; 'listening' alone sets it up.
  server.emit('listening');
  const list = httpConnectionsList(server);
  if (!list) problems.push("http.Server has no 'http.server.connections' list");
  else if (typeof list.expired !== 'function') problems.push("http.Server's connections list has no expired()");
  const interval = Object.getOwnPropertySymbols(server).find((s) => s.description === 'http.server.connectionsCheckingInterval');
  if (interval) clearInterval((server as unknown as Record<symbol, NodeJS.Timeout>)[interval]);
}
