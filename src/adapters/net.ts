// What drives the contract for protocol authors (its types: contract.ts): when to ask a
// ProtocolAdapter about a connection, asking again at the next safe point, counting, late writes,
// letting go of the forwarder, handing a connection back when it did not move; as a ServerAdapter
// like any other.
import type * as net from 'node:net';
import { createDebug } from '../log';
import { HandoverError } from '../errors';
import type { AdoptHandler, AdoptedConnection } from '../connections';
import type { MoveConnection, ServerAdapter } from './adapter';
import { MAX_STATE_BYTES, type JsonValue, type MoveAnswer, type MoveNow, type ProtocolAdapter } from './contract';

const debug = createDebug('handover:protocol');

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
