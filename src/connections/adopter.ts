// The successor's side of moving connections: check and adopt the fds of each CONN frame, answer
// with CONN_ACK (and how many more fds it can take), and only then let the sockets read.
import * as net from 'node:net';
import { createDebug } from '../log';
import { binding } from '../native';
import { HandoverError } from '../errors';
import { closeFds } from '../listeners';
import type { ConnEntry, Message } from '../protocol';
import type { ControlSession } from '../session';
import { adoptSocket, attachToServer, serverAllowsHalfOpen } from '../runtime';
import { fault } from '../faults';
import { CreditMeter, fdCredit } from './credit';
import { ParkingLot } from './parking';
import type { AdoptHandler } from './types';

const debug = createDebug('handover:connections');

const EMPTY = Buffer.alloc(0);
/** How often a successor out of fd credit looks again, to tell the predecessor once it has some. */
const CREDIT_RECHECK_MS = 200;

export interface AdopterHooks {
  /** The server registered for a key, and its adopt handler if it has one. */
  serverFor(key: string): { server: net.Server; adopt: AdoptHandler | undefined; afterAdopt?: (socket: net.Socket) => void } | undefined;
  /** Count an adopted socket as one of this process's connections. */
  track(socket: net.Socket, key: string): void;
  /** Report an adoption that failed after the ACK (the application's handler threw). */
  failed(err: HandoverError): void;
  /** The predecessor's pid as this process sees it (for test fault points). */
  readonly peerPid: number | undefined;
}

type Target = NonNullable<ReturnType<AdopterHooks['serverFor']>>;

/** readyCredit: the fd credit to announce in READY (nothing where this platform cannot tell). */
export function readyCredit(): { credit?: number } {
  const credit = fdCredit();
  return credit === undefined ? {} : { credit };
}

/** Why a received fd cannot be a moved connection, by the code of binding().checkConnections(). */
const UNFIT: Record<number, string> = {
  1: 'the fd is not a socket',
  2: 'the fd is not a stream socket',
  3: 'the fd is a socket of an unknown family',
  4: 'the fd is a listening socket, not a connection',
};

/** Adopted connections started per turn of the event loop: the process serves between two slices. */
const START_SLICE = 32;
/**
 * Idle connections wait, parked, while CONN frames keep coming: they start once none arrived for
 * this long (the predecessor is done, or waits), so the move itself gets the CPU.
 */
const QUIET_MS = 50;

/** Every adopter with connections not yet started: startParkedConnections() starts them all at once. */
const adopters = new Set<ConnectionAdopter>();

/**
 * startParkedConnections makes every parked connection a net.Socket now, emitted on its server:
 * this process is about to hand its connections on (retirement), and an adapter only knows the
 * connections its server has seen.
 */
export function startParkedConnections(): void {
  for (const adopter of [...adopters]) adopter.startAll();
}

/** A connection acknowledged (or being acknowledged) and not yet started: its fd, not yet a net.Socket. */
interface Parked {
  /** Its CONN_ACK is in the kernel: it may start. */
  acked: boolean;
  fd: number;
  entry: ConnEntry;
  pending: Buffer;
  unflushed: Buffer;
  target: Target;
}

/**
 * ConnectionAdopter checks the fds of each CONN frame with the kernel (one call for the frame),
 * acknowledges them, and only once the ACK is in the kernel wraps each fd in a net.Socket and lets
 * it read (so a successor that dies before acknowledging has read nothing, and the predecessor
 * can keep serving those connections). Acknowledging does not wait for the sockets. After the
 * ACK an idle connection is parked: its fd goes into one epoll set (a syscall, no Node object);
 * it becomes a net.Socket as soon as it is readable (its client sent a request, or hung up), or
 * once CONN frames stop arriving, START_SLICE per turn of the event loop, oldest first. A
 * connection that arrived with bytes (pending or carried writes) starts at once.
 */
