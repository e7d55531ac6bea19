// Counting a generation's connections: which are open, which moved, and waiting until they are
// all gone (waitConnectionsDone) by counting, never by sleeping a fixed time.
import type * as net from 'node:net';

/** Counts reported by waitConnectionsDone() and the 'retired' event. */
export interface ConnectionsReport {
  /** Connections that closed while waiting. */
  closed: number;
  /** Connections moved to the successor while waiting. */
  moved: number;
  /** Connections still open at the timeout (0 when everything finished). */
  remaining: number;
  /** True when the wait ended at the timeout. */
  timedOut: boolean;
}

/** ConnectionTracker knows every connection of the servers given to listen(), by listener key. */
export class ConnectionTracker {
  private readonly open = new Set<net.Socket>();
  private readonly keys = new WeakMap<net.Socket, string>();
  private readonly moved = new WeakSet<net.Socket>();
  private readonly waiters = new Set<() => void>();
  private closedCount = 0;
  private movedCount = 0;
  /**
   * One 'close' listener shared by every socket (`this` is the socket): no closure and no once()
   * wrapper per connection, which a server with a new connection per request pays on each.
   */
  private readonly onClose = (() => {
    const tracker = this;
    return function (this: net.Socket): void {
      tracker.closed(this);
    };
  })();

  get size(): number {
    return this.open.size;
  }

  /** totals: open now; since this generation started, closed here and moved to a successor. */
  get totals(): { open: number; closed: number; moved: number } {
    return { open: this.open.size, closed: this.closedCount, moved: this.movedCount };
  }

  /** track counts a socket until it closes. */
  track(socket: net.Socket, key: string): void {
    if (this.open.has(socket)) return;
    this.open.add(socket);
    this.keys.set(socket, key);
    socket.on('close', this.onClose);
  }

  private closed(socket: net.Socket): void {
    if (!this.open.delete(socket)) return;
    if (!this.moved.has(socket)) this.closedCount++;
    this.changed();
  }

  /** keyOf names the listener a tracked socket came from; undefined for a socket of no server given to listen(). */
  keyOf(socket: net.Socket): string | undefined {
    return this.keys.get(socket);
  }

  /** markMoved: the successor acknowledged the socket; it counts as moved, not closed. */
  markMoved(socket: net.Socket): void {
    if (this.moved.has(socket)) return;
    this.moved.add(socket);
    this.movedCount++;
    this.changed();
  }

  /** changed wakes the waiters (a connection went, or a waiter's abandon condition may hold now). */
  changed(): void {
    if (this.waiters.size === 0) return;
    for (const waiter of [...this.waiters]) waiter();
  }

  /**
   * waitDone resolves once no tracked connection is open, once `abandon()` holds, or at `timeout`
   * ms with what remained. Counts start from this call.
   */
  waitDone(timeout: number, abandon?: () => boolean): Promise<ConnectionsReport> {
    const closedAtStart = this.closedCount;
    const movedAtStart = this.movedCount;
    return new Promise((resolve) => {
      const finish = (timedOut: boolean): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve({ closed: this.closedCount - closedAtStart, moved: this.movedCount - movedAtStart, remaining: this.open.size, timedOut });
      };
      const check = (): void => {
        if (this.open.size === 0 || abandon?.() === true) finish(false);
      };
      const timer = setTimeout(() => finish(true), timeout);
      this.waiters.add(check);
      check();
    });
  }
}
