// HTTP/2 sessions of a retiring server: an HTTP/2 session cannot move (its HPACK tables, stream
// states and, over TLS, its keys live in this process), so it is drained with GOAWAY, sent at a
// moment when no request of a client that waits for its responses can be crossing it.
import { createDebug } from '../log';

const debug = createDebug('handover:http2');

/**
 * How long a session with no stream open is left to its client before it gets GOAWAY, when no new
 * stream comes first. Node's HTTP/1.1 keep-alive default: an idle connection going away after it
 * is the race every client already expects (and for HTTP/2 a request that crosses the GOAWAY is
 * refused, never processed, so it is safe to retry).
 */
export const IDLE_SESSION_GOAWAY_MS = 5000;

/** The part of Node's ServerHttp2Session this file uses (public API only). */
export interface Http2SessionLike {
  readonly closed: boolean;
  readonly destroyed: boolean;
  close(): void;
  on(event: 'stream', listener: (stream: { once(event: 'close', listener: () => void): unknown }) => void): unknown;
  once(event: 'close', listener: () => void): unknown;
}

/**
 * Http2Sessions follows a server's sessions through 'session' and each session's 'stream' events
 * (never a 'request' listener, which would switch on the compatibility layer for every stream).
 *
 * Node's http2 cannot send the RFC 9113 shutdown notice (GOAWAY with last-stream-id 2^31-1, then
 * the final one after a PING): `session.goaway()` goes through nghttp2_submit_goaway(), after which
 * nghttp2 ignores every new stream (session_allow_incoming_new_stream) and, with no stream open,
 * stops reading altogether; see docs/http2-and-tls.md. So the one GOAWAY (`session.close()`: the
 * last stream id nghttp2 processed) goes out when no stream can be crossing it from a client that
 * waits for its responses:
 * - a session with streams open gets it at once: nghttp2 sends it ahead of their remaining
 *   frames, so the client knows before it sees the end of any response it waits for;
 * - a session with none gets it together with its next stream (the client waits for that one's
 *   response), or after IDLE_SESSION_GOAWAY_MS if none comes.
 * A client that opens streams while others are open on the same session can still cross it: such
 * a stream is refused (REFUSED_STREAM: not processed, safe to retry).
 */
export class Http2Sessions {
  private retiring = false;
  /** Every open session and how many of its streams are open. */
  private readonly open = new Map<Http2SessionLike, number>();
  private readonly idleTimers = new Map<Http2SessionLike, NodeJS.Timeout>();

  follow(session: Http2SessionLike): void {
    this.open.set(session, 0);
    session.once('close', () => {
      this.open.delete(session);
      this.clearIdleTimer(session);
    });
    session.on('stream', (stream) => {
      this.open.set(session, (this.open.get(session) ?? 0) + 1);
      stream.once('close', () => {
        const streams = this.open.get(session);
        if (streams !== undefined) this.open.set(session, streams - 1);
      });
      // Node's own 'stream' listener ran first (the application's handler may have responded):
      // the GOAWAY queued now still leaves ahead of the response's data.
      if (this.retiring) this.goAway(session);
    });
    if (this.retiring) this.goAwayWhenIdle(session);
  }

  retire(): void {
    this.retiring = true;
    for (const [session, streams] of this.open) {
      if (streams > 0) this.goAway(session);
      else this.goAwayWhenIdle(session);
    }
  }

  /** resume (rollback): sessions not yet told to go away are served as before. */
  resume(): void {
    this.retiring = false;
    for (const session of [...this.idleTimers.keys()]) this.clearIdleTimer(session);
  }

  private goAwayWhenIdle(session: Http2SessionLike): void {
    if (this.idleTimers.has(session)) return;
    this.idleTimers.set(session, setTimeout(() => this.goAway(session), IDLE_SESSION_GOAWAY_MS));
  }

  private goAway(session: Http2SessionLike): void {
    this.clearIdleTimer(session);
    if (session.closed || session.destroyed) return;
    debug('GOAWAY (%d streams open)', this.open.get(session) ?? 0);
    session.close();
  }

  private clearIdleTimer(session: Http2SessionLike): void {
    const timer = this.idleTimers.get(session);
    if (timer) clearTimeout(timer);
    this.idleTimers.delete(session);
  }
}
