// UDP listeners: a dgram.Socket handed over like a listening TCP socket. There is nothing to
// accept and no connection to move: the successor receives on the very same kernel socket, so a
// datagram queued there is read by whichever generation receives, and none is lost while one of
// the two holds the socket. The Node internals read here: the socket's handle behind its
// 'state symbol' (lib/internal/dgram.js, Node 20-26; `socket._handle` is gone since Node 26).
import type * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import { binding } from './native';
import { HandoverError } from './errors';
import { untilListening } from './listeners';

interface UdpHandle {
  fd?: number;
  recvStart?(): number;
  recvStop?(): number;
}

/** datagramHandle: the socket's UDP handle (lib/internal/dgram.js kStateSymbol), or undefined where Node hides it. */
function datagramHandle(socket: dgram.Socket): UdpHandle | undefined {
  const symbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  const state = symbol ? (socket as unknown as Record<symbol, { handle?: UdpHandle | null } | undefined>)[symbol] : undefined;
  return state?.handle ?? undefined;
}

/** datagramBound: the socket is bound and not closed (address() throws otherwise). */
export function datagramBound(socket: dgram.Socket): boolean {
  try {
    socket.address();
    return true;
  } catch {
    return false;
  }
}

/**
 * datagramFd: the fd of a bound UDP socket. From its handle where Node still shows it; otherwise
 * found from outside: the one socket of this process (/proc/self/fd) bound to the same address.
 */
export function datagramFd(socket: dgram.Socket): number {
  const fd = datagramHandle(socket)?.fd;
  if (typeof fd === 'number' && fd >= 0) return fd;
  let local: { address: string; port: number };
  try {
    local = socket.address();
  } catch {
    throw new HandoverError('ERR_HANDOVER_INVALID_STATE', 'the UDP socket is not bound (no fd)');
  }
  const native = binding();
  const found: number[] = [];
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const candidate = Number(name);
    try {
      const info = native.socketInfo(candidate);
      if (info.type === 'dgram' && info.port === local.port && info.address === local.address) found.push(candidate);
    } catch {
      // not a socket, or the fd readdir itself used (closed since)
    }
  }
  if (found.length !== 1) {
    throw new HandoverError('ERR_HANDOVER_INVALID_STATE', `cannot tell the fd of the UDP socket on ${local.address}:${local.port} (${found.length} candidates)`);
  }
  return found[0]!;
}

/** bindDatagram binds `socket` to an existing UDP fd, or to a fresh address, and resolves once it receives. */
export function bindDatagram(socket: dgram.Socket, options: { fd: number } | { port: number; address?: string }): Promise<void> {
  // 'listening' is emitted inside bind() for an fd.
  return untilListening(socket, () => socket.bind(options as dgram.BindOptions));
}

/**
 * pauseDatagrams: this process stops reading the socket (at READY: the successor reads it now);
 * it can still send, so replies to datagrams already read go out. Returns false where the handle
 * is hidden: the socket is then closed instead (the kept dup holds the kernel socket), and a
 * rollback cannot make it receive again.
 */
export function pauseDatagrams(socket: dgram.Socket): boolean {
  const handle = datagramHandle(socket);
  if (typeof handle?.recvStop === 'function') {
    handle.recvStop();
    return true;
  }
  socket.close();
  return false;
}

/** resumeDatagrams (rollback): this process reads the socket again; false if it was closed by pauseDatagrams(). */
export function resumeDatagrams(socket: dgram.Socket): boolean {
  const handle = datagramHandle(socket);
  if (typeof handle?.recvStart !== 'function' || !datagramBound(socket)) return false;
  handle.recvStart();
  return true;
}
