// The one module that reads Node's internals (stream handles, socket and server fields; the HTTP ones in
// src/runtime-http.ts beside it): typed accessors, and a start-up self-test on real objects that names what changed.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { binding } from './native';
import { checkHttpInternals } from './runtime-http';

/** The libuv stream handle under a net.Socket (TCPWrap / PipeWrap), as the moves use it. */
export interface StreamHandle {
  fd: number;
  /** Set by net.Socket when it starts reading; readStart()/readStop() do not change it. */
  reading: boolean;
  writeQueueSize: number;
  readStart(): number;
  readStop(): number;
  close(cb?: () => void): void;
}

type WriteCallback = (err?: Error | null) => void;
export type WriteMethod = (chunk: Buffer | string, encoding: BufferEncoding, cb: WriteCallback) => void;
export type WritevMethod = (chunks: { chunk: Buffer | string; encoding: BufferEncoding }[], cb: WriteCallback) => void;
export type FinalMethod = (cb: WriteCallback) => void;

interface SocketInternals {
  _handle: StreamHandle | null;
  _server?: net.Server | null;
  server?: net.Server;
  timeout?: number;
  _readableState?: { length: number; encoding: BufferEncoding | null; ended: boolean };
  _write: WriteMethod;
  _writev: WritevMethod;
  _final: FinalMethod;
  /** Set by the http server while it holds back a connection's reads (lib/_http_server.js). */
  _paused?: boolean;
}

function internals(socket: net.Socket): SocketInternals {
  return socket as unknown as SocketInternals;
}

/** handleOf: the socket's stream handle, or null (destroyed, not connected, or not a stream). */
export function handleOf(socket: net.Socket): StreamHandle | null {
  return internals(socket)._handle ?? null;
}

/** socketFd: the fd under a socket's handle, or -1. */
export function socketFd(socket: net.Socket): number {
  const fd = handleOf(socket)?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** detachHandle takes the handle away from the socket (the object lives on as a forwarder) and closes it. */
export function detachHandle(socket: net.Socket): void {
  const record = internals(socket);
  const handle = record._handle;
  record._handle = null;
  handle?.close();
}

/** deferClose: a destroy() before `until` settles closes the handle only then (the fd is lent out). */
export function deferClose(socket: net.Socket, until: Promise<void>): void {
  const record = socket as unknown as { _destroy: (err: Error | null, cb: (err?: Error | null) => void) => void };
  const original = record._destroy;
  let settled = false;
  record._destroy = (err, cb) => {
    if (settled) original.call(socket, err, cb);
    else void until.finally(() => original.call(socket, err, cb));
  };
  void until.finally(() => {
    settled = true;
    delete (record as Partial<typeof record>)._destroy;
  });
}

/** writeQueueSize: bytes libuv still holds for the kernel. */
export function writeQueueSize(socket: net.Socket): number {
  return handleOf(socket)?.writeQueueSize ?? 0;
}

/** readableState: what the stream read from the kernel but has not delivered yet. */
export function readableState(socket: net.Socket): { length: number; encoding: BufferEncoding | null } | undefined {
  return internals(socket)._readableState;
}

/** socketTimeout: the idle timeout set by socket.setTimeout() (0 = none). */
export function socketTimeout(socket: net.Socket): number {
  const timeout = internals(socket).timeout;
  return typeof timeout === 'number' && timeout > 0 ? timeout : 0;
}

/** The Writable hooks the moves replace to carry, hold or forward writes. */
export interface WriteHooks {
  _write: WriteMethod;
  _writev: WritevMethod;
  _final: FinalMethod;
}

/** overrideWrites installs own-property write hooks on one socket; restoreWrites removes them. */
export function overrideWrites(socket: net.Socket, hooks: WriteHooks): void {
  Object.assign(internals(socket), hooks);
}

export function restoreWrites(socket: net.Socket): void {
  const record = socket as unknown as Record<string, unknown>;
  delete record._write;
  delete record._writev;
  delete record._final;
}

/** writevDirect writes straight to the handle (net.Socket#_writev), ahead of what the Writable buffers. */
export function writevDirect(socket: net.Socket, chunks: Buffer[], cb: WriteCallback): void {
  internals(socket)._writev(
    chunks.map((chunk) => ({ chunk, encoding: 'buffer' as BufferEncoding })),
    cb,
  );
}

/** finalDirect ends the socket as net.Socket would (a FIN after the queued writes). */
export function finalDirect(socket: net.Socket, cb: WriteCallback): void {
  (net.Socket.prototype as unknown as SocketInternals)._final.call(socket, cb);
}

/** attachToServer does what net.Server does for a connection it accepted: link and count it. */
export function attachToServer(socket: net.Socket, server: net.Server): void {
  const record = internals(socket);
  record.server = server;
  record._server = server;
  (server as unknown as { _connections: number })._connections++;
}

/** serverAllowsHalfOpen: the allowHalfOpen a server gives its connections. */
export function serverAllowsHalfOpen(server: net.Server): boolean {
  return (server as unknown as { allowHalfOpen?: boolean }).allowHalfOpen ?? false;
}

/** adoptSocket wraps a connected stream fd without reading from it (manualStart) until resume(). */
export function adoptSocket(fd: number, allowHalfOpen: boolean): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen, manualStart: true } as net.SocketConstructorOpts);
}

