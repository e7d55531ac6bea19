// Freezing a connection before it moves: no byte is read by this process after the decision, and
// thawing gives it back exactly as it was (buffered bytes first, reading, flowing, its timeout).
import { EventEmitter } from 'node:events';
import type * as net from 'node:net';
import { HandoverError } from '../errors';
import { freezeReading, readableState, socketTimeout, writeQueueSize } from '../runtime';

/** A frozen socket: the bytes it had buffered, and how to undo the freeze. */
export interface Frozen {
  buffered: Buffer;
  thaw: () => void;
}

const NOTHING = Buffer.alloc(0);

/** Takes what the stream already buffered (read from the kernel, not yet delivered), without emitting it. */
function takeBuffered(socket: net.Socket): Buffer {
  const state = readableState(socket);
  if (!state || state.length === 0) return NOTHING;
  const dataListeners = socket.rawListeners('data') as ((...args: unknown[]) => void)[];
  socket.removeAllListeners('data');
  const chunks: Buffer[] = [];
  let chunk: Buffer | string | null;
  while ((chunk = socket.read() as Buffer | string | null) !== null) {
    chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, state.encoding ?? 'utf8') : chunk);
  }
  // Re-attach with the plain EventEmitter method: http wraps socket.on('data') to unconsume its parser.
  for (const listener of dataListeners) EventEmitter.prototype.on.call(socket, 'data', listener);
  return Buffer.concat(chunks);
}

/**
 * freeze stops reading, takes the buffered bytes, pauses the stream and stops its idle timer (the
 * old copy must not time out while it travels). thaw() undoes all of it, the timer included: a
 * connection handed back after a refusal or a rollback times out as before.
 */
export function freeze(socket: net.Socket): Frozen {
  // Given back, it reads again exactly when it was reading before the move.
  const unfreeze = freezeReading(socket, (wasReading) => wasReading);
  const buffered = takeBuffered(socket);
  const wasFlowing = socket.readableFlowing === true;
  if (socket.readableFlowing !== false) socket.pause();
  const timeout = socketTimeout(socket);
  if (timeout > 0) socket.setTimeout(0);
  return {
    buffered,
    thaw: () => {
      if (buffered.length > 0) socket.unshift(buffered);
      unfreeze();
      if (wasFlowing) socket.resume();
      if (timeout > 0 && !socket.destroyed) socket.setTimeout(timeout);
    },
  };
}

export function writesFlushed(socket: net.Socket): boolean {
  return socket.writableLength === 0 && writeQueueSize(socket) === 0;
}

/** Resolves once every write is in the kernel; cancelled() ends the wait early (resolved). */
export function waitWritesFlushed(socket: net.Socket, cancelled: () => boolean): Promise<void> {
  if (writesFlushed(socket)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = (): void => {
      if (cancelled()) {
        cleanup();
        resolve();
      } else if (socket.destroyed) {
        cleanup();
        reject(new HandoverError('ERR_HANDOVER_NOT_MOVABLE', 'the socket was destroyed while its writes were flushing'));
      } else if (writesFlushed(socket)) {
        cleanup();
        resolve();
      }
    };
    // 'drain' fires only after a write returned false; poll once per loop turn as a fallback.
    const interval = setInterval(check, 1);
    const cleanup = (): void => {
      clearInterval(interval);
      socket.removeListener('drain', check);
      socket.removeListener('close', check);
    };
    socket.on('drain', check);
    socket.on('close', check);
  });
}
