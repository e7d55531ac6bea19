// The public shapes of a move (what the application hands over, what the successor's adapter
// receives) and the record both halves of the predecessor's side keep per moving connection.
import type * as net from 'node:net';

/** What to hand over with a connection. */
export interface TransferOptions {
  /** Bytes already read from the socket by the application but not yet processed (a decoder's leftover). */
  pending?: Buffer;
  /** Small JSON-serialisable protocol state for the successor's adapter. */
  state?: unknown;
  /**
   * The application will still write on this socket (responses to requests in flight). Writes
   * after the move are forwarded to the successor in order; call socket.end() when it will write
   * no more (end() delivers what is still queued, then lets go: no FIN reaches the client;
   * destroy() would drop queued writes). Default false: the socket is destroyed (a plain close) on ACK.
   */
  lateWrites?: boolean;
}

/** What the successor's adapter receives with an adopted connection. */
export interface AdoptedConnection {
  /** The listener key of the server the connection belongs to. */
  key: string;
  /** Bytes the predecessor had read but not processed: decode them before anything else. */
  pending: Buffer;
  /** The state the predecessor's adapter handed over. */
  state: unknown;
}

/** An adopt handler for a net.Server: receives the live socket, paused, and its pending bytes. */
export type AdoptHandler = (socket: net.Socket, connection: AdoptedConnection) => void;

export interface HeldWrite {
  chunks: Buffer[];
  cb: (err?: Error | null) => void;
}

/**
 * Where a moving connection's writes go:
 *  - collecting: from the decision until its CONN frame is built; accepted at once and carried
 *    in the CONN frame, so the successor writes them before anything of its own;
 *  - sent: the CONN frame is on its way; held (with back-pressure) until the answer;
 *  - acked: forwarded as WRITE frames, in order, each acknowledged by the successor.
 */
export type WritePhase = 'collecting' | 'sent' | 'acked';

/** One connection on its way to the successor (predecessor side). */
export interface Moving {
  id: number;
  socket: net.Socket;
  key: string;
  pending: Buffer;
  state: unknown;
  lateWrites: boolean;
  /** Gives the socket back to the application exactly as it was frozen (bytes, reading, timeout). */
  thaw: () => void;
  phase: WritePhase;
  carried: Buffer[];
  carriedBytes: number;
  held: HeldWrite[];
  /** end() was called during the move: its callback waits for the answer. */
  finalCb?: (err?: Error | null) => void;
  writeSeq: number;
  resolve: () => void;
  reject: (err: Error) => void;
}