/** listeningServerFd: the fd of a listening net.Server, or -1. */
export function listeningServerFd(server: net.Server): number {
  const fd = (server as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
  return typeof fd === 'number' ? fd : -1;
}

/** pausedByServer: the http server paused the connection (its responses are not being read: back-pressure). */
export function pausedByServer(socket: net.Socket): boolean {
  return internals(socket)._paused === true;
}

/**
 * freezeReading stops reading at the kernel (what an HTTP parser consumes directly, bypassing the
 * stream) and keeps anything (resume(), the server's readStart after a message) from restarting
 * it. Bytes left in the kernel move with the fd. Returns the undo, which restarts reading when
 * `restartIf(wasReading)` holds: by default the way Node does (onSocketResume), unless something
 * paused the socket meanwhile.
 */
export function freezeReading(socket: net.Socket, restartIf: (wasReading: boolean) => boolean = () => !socket.destroyed && !pausedByServer(socket) && socket.readableFlowing !== false): () => void {
  const handle = handleOf(socket);
  if (!handle || typeof handle.readStop !== 'function' || typeof handle.readStart !== 'function') return () => undefined;
  const own = Object.prototype.hasOwnProperty.call(handle, 'readStart') ? handle.readStart : undefined;
  const wasReading = handle.reading;
  handle.readStop();
  handle.reading = false;
  handle.readStart = () => 0;
  return () => {
    if (own) handle.readStart = own;
    else delete (handle as Partial<StreamHandle>).readStart;
    if (restartIf(wasReading)) {
      handle.reading = true;
      handle.readStart();
    }
  };
}

// --- The self-test ---

export interface RuntimeCapabilities {
  /** Live connections can be moved on this runtime (every internal below checked). */
  moveConnections: boolean;
  /** HTTP connections can be told idle from busy (the connections list). */
  httpIdleTracking: boolean;
  /** One line per internal that is missing or behaves differently, naming it. */
  problems: string[];
  /** false when the self-test could not make its sockets (no free fd): not cached, asked again next time. */
  conclusive: boolean;
}

let cached: RuntimeCapabilities | undefined;

/**
 * runtimeCapabilities checks, once, on real objects (a net.Socket over a connected unix stream
 * pair made by the addon, a net.Server, an http.Server that never listens), every internal the
 * moves read. Call it at start-up, while fds are free: a self-test that cannot make its sockets
 * checks what it can without them and is not cached.
 */
export function runtimeCapabilities(): RuntimeCapabilities {
  if (cached) return cached;
  const problems: string[] = [];
  let conclusive = true;
  try {
    checkSocketInternals(problems);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'EMFILE' || code === 'ENFILE' || code === 'ENOMEM') conclusive = false;
    else problems.push(`self-test of net.Socket internals failed: ${(err as Error).message}`);
  }
  const httpProblems: string[] = [];
  checkHttpInternals(httpProblems);
  const result: RuntimeCapabilities = {
    moveConnections: problems.length === 0,
    httpIdleTracking: httpProblems.length === 0,
    problems: [...problems, ...httpProblems].map((problem) => `Node.js ${process.version}: ${problem}`),
    conclusive,
  };
  if (conclusive) cached = result;
  return result;
}

