// The contract for protocol authors, its types: a per-server ProtocolAdapter with two halves. The
// retiring process's half says, for one connection, whether it can move now and with what, or
// when it will be able to, or that it never can; the successor's half adopts it. What drives it
// is in net.ts (ProtocolServerAdapter).
import type * as net from 'node:net';
import type { HandoverError } from '../errors';

/**
 * A value that survives JSON.stringify / JSON.parse unchanged: what `state` may be. The adapter
 * types take the state's type as a parameter (`ProtocolAdapter<{ seq: number }>`); it is checked
 * to be JSON when the connection moves.
 */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * MoveNow: the connection is at a safe point and moves now. Answered by `prepareMove()`, which has
 * already stopped decoding (synchronously, before it returned): the library stops the kernel reads
 * in the same tick, so not one byte is decoded here after this answer.
 */
export interface MoveNow<State = JsonValue> {
  move: 'now';
  /**
   * Bytes your code read from the socket but did not process (a decoder's partial frame). The
   * successor's `adopt()` receives them first, followed by what Node had buffered and what is
   * still in the kernel; do not collect the socket's own readable buffer, the library does.
   */
  pending?: Buffer;
  /**
   * Small protocol state the successor needs that is not in the byte stream (a negotiated version,
   * a sequence number, a user id): JSON, at most 16 KiB serialised, never a secret.
   */
  state?: State;
  /**
   * Late writes follow: responses to requests this process already decoded are still to be
   * written on `socket` after the move. They are forwarded to the successor, in order, one
   * `write()` at a time (write one whole protocol message per `write()`). Settles once nothing
   * more will be written here; the library then lets go of this process's copy (the forwarder)
   * once the last late write left, without a byte or a FIN reaching the client. Absent: nothing
   * is written after the move, and this copy is closed as soon as the successor has the connection.
   */
  lateWrites?: PromiseLike<unknown>;
}

/**
 * MoveLater: not at a safe point yet (in the middle of a frame, a message, a handshake), or not a
 * connection of this protocol yet (an HTTP connection that may still become a WebSocket). Keep
 * serving it as usual; call the `askAgain` given to `prepareMove()` at the next safe point.
 */
export interface MoveLater {
  move: 'later';
}

/**
 * MoveNever: this connection cannot move (its state cannot travel: a compression context, a TLS
 * session). It stays here and the library calls `drain()` on it: finish it your protocol's way.
 */
export interface MoveNever {
  move: 'never';
  /** Why, for the debug log (`DEBUG=handover:*`). */
  reason?: string;
}

/** MoveAnswer: what `prepareMove()` says about one connection. */
export type MoveAnswer<State = JsonValue> = MoveNow<State> | MoveLater | MoveNever;

/**
 * ProtocolPredecessor: the retiring process's half of a ProtocolAdapter. The library asks it about
 * every connection of the server (accepted, or adopted from a predecessor) once retirement starts,
 * and about each connection that arrives while it retires.
 */
export interface ProtocolPredecessor<State = JsonValue> {
  /**
   * prepareMove: can this connection move now, and with what? Called when retirement starts, and
   * again each time you call `askAgain()` for it (until it moved or retirement is over).
   * - `{ move: 'now', pending?, state?, lateWrites? }`: stop decoding before you return (remove your
   *   'data' listener, take your decoder's leftover); the socket is paused and moves.
   * - `{ move: 'later' }`: call `askAgain()` at your next safe point. `askAgain()` calls
   *   `prepareMove()` again before it returns, so call it from inside your decoder right at the
   *   frame boundary, and stop decoding there if the answer moved the connection: the bytes after
   *   the boundary are that answer's `pending`. Calling it after retirement ended does nothing.
   * - `{ move: 'never' }`: the library calls `drain()` for it.
   * A prepareMove that throws counts as `never` (and is reported as a 'warning').
   */
  prepareMove(socket: net.Socket, askAgain: () => void): MoveAnswer<State>;
  /**
   * resume: a connection you answered `now` for did not move: the successor refused it, it died
   * before acknowledging it (a rollback), or retirement ended first. The socket is yours again, as
   * it was, paused, with the bytes Node had read meanwhile waiting inside it: feed `pending` (what
   * you handed over) to your decoder first, then read on (`socket.resume()`). When the process is
   * still retiring (the successor lives on but did not take this one) `drain()` follows.
   * Default: `socket.unshift(pending)` and resume reading if it was reading.
   */
  resume?(socket: net.Socket, pending: Buffer, reason: HandoverError): void;
  /**
   * drain: this connection stays here for the rest of the retirement (it answered `never`, a move
   * failed while retiring, or this runtime cannot move connections): finish it the protocol's way
   * (answer what is in flight, say goodbye if the protocol can, close). Until it closes it counts
   * as open: `'retired'` waits for it, up to `gracefulTimeout`. Default: nothing (it closes when
   * its client closes it, or with the process).
   */
  drain?(socket: net.Socket): void;
  /**
   * moved: the successor acknowledged the connection: it is the successor's now. Forget it here
   * (a broadcast must no longer reach it through this process). With `lateWrites`, the socket is a
   * forwarder until that promise settles: writes on it reach the client through the successor.
   */
  moved?(socket: net.Socket): void;
}

/** What the successor's half receives with a connection moved here. */
export interface AdoptedProtocolConnection<State = JsonValue> {
  /** The listener key of the server the connection belongs to (`tcp:127.0.0.1:12200`). */
  key: string;
  /** The predecessor's `pending` followed by what its Node had buffered: decode these bytes first. */
  pending: Buffer;
  /** The `state` the predecessor's `prepareMove()` handed over (undefined if none). */
  state: State | undefined;
}

/** ProtocolSuccessor: the adopting process's half of a ProtocolAdapter. */
export interface ProtocolSuccessor<State = JsonValue> {
  /**
   * adopt: a connection moved here, after this process acknowledged it (a successor that dies
   * before that leaves it with the predecessor). The socket has read nothing yet: attach your
   * decoder, feed it `pending` synchronously, then start reading (`socket.resume()`). It is
   * already counted and linked to the server; add what a fresh connection gets ('error' listener,
   * timeouts). Late writes of the predecessor are written on it by the library, before yours.
   * Default: `pending` is unshifted and the server emits `'connection'` for the socket.
   */
  adopt?(socket: net.Socket, connection: AdoptedProtocolConnection<State>): void;
}

/**
 * ProtocolAdapter: how the connections of one server move, given to
 * `upgrader.listen(server, target, { protocol })`. The same object serves both generations: the
 * retiring one uses the predecessor half, the new one the successor half.
 */
export interface ProtocolAdapter<State = JsonValue> extends ProtocolPredecessor<State>, ProtocolSuccessor<State> {}

/** The most a connection's `state` may take, serialised (a CONN frame carries up to 253 of them). */
export const MAX_STATE_BYTES = 16 * 1024;
