// The core of a SOFA Bolt RPC server, serving com.example.Echo (no handover here:
// examples/rpc-server.mjs adds it; this file knows nothing of it).
//
// It decodes Bolt frames from a buffer of its own instead of sofa-bolt-node's
// ProtocolDecoder stream: that stream hides its partial frame in a private
// field, whereas a connection that moves to another process must hand over
// exactly the bytes it has read but not yet decoded. Here those bytes are
// always available (conn.takeLeftover()) and conn.halfFrame says whether any
// are buffered. sofa-bolt-node still does the real work: protocol.decode() on
// one complete frame, protocol.responseEncode()/heartbeatAckEncode() for answers.
// See examples/bolt-codec-notes.md for the wire format and the references.

import net from 'node:net';
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
// Deep import: the package has no "exports" map, and the frame-level functions
// (decode one frame, encode one response) live here, not in its index.
const protocol = require('sofa-bolt-node/lib/protocol');

// Bolt header constants (sofa-bolt-node lib/protocol/enum/*.js).
const BOLT_V1 = 0x01;
const BOLT_V2 = 0x02;
const TYPE_RESPONSE = 0x00;
const TYPE_REQUEST_ONEWAY = 0x02;
// Refuse absurd lengths rather than buffering garbage until memory runs out.
export const MAX_FRAME = 64 * 1024 * 1024;

/**
 * Length of the frame that starts at buf[0], or 0 if the header is not
 * complete yet. Same arithmetic as sofa-bolt-node lib/decoder.js
 * packetLengthFns (which is not exported), but with unsigned reads: the
 * library's readInt16BE would turn a 32 KiB+ header into a negative length.
 * Throws on a byte stream that is not Bolt, so the caller can drop it.
 */
export function frameLength(buf) {
  if (buf.length === 0) return 0;
  const proto = buf[0];
  if (proto !== BOLT_V1 && proto !== BOLT_V2) {
    throw new Error(`not a Bolt frame: protocol byte 0x${proto.toString(16)}`);
  }
  // v2 inserts a bolt-version byte after the protocol byte, so every field
  // sits one byte later (and a crc flag adds one more header byte).
  const o = proto === BOLT_V2 ? 1 : 0;
  if (buf.length < 2 + o) return 0;
  const isResponse = buf[1 + o] === TYPE_RESPONSE;
  // Requests carry a 4-byte timeout where responses carry a 2-byte status.
  const headerLen = (isResponse ? 20 : 22) + 2 * o;
  const lens = (isResponse ? 12 : 14) + 2 * o; // classLen, then headerLen, contentLen
  if (buf.length < headerLen) return 0;
  let len = headerLen + buf.readUInt16BE(lens) + buf.readUInt16BE(lens + 2) + buf.readUInt32BE(lens + 4);
  if (o && buf[11] === 0x01) len += 4; // crc32 trailer
  if (len > MAX_FRAME) throw new Error(`Bolt frame of ${len} bytes exceeds ${MAX_FRAME}`);
  return len;
}

// The service. Plain async functions; the dispatcher awaits whatever they return.
export const echoService = {
  async echo(str) {
    return str;
  },
  async slow(ms) {
    if (!Number.isFinite(ms) || ms < 0) throw new TypeError(`slow(ms): bad ms ${ms}`);
    return new Promise(resolve => setTimeout(resolve, ms, ms));
  },
  async pid() {
    return process.pid;
  },
};

const services = new Map([ [ 'com.example.Echo', echoService ] ]);

async function invoke(data) {
  // serverSignature is "interface:version" (sofa-rpc-node consumer id); any version is served.
  const iface = String(data.serverSignature || '').split(':')[0];
  const service = services.get(iface);
  if (!service) throw new Error(`not found service: ${data.serverSignature}`);
  const method = data.methodName;
  if (!Object.hasOwn(service, method)) {
    throw new Error(`Can not find method: ${iface}#${method}()`);
  }
  return service[method](...(data.args || []));
}