/**
 * socketProblems: what a live, connected socket lacks of the internals a move reads (the check
 * used on the connection itself when the self-test could not run).
 */
export function socketProblems(socket: net.Socket): string[] {
  const problems: string[] = [];
  checkPrototypes(problems);
  checkLiveSocket(socket, socketFd(socket), problems);
  return problems;
}

function checkPrototypes(problems: string[]): void {
  const proto = net.Socket.prototype as unknown as Record<string, unknown>;
  for (const name of ['_write', '_writev', '_final', '_destroy', 'unshift', 'setTimeout']) {
    if (typeof proto[name] !== 'function') problems.push(`net.Socket#${name} is not a function`);
  }
  const server = new net.Server();
  if (typeof (server as unknown as Record<string, unknown>)._connections !== 'number') problems.push('net.Server#_connections is not a number');
}

function checkLiveSocket(socket: net.Socket, fd: number, problems: string[]): void {
  const handle = handleOf(socket) as unknown as Record<string, unknown> | null;
  if (!handle) {
    problems.push('net.Socket#_handle is missing on a connected socket');
    return;
  }
  if (handle.fd !== fd || fd < 0) problems.push(`net.Socket#_handle.fd is ${String(handle.fd)}, not the socket's fd`);
  for (const name of ['readStart', 'readStop', 'close']) if (typeof handle[name] !== 'function') problems.push(`net.Socket#_handle.${name} is not a function`);
  if (typeof handle.writeQueueSize !== 'number') problems.push('net.Socket#_handle.writeQueueSize is not a number');
  if (handle.reading !== undefined && typeof handle.reading !== 'boolean') problems.push('net.Socket#_handle.reading is not a boolean');
  const state = readableState(socket) as Record<string, unknown> | undefined;
  if (!state || typeof state.length !== 'number') problems.push('net.Socket#_readableState.length is not a number');
}

/** A connected unix stream pair made without the network: listen, connect, accept on a private name. */
function streamPair(): { a: number; b: number; disown: (fd: number) => void; cleanup: () => void } {
  const native = binding();
  let dir: string | undefined;
  let name: string;
  if (process.platform === 'linux') {
    name = `\0handover-selftest-${process.pid}-${Math.random().toString(16).slice(2)}`;
  } else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-selftest-'));
    name = path.join(dir, 's');
  }
  const fds: number[] = [];
  const cleanup = (): void => {
    for (const fd of fds.splice(0)) {
      try {
        native.close(fd);
      } catch {
        // already closed by its owner
      }
    }
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    const listener = native.unixStreamListen(name, 1);
    fds.push(listener);
    const a = native.unixStreamConnect(name);
    fds.push(a);
    const b = native.accept(listener);
    if (b < 0) throw new Error('accept found no pending connection');
    fds.push(b);
    native.close(fds.shift()!); // the listener
    const disown = (fd: number): void => void fds.splice(fds.indexOf(fd), 1);
    return { a, b, disown, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

function checkSocketInternals(problems: string[]): void {
  checkPrototypes(problems);
  const pair = streamPair();
  let socket: net.Socket | undefined;
  try {
    socket = adoptSocket(pair.b, false);
    pair.disown(pair.b); // the socket closes it
    checkLiveSocket(socket, pair.b, problems);
    const handle = handleOf(socket) as unknown as Record<string, unknown> | null;
    if (!handle) return;
    // manualStart: a socket made for adoption must not read before it is told to.
    if (handle.reading === true) problems.push('the manualStart option no longer keeps a socket from reading');
    if (typeof handle.readStop === 'function' && (handle.readStop as () => number).call(handle) !== 0) problems.push('net.Socket#_handle.readStop() did not return 0');
    socket.setTimeout(1234);
    if (socketTimeout(socket) !== 1234) problems.push('net.Socket#timeout does not report the value given to setTimeout()');
    socket.setTimeout(0);
  } finally {
    socket?.destroy();
    pair.cleanup();
  }
}

/** resetRuntimeCapabilities forgets the cached result (tests only). */
export function resetRuntimeCapabilities(): void {
  cached = undefined;
}
