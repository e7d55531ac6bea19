// The one typed interface of the native addon (native/binding.cc) and its loader.
// Native code makes syscalls on integer fds and Buffers; every policy lives in TypeScript.
import * as path from 'node:path';

/** Credentials of the process at the other end of a unix socket (SO_PEERCRED / getpeereid). */
export interface PeerCredentials {
  /** -1 where the platform does not report it (macOS). */
  pid: number;
  uid: number;
  gid: number;
}

export type SocketType = 'stream' | 'dgram' | 'seqpacket' | 'raw' | 'unknown';
export type SocketFamily = 'inet' | 'inet6' | 'unix' | 'unknown';

/** What the kernel says about a socket fd. */
export interface SocketInfo {
  type: SocketType;
  family: SocketFamily;
  /** SO_ACCEPTCONN. */
  listening: boolean;
  /** Local address for inet/inet6 ('0.0.0.0', '::1', ...). */
  address?: string;
  /** Local port for inet/inet6. */
  port?: number;
  /** Local path for a unix socket ('' when unnamed; abstract names start with '\0'). */
  path?: string;
}

/** Result of one recvmsg(2). `bytes === 0` with no fds means the peer closed (end of stream). */
export interface ReceivedMessage {
  bytes: number;
  fds: number[];
}

/** A uv_poll_t watching one fd for readiness. The callback runs on the event loop. */
export interface Poller {
  /** (Re)arm the watcher for the given events. Both false is the same as stop(). */
  start(readable: boolean, writable: boolean): void;
  stop(): void;
  /** Stops and releases the watcher; it does not close the fd. Idempotent. */
  close(): void;
}

/** status < 0 is a libuv error (negative errno); otherwise readable/writable/disconnect flags. */
export type PollCallback = (status: number, readable: boolean, writable: boolean, disconnect: boolean) => void;

export interface Binding {
  /** Most fds one sendmsg(2) may carry: Linux's SCM_MAX_FD, 253. */
  readonly MAX_FDS_PER_MESSAGE: number;
  /** socketpair(AF_UNIX, SOCK_SEQPACKET), both ends non-blocking and close-on-exec. */
  seqpacketPair(): [number, number];
  /** socket+bind+listen on a unix path, SOCK_SEQPACKET, non-blocking, close-on-exec. Does not unlink first. */
  seqpacketListen(path: string, backlog: number): number;
  /** socket+connect to a unix path, SOCK_SEQPACKET, non-blocking: a connected fd, or EAGAIN when the listener's backlog is full. */
  seqpacketConnect(path: string): number;
  /** socket+bind+listen on a unix path, SOCK_STREAM, non-blocking, close-on-exec (bound by us so libuv never unlinks it). */
  unixStreamListen(path: string, backlog: number): number;
  /** socket+connect to a unix path, SOCK_STREAM; used only to tell a live socket file from a stale one. */
  unixStreamConnect(path: string): number;
  /** accept4(2), non-blocking + close-on-exec; -1 when nothing is pending (EAGAIN). */
  accept(fd: number): number;
  /**
   * sendmsg(2) of `data` with `fds` attached (SCM_RIGHTS, at most MAX_FDS_PER_MESSAGE), MSG_NOSIGNAL.
   * Returns the bytes written, or -1 when the socket buffer is full (EAGAIN); EINTR is retried.
   */
  sendmsg(fd: number, data: Buffer, fds: readonly number[]): number;
  /**
   * recvmsg(2) into `buffer` with MSG_CMSG_CLOEXEC and room for `maxFds` fds. Returns null on EAGAIN.
   * On MSG_CTRUNC (more fds than room) or MSG_TRUNC (message larger than buffer) every fd that
   * did arrive is closed and an error with code 'EMSGSIZE' is thrown.
   */
  recvmsg(fd: number, buffer: Buffer, maxFds: number): ReceivedMessage | null;
  peerCredentials(fd: number): PeerCredentials;
  socketInfo(fd: number): SocketInfo;
  /**
   * One check per fd, for the fds of a CONN frame: 0 a connected stream socket (inet, inet6 or
   * unix, not listening); 1 not a socket; 2 not a stream; 3 another family; 4 listening.
   */
  checkConnections(fds: readonly number[]): Uint8Array;
  /** epoll_create1(EPOLL_CLOEXEC): a set of fds watched for readability (Linux; ENOSYS elsewhere). */
  epollCreate(): number;
  /** epoll_ctl(ADD) of every fd, EPOLLIN | EPOLLRDHUP; throws at the first failure. */
  epollAdd(epollFd: number, fds: readonly number[]): void;
  /** epoll_ctl(DEL). */
  epollDelete(epollFd: number, fd: number): void;
  /** epoll_wait with no timeout: the fds readable or hung up now (at most 256). */
  epollWait(epollFd: number): number[];
  /** dup with close-on-exec (F_DUPFD_CLOEXEC). */
  dup(fd: number): number;
  close(fd: number): void;
  setNonBlocking(fd: number, on: boolean): void;
  /**
   * sd_notify(3) without libsystemd: sends `data` as one datagram, with `fds` attached (SCM_RIGHTS),
   * to the unix socket at `path` (a leading '\0' names an abstract socket) from a fresh unbound
   * SOCK_DGRAM socket. Blocks at most `timeoutMs` while the receiver's queue is full (then EAGAIN).
   * Returns the bytes sent.
   */
  notify(path: string, data: Buffer, fds: readonly number[], timeoutMs: number): number;
  /** A non-blocking, close-on-exec SOCK_DGRAM socket bound at `path`: the receiving end of notify() (tests play systemd with it). */
  unixDatagramBind(path: string): number;
  /**
   * waitpid(-1, WNOHANG): how one ended child (adopted orphans included) ended, or null when none
   * has ended yet or there is no child. `signal` is 0 for an exit, else the signal number (code -1).
   */
  reapChild(): { pid: number; code: number; signal: number } | null;
  /** prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are reparented here (Linux; ENOSYS elsewhere). */
  setChildSubreaper(): void;
  /** A readiness watcher on fd (uv_poll_t on the main loop). */
  createPoller(fd: number, callback: PollCallback): Poller;
}

/** An error thrown by the addon: shaped like Node's own system errors. */
export interface NativeError extends Error {
  code: string;
  errno: number;
  syscall: string;
}

export function isNativeError(err: unknown): err is NativeError {
  return err instanceof Error && typeof (err as Partial<NativeError>).code === 'string' && typeof (err as Partial<NativeError>).syscall === 'string';
}

let loaded: Binding | undefined;
let injected: ((real: Binding) => Binding) | undefined;
let wrapped: Binding | undefined;

/**
 * injectBinding replaces the syscalls seen by the rest of the package with `wrap(real)` (tests: a
 * syscall that fails where the kernel rarely does), or restores the real ones with undefined.
 * Exported only from 'handover/testing'.
 */
export function injectBinding(wrap: ((real: Binding) => Binding) | undefined): void {
  injected = wrap;
  wrapped = undefined;
}

/** The addon, loaded once: a local build (build/Release) if there is one, else the prebuilt binary (prebuilds/). */
export function binding(): Binding {
  if (loaded === undefined) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const load = require('node-gyp-build') as (dir: string) => unknown;
    loaded = load(path.join(__dirname, '..')) as Binding;
  }
  if (injected) return (wrapped ??= injected(loaded));
  return loaded;
}