/**
 * One Bolt connection: incremental decoding from its own buffer, dispatch,
 * responses written as soon as each call finishes (so out of order: Bolt
 * matches them by request id).
 *
 * Events (informational, nothing needs to listen): 'socketError' (err) for
 * socket errors such as ECONNRESET; 'protocolError' (err) just before the
 * socket is destroyed because its bytes are not Bolt; 'idle' when the last
 * request in flight has been answered (inFlight dropped to 0).
 */
export class BoltConnection extends EventEmitter {
  constructor(socket, leftover) {
    super();
    this.socket = socket;
    /** Requests decoded and not yet answered. They need not reach 0 before a
     *  move: their responses can follow as late writes through `writer`. */
    this.inFlight = 0;
    // Received, not yet decoded: chunks are kept apart and only joined once a
    // whole frame (or header) is there, so a large frame arriving in many
    // reads is copied once instead of once per read.
    this._chunks = [];
    this._buffered = 0;
    this._need = 1; // buffered bytes needed before decoding can make progress
    // hessian's cache of compiled class decoders (sofa-rpc-node keeps one per
    // connection too). A pure cache: every frame still carries its class
    // definitions, so a new owner of the connection starts fine without it.
    const classCache = new Map();
    classCache.enableCompile = true;
    this._decodeOptions = { classCache };
    /** Where encoded frames go. Replaceable: after the socket has moved, a late
     *  response must be forwarded to the new owner instead of written here. */
    this.writer = buf => {
      if (!socket.destroyed && socket.writable) socket.write(buf);
    };

    this._onData = chunk => this._receive(chunk);
    // Without a listener an ECONNRESET would crash the process; the client
    // going away is routine for a server.
    socket.on('error', err => this.emit('socketError', err));
    socket.setNoDelay(true); // small responses must not wait for Nagle
    this.attach(leftover);
  }

  /** Starts (or, after detach(), resumes) decoding: `leftover` first, then
   *  whatever the socket reads. Leftover bytes were read before the socket
   *  reached this decoder, so they come first; decoding them synchronously,
   *  before any 'data' event can fire, keeps the byte order. Undoes detach()
   *  when handed what detach() returned (a move that did not happen). */
  attach(leftover) {
    if (leftover && leftover.length) this._receive(Buffer.from(leftover));
    if (this.socket.destroyed) return; // the leftover was not Bolt
    this.socket.on('data', this._onData);
    // A socket paused by a previous owner (detach()) does not start flowing
    // again just because a 'data' listener was added.
    this.socket.resume();
  }

  /** True when bytes of an incomplete frame are buffered: not a safe point to
   *  move the connection without handing them over. Complete frames are always
   *  decoded synchronously on arrival, so anything buffered is a partial frame. */
  get halfFrame() {
    return this._buffered > 0;
  }

  /** Removes and returns the undecoded bytes (an empty Buffer if none). Call
   *  it only once reading has stopped (see detach()), or bytes read later
   *  would be decoded here after the leftover was handed over. */
  takeLeftover() {
    const buf = this._buffered ? Buffer.concat(this._chunks, this._buffered) : Buffer.alloc(0);
    this._chunks = [];
    this._buffered = 0;
    this._need = 1;
    return buf;
  }

  /** Stops decoding this socket and returns its leftover. The socket is paused,
   *  not closed. pause() does not stop Node from reading the kernel buffer:
   *  whatever it reads after this waits in the socket's readable buffer
   *  (socket.read()) and comes AFTER the leftover on the wire. Responses still
   *  in flight keep going through `writer`. */
  detach() {
    this.socket.pause();
    this.socket.removeListener('data', this._onData);
    return this.takeLeftover();
  }

  _receive(chunk) {
    this._chunks.push(chunk);
    this._buffered += chunk.length;
    if (this._buffered < this._need) return;

    let buf = this._chunks.length === 1 ? this._chunks[0] : Buffer.concat(this._chunks, this._buffered);
    let offset = 0;
    try {
      for (;;) {
        const rest = buf.subarray(offset);
        const len = frameLength(rest);
        if (len === 0 || rest.length < len) {
          // Header incomplete: retry on the next byte (a header is at most 24
          // bytes). Length known: nothing to do until the whole frame is here.
          this._need = len === 0 ? rest.length + 1 : len;
          break;
        }
        offset += len;
        this._onFrame(rest.subarray(0, len));
      }
    } catch (err) {
      this._protocolError(err);
      return;
    }
    // Only the partial frame stays; it may be a view of a larger read buffer,
    // which is fine: Node never reuses a buffer it has handed to 'data'.
    buf = buf.subarray(offset);
    this._chunks = buf.length ? [ buf ] : [];
    this._buffered = buf.length;
  }

