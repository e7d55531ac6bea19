// A busy HTTP connection brought to its next message boundary: its parser is fed by hand, never a
// byte past the end of the message it is in, and what was read beyond that moves as pending bytes.
import { EventEmitter } from 'node:events';
import type * as http from 'node:http';
import type * as net from 'node:net';
import { freezeReading, pausedByServer } from '../runtime';
import {
  httpParser,
  kOnBody,
  kOnMessageComplete,
  parserCallback,
  parserRequest,
  serverDataListener,
  setParserCallback,
  stopConsuming,
  type HttpParser,
} from '../runtime-http';

/** Body bytes of a request its parser has delivered so far (counted by the adapter, see instrumentParser). */
const kBodyBytes = Symbol('handover.bodyBytes');
const kMessagesCompleted = Symbol('handover.messagesCompleted');
const kInstrumented = Symbol('handover.instrumented');

/** A retiring connection that is not idle yet: its reads are frozen until it reaches a message boundary. */
export interface Draining {
  thaw: () => void;
  /** Bytes read past the end of the message that was completed: the next request's start, moved as pending. */
  leftover: Buffer;
  /** Set while the parser is fed by hand to complete a partial message. */
  readingOn?: () => void;
  moving: boolean;
}

/**
 * instrumentParser counts, on a connection's parser, the messages it completed and the body bytes
 * of each request, so that a message frozen half-way can be completed to its exact last byte. It
 * runs at 'connection', before the parser's first byte: Node 26 reads a parser's callbacks once per
 * connection, at its first execute, so a callback replaced later is never called. The parser object
 * is pooled: the wrappers stay on it and count for whichever connection it parses next.
 */
export function instrumentParser(socket: net.Socket): void {
  const parser = httpParser(socket) as (HttpParser & { [kInstrumented]?: boolean }) | null;
  if (!parser || parser[kInstrumented]) return;
  const onBody = parserCallback(parser, kOnBody);
  const onMessageComplete = parserCallback(parser, kOnMessageComplete);
  if (!onBody || !onMessageComplete) return;
  parser[kInstrumented] = true;
  // apply(arguments): no rest array allocated on every body chunk and every message.
  setParserCallback(parser, kOnBody, function (this: HttpParser, chunk: Buffer) {
    const req = parserRequest(this) as (http.IncomingMessage & { [kBodyBytes]?: number }) | null;
    if (req && chunk) req[kBodyBytes] = (req[kBodyBytes] ?? 0) + chunk.length;
    return onBody.apply(this, arguments as unknown as unknown[]);
  });
  setParserCallback(parser, kOnMessageComplete, function (this: HttpParser & { [kMessagesCompleted]?: number }) {
    this[kMessagesCompleted] = (this[kMessagesCompleted] ?? 0) + 1;
    return onMessageComplete.apply(this, arguments as unknown as unknown[]);
  });
}

/** messagesCompleted: how many messages the connection's parser completed (see instrumentParser). */
function messagesCompleted(parser: HttpParser): number {
  return (parser as HttpParser & { [kMessagesCompleted]?: number })[kMessagesCompleted] ?? 0;
}

/**
 * readToBoundary: every response is out but the parser holds part of a message: read until it
 * completes, feeding the parser by hand so that it never receives a byte past that message's end
 * (a chunk that holds the end of this request and the start of the next is split; the rest goes to
 * entry.leftover, then `completed`). An upgrade meanwhile ends it with the rest unshifted, then
 * `upgraded`. Returns false, having changed nothing, when the parser cannot be fed by hand.
 */
export function readToBoundary(socket: net.Socket, parser: HttpParser, entry: Draining, then: { completed: () => void; upgraded: () => void }): boolean {
  const onData = serverDataListener(socket);
  if (!onData || !(parser as { [kInstrumented]?: boolean })[kInstrumented] || !stopConsuming(parser)) return false;
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
        then.upgraded();
        return;
      }
    }
    if (completed()) {
      finish(true);
      entry.leftover = Buffer.from(buffered);
      then.completed();
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
  return true;
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