export class ConnectionAdopter {
  private readonly adopted = new Map<number, net.Socket>();
  /** Acknowledged, not yet started (by id), in the order they arrived. */
  private readonly parked = new Map<number, Parked>();
  private readonly batches: Extract<Message, { type: 'CONN' }>[] = [];
  private adopting = false;
  private startScheduled = false;
  /** When the last CONN frame was handled (performance.now()). */
  private lastConn = -Infinity;
  /** Idle acknowledged connections, in one epoll set: each starts at once when readable. */
  private readonly parking = new ParkingLot<Parked>((connection) => this.startParked(connection));
  /** The first frame's connections were all started before a second frame was answered. */
  private adoptionProven = false;
  /** While the first frame's connections start (in slices): their ids, and what answers the next frame. */
  private proving: { ids: Set<number>; then: (() => void) | undefined } | undefined;
  private readonly credit = new CreditMeter();
  /** The last credit announced was 0: look again until there is some, then say so. */
  private creditTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly session: ControlSession,
    private readonly hooks: AdopterHooks,
  ) {
    session.once('close', () => this.stopCreditWatch());
    // READY may already have said 0: the predecessor waits for word that there is room.
    if (fdCredit() === 0) this.watchCredit();
  }

  onMessage(message: Message): boolean {
    if (message.type === 'CONN') {
      // One frame at a time: its CONN_ACK is in the kernel (and its fault point passed) before the
      // next frame is looked at, so a successor that dies holds at most the frames it answered.
      this.credit.received(message.fds.length);
      this.lastConn = performance.now();
      this.batches.push(message);
      if (!this.adopting) this.nextBatch();
      return true;
    }
    if (message.type === 'WRITE') {
      // A late write for a connection still parked: it starts now (its carried writes go first).
      // The predecessor forwards writes only once it has the CONN_ACK: it is in the kernel.
      if (this.parked.has(message.id)) this.startParked(this.parked.get(message.id)!);
      const socket = this.adopted.get(message.id);
      const ack = (): void => {
        void this.session.send({ type: 'WRITE_ACK', id: message.id, seq: message.seq }).catch(() => undefined);
      };
      if (!socket || socket.destroyed) {
        // The client is gone: nothing can deliver these bytes; say so by acknowledging (the write is moot).
        debug('late write for closed connection %d dropped', message.id);
        ack();
        return true;
      }
      socket.write(message.data, ack);
      fault('late-write', 'successor', this.hooks.peerPid);
      return true;
    }
    return false;
  }

  private nextBatch(): void {
    const batch = this.batches.shift();
    if (!batch) {
      this.adopting = false;
      return;
    }
    this.adopting = true;
    this.acknowledge(batch, () => this.nextBatch());
  }

  /** acknowledge checks a frame's fds, answers it, and parks what it acknowledged until started. */
  private acknowledge(message: Extract<Message, { type: 'CONN' }>, done: () => void): void {
    const acked: number[] = [];
    const refused: { id: number; reason: string }[] = [];
    const parked: Parked[] = [];
    let checks: Uint8Array | undefined;
    try {
      checks = binding().checkConnections(message.fds);
    } catch (err) {
      debug('cannot check the fds: %s', (err as Error).message);
    }
    const targets = new Map<string, Target | undefined>();
    let offset = 0;
    message.conns.forEach((entry, index) => {
      const fd = message.fds[index]!;
      const pendingStart = offset;
      offset += entry.pendingLength;
      const writeStart = offset;
      offset += entry.writeLength;
      const refuse = (reason: string): void => {
        closeFds([fd]);
        refused.push({ id: entry.id, reason });
      };
      let target = targets.get(entry.key);
      if (!targets.has(entry.key)) targets.set(entry.key, (target = this.hooks.serverFor(entry.key)));
      if (!target) return refuse(`no server listens on ${entry.key} here`);
      const check = checks ? checks[index]! : 1;
      if (check !== 0) return refuse(UNFIT[check] ?? `the fd failed its check (${check})`);
      acked.push(entry.id);
      // Copies: the frame's body is one buffer; a parked connection must not keep all of it alive.
      parked.push({
        acked: false,
        fd,
        entry,
        pending: entry.pendingLength > 0 ? Buffer.from(message.body.subarray(pendingStart, writeStart)) : EMPTY,
        unflushed: entry.writeLength > 0 ? Buffer.from(message.body.subarray(writeStart, offset)) : EMPTY,
        target,
      });
    });
    debug('acknowledging %d, refused %d', acked.length, refused.length);
    // Known at once (a WRITE for one of them may follow in the same read: the ACK left already).
    for (const connection of parked) this.parked.set(connection.entry.id, connection);
    if (this.parked.size > 0) adopters.add(this);
    const credit = this.credit.current();
    this.session
      .send({ type: 'CONN_ACK', acked, refused, ...(credit === undefined ? {} : { credit }) })
      .then(
        () => {
          // Ours now: nothing was read before this point.
          for (const connection of parked) connection.acked = true;
          fault('conn-acked', 'successor', this.hooks.peerPid);
          if (!this.adoptionProven && parked.length > 0) {
            // The first frame is adopted whole (in slices, not parked) before the next one is
            // answered: if adopting crashes this process (an adopt handler, memory), it crashes
            // holding one frame, and the predecessor keeps every other connection. Later frames
            // are answered at once.
            this.adoptionProven = true;
            const ids = new Set(parked.map((connection) => connection.entry.id).filter((id) => this.parked.has(id)));
            if (ids.size > 0) this.proving = { ids, then: undefined };
          } else {
            this.watch(parked);
          }
          this.scheduleStart();
        },
        (err: Error) => {
          // Without a delivered ACK the predecessor keeps these connections: two readers would
          // corrupt them, so close our copies (the predecessor still holds each one).
          debug('CONN_ACK not sent (%s); giving the connections up', err.message);
          closeFds(parked.filter((connection) => this.parked.delete(connection.entry.id)).map((connection) => connection.fd));
          if (this.parked.size === 0) adopters.delete(this);
        },
      )
      .catch((err: Error) => debug('adoption failed: %s', err.message))
      .finally(() => {
        if (credit === 0) this.watchCredit();
        if (this.proving) this.proving.then = done;
        else done();
      });
  }

  /**
   * watch parks idle connections: each starts as soon as it is readable. Those with bytes to
   * deliver start in the next slice; where epoll is missing, all of them do.
   */
  private watch(connections: Parked[]): void {
    this.parking.park(connections.filter((c) => this.parked.has(c.entry.id) && c.pending.length === 0 && c.unflushed.length === 0));
  }

  /** startAll starts every acknowledged connection now (see startParkedConnections). */
  startAll(): void {
    for (const connection of [...this.parked.values()]) {
      if (connection.acked) this.startParked(connection);
    }
  }

  private scheduleStart(): void {
    if (this.startScheduled || !this.parked.values().next().value?.acked) return;
    this.startScheduled = true;
    setImmediate(() => {
      this.startScheduled = false;
      const quiet = performance.now() - this.lastConn >= QUIET_MS;
      let started = 0;
      for (const connection of this.parked.values()) {
        // Frames are answered in order: past the first unanswered one, none is answered yet.
        if (!connection.acked || started === START_SLICE) break;
        // Parked idle connections wait while frames keep coming (they start when readable).
        if (!quiet && this.parking.has(connection)) continue;
        started++;
        this.startParked(connection);
      }
      if (!quiet && started === 0 && this.parked.size > 0) {
        this.startScheduled = true;
        setTimeout(() => {
          this.startScheduled = false;
          this.scheduleStart();
        }, QUIET_MS).unref();
        return;
      }
      this.scheduleStart();
    });
  }

  /** startParked makes the net.Socket of an acknowledged connection and lets it read. */
  private startParked(connection: Parked): void {
    const { fd, entry, pending, unflushed, target } = connection;
    this.parked.delete(entry.id);
    if (this.proving?.ids.delete(entry.id) && this.proving.ids.size === 0) {
      // The first frame is started: the next one may be answered (after this turn's work).
      const { then } = this.proving;
      this.proving = undefined;
      if (then) setImmediate(then);
    }
    if (this.parked.size === 0) adopters.delete(this);
    this.parking.leave(connection);
    let socket: net.Socket;
    try {
      // manualStart: it reads when start() says so (after its pending bytes are in place).
      socket = adoptSocket(fd, serverAllowsHalfOpen(target.server));
    } catch (err) {
      closeFds([fd]);
      this.hooks.failed(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `adopting a connection of ${entry.key} failed: ${(err as Error).message}`, { cause: err }));
      return;
    }
    this.adopted.set(entry.id, socket);
    socket.once('close', () => this.adopted.delete(entry.id));
    this.start(socket, entry, pending, unflushed, target);
  }

  private start(socket: net.Socket, entry: ConnEntry, pending: Buffer, unflushed: Buffer, target: Target): void {
    // The predecessor's unflushed writes go out before anything this process writes.
    if (unflushed.length > 0) socket.write(unflushed);
    // What net.Server does for a connection it accepted: count it, link it to its server.
    attachToServer(socket, target.server);
    this.hooks.track(socket, entry.key);
    try {
      if (target.adopt) {
        target.adopt(socket, { key: entry.key, pending, state: entry.state });
      } else {
        if (pending.length > 0) socket.unshift(pending);
        target.server.emit('connection', socket);
        target.afterAdopt?.(socket);
        // Reading starts now; unshifted bytes are delivered first.
        socket.resume();
      }
    } catch (err) {
      // The application's handler threw: that one connection is lost, not the batch, not the process.
      this.hooks.failed(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', `adopting a connection of ${entry.key} threw: ${(err as Error).message}`, { cause: err }));
      socket.destroy();
    }
  }

  /**
   * watchCredit: this process announced no credit, so the predecessor keeps its remaining
   * connections until told otherwise; tell it as soon as fds are free again.
   */
  private watchCredit(): void {
    if (this.creditTimer || this.session.isClosed) return;
    this.creditTimer = setInterval(() => {
      if (this.adopting || this.session.isClosed) return;
      const credit = fdCredit();
      if (credit === undefined || credit === 0) return;
      this.stopCreditWatch();
      void this.session.send({ type: 'CONN_ACK', acked: [], refused: [], credit }).catch(() => undefined);
    }, CREDIT_RECHECK_MS);
    this.creditTimer.unref();
  }

  private stopCreditWatch(): void {
    clearInterval(this.creditTimer);
    this.creditTimer = undefined;
  }
}