  _onFrame(frame) {
    const o = frame[0] === BOLT_V2 ? 1 : 0;
    const type = frame[1 + o];
    let packet;
    try {
      // Decodes exactly one frame; the framing above stays valid even if the
      // body does not, so a bad body costs one error response, not the connection.
      packet = protocol.decode(frame, this._decodeOptions);
    } catch (err) {
      if (type !== TYPE_RESPONSE && type !== TYPE_REQUEST_ONEWAY) {
        const id = frame.readInt32BE(5 + o);
        const options = { protocolType: o ? 'bolt2' : 'bolt', boltVersion: o ? frame[1] : 1, crcEnable: o && frame[11] === 1 };
        this._respond(id, options, { isError: true, errorMsg: `cannot decode request: ${err.message}`, appResponse: null });
      }
      return;
    }
    if (packet.packetType === 'heartbeat') {
      this.writer(protocol.heartbeatAckEncode(packet.packetId, packet.options));
    } else if (packet.packetType === 'request') {
      // The decoded packet does not say "oneway"; only the header type byte does.
      this._serve(packet, type === TYPE_REQUEST_ONEWAY);
    }
    // Responses and heartbeat acks: this server sends no requests, nothing to match.
  }

  async _serve(packet, oneway) {
    this.inFlight++;
    let res;
    try {
      res = { isError: false, errorMsg: null, appResponse: await invoke(packet.data) };
    } catch (err) {
      res = { isError: true, errorMsg: String(err && err.message || err), appResponse: null };
    }
    this.inFlight--;
    if (!oneway) {
      try {
        this._respond(packet.packetId, packet.options, res);
      } catch (err) {
        // A result hessian cannot encode: the caller still gets an answer.
        this._respond(packet.packetId, packet.options,
          { isError: true, errorMsg: `cannot encode response: ${err.message}`, appResponse: null });
      }
    }
    // Every answer is written (handed to `writer`): nothing more will be
    // written on this connection unless a new request is decoded.
    if (this.inFlight === 0) this.emit('idle');
  }

  _respond(id, reqOptions, res) {
    // As sofa-rpc-node's own server does: a failed call (isError) goes out with
    // status SERVER_EXCEPTION and an RpcServerException body, which the client
    // rejects with "com.alipay.remoting.rpc.exception.RpcServerException: Error: <errorMsg>".
    // The request's options carry its framing (bolt/bolt2, version, crc).
    const buf = protocol.responseEncode(id, res, {
      ...reqOptions,
      // Only hessian2 is served; without a proto file protobuf cannot be decoded
      // anyway, and the client reads the codec of each response from its header.
      codecType: 'hessian2',
      crcEnable: !!reqOptions.crcEnable,
    });
    this.writer(buf);
  }

  _protocolError(err) {
    // The byte stream is not Bolt (or a length is absurd): there is no frame
    // boundary left to resynchronise on, so the connection cannot continue.
    this._chunks = [];
    this._buffered = 0;
    this.emit('protocolError', err);
    this.socket.destroy();
  }
}

/**
 * Attaches a Bolt handler to an existing, connected socket, decoding
 * `leftover` (bytes read from this connection by a previous owner but not
 * decoded) before anything read from the socket.
 */
export function adoptConnection(socket, leftover) {
  return new BoltConnection(socket, leftover);
}

/**
 * A net.Server serving com.example.Echo over Bolt. onConnection(conn) sees
 * every BoltConnection, accepted or adopted through server.adoptConnection().
 */
export function createRpcServer({ onConnection } = {}) {
  const server = net.createServer(socket => {
    const conn = new BoltConnection(socket);
    if (onConnection) onConnection(conn);
  });
  server.adoptConnection = (socket, leftover) => {
    const conn = adoptConnection(socket, leftover);
    if (onConnection) onConnection(conn);
    return conn;
  };
  return server;
}
