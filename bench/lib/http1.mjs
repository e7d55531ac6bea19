// A minimal HTTP/1.1 keep-alive client over raw net.Sockets: cheap enough to hold 10,000
// connections in one process, and exact about what happened on each connection.
import * as net from 'node:net';

const REQUEST = Buffer.from('GET / HTTP/1.1\r\nHost: bench\r\nConnection: keep-alive\r\n\r\n');

/**
 * Conn is one keep-alive connection with at most one request in flight. request() resolves with
 * { status, pid, body } or rejects when the connection closes or errs first.
 */
export class Conn {
  constructor(port, host = '127.0.0.1') {
    this.socket = net.connect({ port, host, noDelay: true });
    this.buffer = '';
    this.waiting = undefined;
    this.closed = false;
    this.closeReason = undefined;
    this.connected = new Promise((resolve, reject) => {
      this.socket.once('connect', resolve);
      this.socket.once('error', reject);
    });
    this.socket.setEncoding('latin1');
    this.socket.on('data', (chunk) => this.onData(chunk));
    this.socket.on('error', (err) => {
      this.closeReason ??= err.code ?? err.message;
    });
    this.socket.on('close', () => {
      this.closed = true;
      this.closeReason ??= this.buffer.length > 0 ? 'closed mid-response' : 'closed by server';
      this.onClose?.(this.closeReason);
      const waiting = this.waiting;
      this.waiting = undefined;
      waiting?.reject(new Error(this.closeReason));
    });
  }

  request() {
    if (this.closed) return Promise.reject(new Error(`already closed (${this.closeReason})`));
    if (this.waiting) return Promise.reject(new Error('a request is already in flight'));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.socket.write(REQUEST);
    });
  }

  onData(chunk) {
    this.buffer += chunk;
    for (;;) {
      const end = this.buffer.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buffer.slice(0, end);
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (this.buffer.length < end + 4 + length) return;
      const body = this.buffer.slice(end + 4, end + 4 + length);
      this.buffer = this.buffer.slice(end + 4 + length);
      const status = Number(head.slice(9, 12));
      const pid = Number(/\r\nx-pid: *(\d+)/i.exec(head)?.[1] ?? 0);
      const waiting = this.waiting;
      this.waiting = undefined;
      if (waiting) waiting.resolve({ status, pid, body });
      else this.unsolicited = (this.unsolicited ?? 0) + 1; // e.g. a 408 on an idle connection
    }
  }

  destroy() {
    this.socket.destroy();
  }
}

/** histogram counts values: { value: count }. */
export function histogram(values) {
  const out = {};
  for (const value of values) out[value] = (out[value] ?? 0) + 1;
  return out;
}
