// The contract for protocol authors: a per-server ProtocolAdapter with two halves. The retiring
// process's half says, for one connection, whether it can move now and with what, or when it will
// be able to, or that it never can; the successor's half adopts it. Everything else (when to ask,
// asking again at the next safe point, counting, late writes, letting go of the forwarder, handing
// a connection back when it did not move) is driven here, as a ServerAdapter like any other.
import type * as net from 'node:net';
import { createDebug } from '../log';
import { HandoverError } from '../errors';
import type { AdoptHandler, AdoptedConnection } from '../connections';
import type { MoveConnection, ServerAdapter } from './adapter';

const debug = createDebug('handover:protocol');

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

/**
 * The wire form of a state moved by a ProtocolAdapter: marked, so that the successor tells its
 * connections from those another adapter of the same server moved (HTTP beside WebSockets).
 */
const MARK = 'handover:protocol';
const EMPTY = Buffer.alloc(0);

/** Where one connection is in the current retirement. */
type Phase =
  /** prepareMove() is running; `again` records an askAgain() made meanwhile. */
  | { kind: 'asking'; again: boolean }
  /** Answered `later`: the next askAgain() asks again. */
  | { kind: 'waiting' }
  /** Answered `now`: on its way. */
  | { kind: 'moving' }
  /** The successor has it (this copy may still forward late writes). */
  | { kind: 'moved' }
  /** Stays here for the rest of the retirement (drained). */
  | { kind: 'staying' };

/** The hooks of a ProtocolServerAdapter into the upgrader. */
export interface ProtocolHooks {
  /** Report a misbehaving hook (a 'warning'); the connection concerned stays here. */
  warn(err: HandoverError): void;
}

/**
 * ProtocolServerAdapter drives a ProtocolAdapter for one server, as the ServerAdapter of that
 * server. A built-in adapter of the same server (`inner`: HTTP) runs beside it: it is told first,
 * and keeps every connection the protocol does not claim.
 */
export class ProtocolServerAdapter implements ServerAdapter {
  private readonly sockets = new Set<net.Socket>();
  private readonly phases = new Map<net.Socket, Phase>();
  private retiring = false;
  private move: MoveConnection | undefined;
  /** Which retirement this is: an askAgain() or an answer from an earlier one changes nothing. */
  private round = 0;

  constructor(
    private readonly server: net.Server,
    private readonly protocol: ProtocolAdapter<unknown>,
    private readonly inner: ServerAdapter | undefined,
    private readonly hooks: ProtocolHooks,
  ) {
    server.on('connection', (socket: net.Socket) => this.add(socket));
  }

  /** retire: ask every connection (or drain them all when nothing can move). */
  retire(move: MoveConnection | undefined): void {
    this.retiring = true;
    this.move = move;
    this.round++;
    this.phases.clear();
    this.inner?.retire(move);
    for (const socket of [...this.sockets]) this.start(socket);
  }

  /** resume (rollback): nothing moves any more; connections handed back are resumed as their moves fail. */
  resume(): void {
    this.retiring = false;
    this.move = undefined;
    for (const [socket, phase] of [...this.phases]) {
      if (phase.kind !== 'moving' && phase.kind !== 'moved') this.phases.delete(socket);
    }
    this.inner?.resume();
  }

  afterAdopt(socket: net.Socket): void {
    this.inner?.afterAdopt?.(socket);
  }

  /**
   * adopt: the successor's side. Connections this protocol moved go to its `adopt`; the others
   * (moved by the built-in adapter, or by hand) are handed to the server as the library does for
   * a server without an adopt handler.
   */
  readonly adopt: AdoptHandler = (socket: net.Socket, connection: AdoptedConnection): void => {
    const marked = unmark(connection.state);
    if (marked && this.protocol.adopt) {
      this.protocol.adopt(socket, { key: connection.key, pending: connection.pending, state: marked.state });
      this.add(socket);
      return;
    }
    if (connection.pending.length > 0) socket.unshift(connection.pending);
    this.server.emit('connection', socket);
    this.inner?.afterAdopt?.(socket);
    socket.resume();
  };

  private add(socket: net.Socket): void {
    if (this.sockets.has(socket) || socket.destroyed) return;
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.phases.delete(socket);
    });
    // A connection accepted (or upgraded into being) while retiring is asked like the others.
    if (this.retiring) this.start(socket);
  }

  private start(socket: net.Socket): void {
    if (this.move) this.ask(socket, this.round);
    else this.stay(socket, 'this runtime or link cannot move connections');
  }

  private ask(socket: net.Socket, round: number): void {
    if (!this.retiring || round !== this.round || socket.destroyed) return;
    const phase = this.phases.get(socket);
    if (phase?.kind === 'asking') {
      phase.again = true; // askAgain() from inside prepareMove(): asked again once this answer is in
      return;
    }
    if (phase !== undefined && phase.kind !== 'waiting') return;
    const asking: Phase = { kind: 'asking', again: false };
    this.phases.set(socket, asking);
    let answer: MoveAnswer<unknown>;
    try {
      answer = this.protocol.prepareMove(socket, () => this.ask(socket, round));
      if (!isAnswer(answer)) throw new Error(`prepareMove() answered ${describe(answer)}, not { move: 'now' | 'later' | 'never' }`);
    } catch (err) {
      this.hooks.warn(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `prepareMove() failed: ${(err as Error).message}; the connection stays here`, { cause: err }));
      answer = { move: 'never', reason: 'prepareMove() failed' };
    }
    // prepareMove() may have destroyed the socket (a protocol error): nothing more to do for it.
    if (this.phases.get(socket) !== asking || socket.destroyed) return;
    if (answer.move === 'now') this.moveNow(socket, answer, round);
    else if (answer.move === 'never') this.stay(socket, answer.reason ?? 'prepareMove() answered never');
    else {
      this.phases.set(socket, { kind: 'waiting' });
      // Asked again on the next turn, never in a loop inside this one.
      if (asking.again) setImmediate(() => this.ask(socket, round));
    }
  }

  private moveNow(socket: net.Socket, answer: MoveNow<unknown>, round: number): void {
    const move = this.move!;
    this.phases.set(socket, { kind: 'moving' });
    const pending = answer.pending ?? EMPTY;
    // Paused: if it comes back, its bytes wait in it until the protocol took `pending` back first.
    const wasFlowing = socket.readableFlowing === true;
    socket.pause();
    let state: { [MARK]: 1; state?: JsonValue };
    try {
      state = mark(answer.state);
    } catch (err) {
      this.hooks.warn(err as HandoverError);
      this.kept(socket, pending, err as HandoverError, wasFlowing, round);
      return;
    }
    move(socket, { pending, state, lateWrites: answer.lateWrites !== undefined }).then(
      () => this.moved(socket, answer.lateWrites),
      (err: HandoverError) => {
        if (err.code === 'ERR_HANDOVER_INVALID_ARG') this.hooks.warn(err); // the adapter's answer was wrong (pending not a Buffer)
        this.kept(socket, pending, err, wasFlowing, round);
      },
    );
  }

  private moved(socket: net.Socket, lateWrites: PromiseLike<unknown> | undefined): void {
    // The successor's now: never asked about again, whatever this copy does until it closes.
    this.sockets.delete(socket);
    if (!socket.destroyed) this.phases.set(socket, { kind: 'moved' });
    try {
      this.protocol.moved?.(socket);
    } catch (err) {
      this.hooks.warn(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `moved() threw: ${(err as Error).message}`, { cause: err }));
    }
    if (lateWrites === undefined) return; // closed by the library on the ACK already
    // end(), never destroy(): on a moved socket end() forwards what is still queued, then closes
    // this copy (no FIN: the successor holds the connection); destroy() would drop those writes.
    const letGo = (): void => {
      if (!socket.destroyed && !socket.writableEnded) socket.end();
    };
    Promise.resolve(lateWrites).then(letGo, letGo);
  }

  /** kept: the move failed; the connection is the protocol's again (and drained if still retiring). */
  private kept(socket: net.Socket, pending: Buffer, reason: HandoverError, wasFlowing: boolean, round: number): void {
    const retiring = this.retiring && round === this.round;
    debug('connection stays here (%s): %s', reason.code, reason.message);
    if (retiring) this.phases.set(socket, { kind: 'staying' });
    else this.phases.delete(socket);
    if (socket.destroyed) return;
    try {
      if (this.protocol.resume) this.protocol.resume(socket, pending, reason);
      else {
        if (pending.length > 0) socket.unshift(pending);
        if (wasFlowing) socket.resume();
      }
    } catch (err) {
      this.hooks.warn(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `resume() threw: ${(err as Error).message}; the connection is closed`, { cause: err }));
      socket.destroy();
      return;
    }
    if (retiring) this.drain(socket);
  }

  private stay(socket: net.Socket, why: string): void {
    debug('connection stays here: %s', why);
    this.phases.set(socket, { kind: 'staying' });
    this.drain(socket);
  }

  private drain(socket: net.Socket): void {
    if (socket.destroyed) return;
    try {
      this.protocol.drain?.(socket);
    } catch (err) {
      this.hooks.warn(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `drain() threw: ${(err as Error).message}`, { cause: err }));
    }
  }
}

/** mark: the wire form of a protocol's state (checked: JSON, at most MAX_STATE_BYTES). */
function mark(state: unknown): { [MARK]: 1; state?: JsonValue } {
  if (state === undefined) return { [MARK]: 1 };
  let json: string | undefined;
  try {
    json = JSON.stringify(state);
  } catch (err) {
    throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `state is not JSON: ${(err as Error).message}`, { cause: err });
  }
  if (json === undefined) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `state is not JSON (${typeof state})`);
  if (Buffer.byteLength(json) > MAX_STATE_BYTES) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `state takes ${Buffer.byteLength(json)} bytes as JSON, more than ${MAX_STATE_BYTES}`);
  return { [MARK]: 1, state: JSON.parse(json) as JsonValue };
}

function unmark(state: unknown): { state: JsonValue | undefined } | undefined {
  if (typeof state !== 'object' || state === null || (state as Record<string, unknown>)[MARK] !== 1) return undefined;
  return { state: (state as { state?: JsonValue }).state };
}

function isAnswer(answer: unknown): answer is MoveAnswer<unknown> {
  if (typeof answer !== 'object' || answer === null) return false;
  const { move } = answer as { move?: unknown };
  return move === 'now' || move === 'later' || move === 'never';
}

function describe(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** checkProtocol validates a ProtocolAdapter given to listen(), naming what is wrong. */
export function checkProtocol(protocol: unknown): asserts protocol is ProtocolAdapter<unknown> {
  if (typeof protocol !== 'object' || protocol === null) throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.protocol must be an object with prepareMove()');
  const methods = protocol as Record<string, unknown>;
  if (typeof methods.prepareMove !== 'function') throw new HandoverError('ERR_HANDOVER_INVALID_ARG', 'options.protocol.prepareMove must be a function');
  for (const name of ['resume', 'drain', 'moved', 'adopt']) {
    if (methods[name] !== undefined && typeof methods[name] !== 'function') throw new HandoverError('ERR_HANDOVER_INVALID_ARG', `options.protocol.${name} must be a function`);
  }
}
