// Fuzzing the frame layer: FdChannel (chunks, reassembly, fds) and protocol decode(), with raw
// messages sent by the addon into a real FdChannel + ControlSession over a real socketpair.
// Properties: never a crash or a hang, never a leaked fd (every received fd is delivered to the
// handler or closed), every failure an ERR_HANDOVER_PROTOCOL error, valid frames round-trip
// exactly. A reference parser written here from the wire format predicts each outcome.
// Seeded: a failure prints FUZZ_SEED; FUZZ_RUNS raises the case counts (npm run fuzz).
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as tls from 'node:tls';
import * as net from 'node:net';
import * as path from 'node:path';
import fc from 'fast-check';
import { FdChannel } from 'handover';
import { binding } from '../dist/native.js';
import { ControlSession } from '../dist/session.js';
import { decode, encode } from '../dist/protocol.js';
import { tmpDir } from './helpers.mjs';
import { CHUNK_HEADER, MAGIC, VERSION, FIRST, LAST, MAX_MESSAGE, assertProperty, chunkHeader, chunksOf, messageArb, normalize, runs, withFds } from './fixtures/fuzz-common.mjs';

const native = binding();
const CASE_TIMEOUT = 5000;

// fds of every kind a peer could attach: regular files (distinct inodes, so order is checkable),
// a directory, a FIFO (a pipe), unix sockets, a listening TCP socket.
let dir;
let tcpServer;
const templates = {};
const files = [];

before(async () => {
  // Node 22+ loads the CA certificates (NODE_EXTRA_CA_CERTS too) on a thread once node:tls is
  // loaded (handover imports node:https): let that finish, or its fd comes and goes mid-case.
  tls.createSecureContext();
  dir = tmpDir('handover-fuzz-');
  for (let i = 0; i < 300; i++) {
    const file = path.join(dir, `f${i}`);
    fs.writeFileSync(file, String(i));
    files.push(file);
  }
  const fifo = path.join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  templates.pipe = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  templates.dir = fs.openSync(dir, 'r');
  templates.seqpacket = native.seqpacketPair();
  tcpServer = net.createServer();
  await new Promise((resolve) => tcpServer.listen(0, '127.0.0.1', resolve));
  templates.tcp = tcpServer._handle.fd;
});

after(async () => {
  fs.closeSync(templates.pipe);
  fs.closeSync(templates.dir);
  for (const fd of templates.seqpacket) native.close(fd);
  await new Promise((resolve) => tcpServer.close(resolve));
  fs.rmSync(dir, { recursive: true, force: true });
});

const fdKind = fc.constantFrom('file', 'file', 'pipe', 'dir', 'seqpacket', 'tcp');

/** openFd opens a new fd of a kind; files get the i-th distinct file. */
function openFd(kind, i) {
  switch (kind) {
    case 'file':
      return fs.openSync(files[i % files.length], 'r');
    case 'seqpacket':
      return native.dup(templates.seqpacket[i % 2]);
    default:
      return native.dup(templates[kind]);
  }
}

function identity(fd) {
  const st = fs.fstatSync(fd);
  return `${st.dev}:${st.ino}`;
}

function fdTable() {
  return fs.readdirSync('/proc/self/fd').sort().join(' ');
}

/** sendRaw sends one datagram with `kinds.length` fresh fds, then closes our copies. False once the receiver is gone. */
async function sendRaw(fd, data, kinds, sentIdentities) {
  const fds = kinds.map((kind, i) => openFd(kind, sentIdentities.length + i));
  for (const sent of fds) sentIdentities.push(identity(sent));
  try {
    for (;;) {
      let written;
      try {
        written = native.sendmsg(fd, data, fds);
      } catch (err) {
        if (err.code === 'EPIPE' || err.code === 'ECONNRESET' || err.code === 'ECONNREFUSED') return false;
        throw err;
      }
      if (written >= 0) {
        assert.equal(written, data.length, 'seqpacket sends whole messages');
        return true;
      }
      // EAGAIN: the receiver reads on the event loop; give it a turn.
      await new Promise((resolve) => setImmediate(resolve));
    }
  } finally {
    for (const sent of fds) fs.closeSync(sent);
  }
}

/**
 * The reference parser: what the receiver must do with a sequence of datagrams. Returns the
 * frames it delivers (payload, fd count, index of their first fd among all fds sent), and how it
 * ends: 'error' (at datagram `at`), 'end' (clean close), or 'open' (still waiting, maybe mid-frame).
 */
function model(datagrams, { maxFrameSize, maxFdsPerFrame }, senderCloses) {
  const frames = [];
  let assembling;
  let fdIndex = 0;
  for (let at = 0; at < datagrams.length; at++) {
    const { data, kinds } = datagrams[at];
    const fdsHere = kinds.length;
    const firstFd = fdIndex;
    fdIndex += fdsHere;
    const error = () => ({ frames, outcome: 'error', at });
    if (data.length === 0 && fdsHere === 0) {
      // An empty datagram reads like the end of the stream on SOCK_SEQPACKET.
      return { frames, outcome: assembling ? 'error' : 'end', at };
    }
    if (data.length > MAX_MESSAGE) return error();
    if (data.length < CHUNK_HEADER) return error();
    if (data.readUInt16BE(0) !== MAGIC || data.readUInt8(2) !== VERSION) return error();
    const flags = data.readUInt8(3);
    if (flags & ~(FIRST | LAST)) return error();
    const length = data.readUInt32BE(4);
    const fdCount = data.readUInt32BE(8);
    const body = data.subarray(CHUNK_HEADER);
    if (flags & FIRST) {
      if (assembling) return error();
      if (length > maxFrameSize || fdCount > maxFdsPerFrame) return error();
      assembling = { length, fdCount, parts: [], bytes: 0, fds: 0, firstFd };
    } else if (!assembling) return error();
    if (length !== assembling.length || fdCount !== assembling.fdCount) return error();
    if (assembling.bytes + body.length > length || assembling.fds + fdsHere > fdCount) return error();
    if (assembling.fds === 0) assembling.firstFd = firstFd;
    assembling.parts.push(body);
    assembling.bytes += body.length;
    assembling.fds += fdsHere;
    if (flags & LAST) {
      if (assembling.bytes !== length || assembling.fds !== fdCount) return error();
      frames.push({ payload: Buffer.concat(assembling.parts), fdCount, firstFd: assembling.firstFd });
      assembling = undefined;
    }
  }
  if (senderCloses) return { frames, outcome: assembling ? 'error' : 'end', at: datagrams.length };
  return { frames, outcome: 'open', at: datagrams.length };
}

/** What a session delivers of those frames: messages up to the first that does not decode. */
function sessionModel(frames) {
  const messages = [];
  for (const frame of frames) {
    try {
      messages.push({ message: decode({ payload: frame.payload, fds: new Array(frame.fdCount).fill(-1) }), frame });
    } catch (err) {
      assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL');
      return { messages, decodeError: true };
    }
  }
  return { messages, decodeError: false };
}

// ---- arbitraries: datagrams -------------------------------------------------------------------

/** A frame's content: a valid message with the fds it needs (mostly), or any bytes with any fds. */
const frameContent = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ message: messageArb, kind: fdKind }).map(({ message, kind }) => ({
      payload: encode(withFds(message, [])).payload,
      kinds: new Array('fds' in message ? message.fds : 0).fill(kind),
    })),
  },
  { weight: 1, arbitrary: fc.record({ payload: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)), kinds: fc.array(fdKind, { maxLength: 6 }) }) },
  { weight: 1, arbitrary: fc.record({ payload: fc.integer({ min: 0, max: 200_000 }).map((n) => Buffer.alloc(n, n & 0xff)), kinds: fc.array(fdKind, { maxLength: 6 }) }) },
);

/** A valid frame as chunks: any split of its bytes and fds. */
const validFrame = fc
  .record({
    content: frameContent,
    byteCuts: fc.array(fc.nat({ max: 200_000 }), { maxLength: 4 }),
    fdCuts: fc.array(fc.nat({ max: 6 }), { maxLength: 3 }),
  })
  .map(({ content: { payload, kinds }, byteCuts, fdCuts }) => {
    // Cuts at least every MAX_MESSAGE - 12 bytes: a chunk must fit in one receive.
    const cuts = [...byteCuts.map((c) => (payload.length > 0 && c > 1000 ? c % payload.length : c))];
    for (let c = MAX_MESSAGE - CHUNK_HEADER; c < payload.length; c += MAX_MESSAGE - CHUNK_HEADER) cuts.push(c);
    let next = 0;
    return chunksOf(payload, kinds.length, cuts, fdCuts).map(({ data, fdCount }) => {
      const chunkKinds = kinds.slice(next, next + fdCount);
      next += fdCount;
      return { data, kinds: chunkKinds };
    });
  });

const u32 = fc.oneof(fc.nat({ max: 300 }), fc.constantFrom(0xffffffff, 0x7fffffff, 16 * 1024 * 1024, 16 * 1024 * 1024 + 1, 16 * 1024, 16 * 1024 + 1));

/** A chunk with a random header (any magic, version, flags, length, fd count) and body. */
const craftedChunk = fc
  .record({
    magic: fc.oneof({ weight: 4, arbitrary: fc.constant(MAGIC) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) }),
    version: fc.oneof({ weight: 4, arbitrary: fc.constant(VERSION) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    flags: fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 0, max: 3 }) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
    length: u32,
    fdCount: u32,
    body: fc.uint8Array({ maxLength: 300 }),
    kinds: fc.array(fdKind, { maxLength: 4 }),
    cut: fc.option(fc.nat({ max: CHUNK_HEADER + 300 }), { freq: 4 }),
  })
  .map(({ body, kinds, cut, ...header }) => {
    const data = Buffer.concat([chunkHeader(header), Buffer.from(body)]);
    return { data: cut === null ? data : data.subarray(0, cut), kinds };
  });

const garbage = fc.oneof(
  fc.record({ data: fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)), kinds: fc.array(fdKind, { maxLength: 3 }) }),
  fc.constant({ data: Buffer.alloc(0), kinds: [] }),
  fc.record({ data: fc.constant(Buffer.alloc(0)), kinds: fc.array(fdKind, { minLength: 1, maxLength: 2 }) }),
  // Larger than any chunk: MSG_TRUNC on the receiver.
  fc.record({ data: fc.integer({ min: MAX_MESSAGE + 1, max: MAX_MESSAGE + 5000 }).map((n) => Buffer.alloc(n, 7)), kinds: fc.array(fdKind, { maxLength: 2 }) }),
);

/** A valid frame with one thing wrong in one of its chunks. */
const mutatedFrame = fc
  .record({
    chunks: validFrame,
    which: fc.nat(),
    mutation: fc.constantFrom('drop', 'duplicate', 'swap', 'flags', 'length', 'fdCount', 'truncate', 'extend', 'addFd', 'dropFds', 'magic', 'version'),
    value: fc.nat({ max: 0xffffffff }),
    kind: fdKind,
  })
  .map(({ chunks, which, mutation, value, kind }) => {
    const out = chunks.map((c) => ({ data: Buffer.from(c.data), kinds: [...c.kinds] }));
    const i = which % out.length;
    const c = out[i];
    switch (mutation) {
      case 'drop':
        out.splice(i, 1);
        break;
      case 'duplicate':
        out.splice(i, 0, { data: Buffer.from(c.data), kinds: [...c.kinds] });
        break;
      case 'swap':
        if (out.length > 1) [out[0], out[out.length - 1]] = [out[out.length - 1], out[0]];
        break;
      case 'flags':
        c.data.writeUInt8(value & 0xff, 3);
        break;
      case 'length':
        c.data.writeUInt32BE(value >>> 0, 4);
        break;
      case 'fdCount':
        c.data.writeUInt32BE(value % 2 ? value >>> 0 : value % 8, 8);
        break;
      case 'truncate':
        c.data = c.data.subarray(0, value % c.data.length);
        break;
      case 'extend':
        c.data = Buffer.concat([c.data, Buffer.alloc(1 + (value % 50), 1)]);
        break;
      case 'addFd':
        c.kinds.push(kind);
        break;
      case 'dropFds':
        c.kinds = [];
        break;
      case 'magic':
        c.data.writeUInt16BE(value & 0xffff, 0);
        break;
      case 'version':
        c.data.writeUInt8(value & 0xff, 2);
        break;
    }
    return out;
  });

const datagramsArb = fc
  .array(
    fc.oneof(
      { weight: 6, arbitrary: validFrame },
      { weight: 2, arbitrary: mutatedFrame },
      { weight: 1, arbitrary: craftedChunk.map((c) => [c]) },
      { weight: 1, arbitrary: garbage.map((g) => [g]) },
    ),
    { maxLength: 5 },
  )
  .map((groups) => groups.flat());

const limitsArb = fc.record({
  maxFrameSize: fc.oneof(fc.constant(undefined), fc.integer({ min: 1, max: 300_000 })),
  maxFdsPerFrame: fc.oneof(fc.constant(undefined), fc.integer({ min: 1, max: 8 })),
});

/** waitFor resolves when `condition()` holds after an event of the session, or fails after CASE_TIMEOUT (a hang). */
function eventually(emitter, events, condition, what) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!condition()) return;
      done();
      resolve();
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`hang: no ${what} within ${CASE_TIMEOUT} ms`));
    }, CASE_TIMEOUT);
    const done = () => {
      clearTimeout(timer);
      for (const event of events) emitter.removeListener(event, check);
    };
    for (const event of events) emitter.on(event, check);
    check();
  });
}

describe('fuzz: FdChannel + ControlSession under raw datagrams', () => {
  test('garbage, truncation, huge lengths, wrong headers, misplaced chunks, stray fds: an ERR_HANDOVER_PROTOCOL error or exact delivery, no fd leaked, no hang', async () => {
    const property = fc.asyncProperty(datagramsArb, limitsArb, fc.boolean(), async (datagrams, limits, senderCloses) => {
      const options = {};
      if (limits.maxFrameSize !== undefined) options.maxFrameSize = limits.maxFrameSize;
      if (limits.maxFdsPerFrame !== undefined) options.maxFdsPerFrame = limits.maxFdsPerFrame;
      const effective = { maxFrameSize: limits.maxFrameSize ?? 16 * 1024 * 1024, maxFdsPerFrame: limits.maxFdsPerFrame ?? 16 * 1024 };
      const expected = model(datagrams, effective, senderCloses);
      const expectedSession = sessionModel(expected.frames);

      const before = fdTable();
      const [a, b] = native.seqpacketPair();
      const channel = new FdChannel(b, options);
      const session = new ControlSession(channel, 'fuzz');
      const received = [];
      let closed;
      let channelErrors = 0;
      channel.on('error', () => channelErrors++);
      session.on('close', (error) => (closed = { error }));
      session.onMessage((message) => received.push({ message, identities: ('fds' in message ? message.fds : []).map(identity) }));
      const sent = [];
      let aOpen = true;
      try {
        for (const { data, kinds } of datagrams) {
          if (!(await sendRaw(a, data, kinds, sent))) break;
        }
        if (senderCloses) {
          native.close(a);
          aOpen = false;
        }
        const ends = expected.outcome !== 'open' || expectedSession.decodeError;
        if (ends) {
          await eventually(session, ['close'], () => closed !== undefined, 'close of the session');
        } else {
          await eventually(session, ['message', 'close'], () => received.length >= expectedSession.messages.length || closed !== undefined, 'expected messages');
          // One more turn: nothing else may happen on a channel that is still open.
          await new Promise((resolve) => setImmediate(resolve));
        }

        // Messages: exactly the frames the reference parser completed, decoded, with their own fds, in order.
        assert.equal(received.length, expectedSession.messages.length, 'every complete frame is delivered, nothing else');
        for (let i = 0; i < received.length; i++) {
          const { message, frame } = expectedSession.messages[i];
          assert.deepEqual(normalize(received[i].message), normalize(message));
          assert.deepEqual(received[i].identities, sent.slice(frame.firstFd, frame.firstFd + frame.fdCount), 'each frame carries exactly the fds sent with it, in order');
        }
        if (ends) {
          assert.equal(session.isClosed, true);
          if (expected.outcome === 'error' || expectedSession.decodeError) {
            assert.equal(closed.error?.code, 'ERR_HANDOVER_PROTOCOL', `a protocol error, got ${closed.error?.code}: ${closed.error?.message}`);
          } else {
            assert.equal(closed.error, undefined, 'a clean end');
          }
        } else {
          assert.equal(closed, undefined, `the channel stays open (${closed?.error?.message})`);
          assert.equal(channelErrors, 0);
        }
      } finally {
        for (const { message } of received) if ('fds' in message) for (const fd of message.fds) fs.closeSync(fd);
        session.close();
        if (aOpen) native.close(a);
      }
      assert.equal(fdTable(), before, 'no fd leaked: every received fd was delivered to the handler or closed');
    });
    await assertProperty(property, runs(1500));
  });
});

describe('fuzz: valid frames round-trip through FdChannel.send', () => {
  test('any payload size and fd count arrives exactly, in order, on a channel that stays usable', async () => {
    const frameArb = fc.record({
      size: fc.oneof(fc.nat({ max: 100 }), fc.integer({ min: 0, max: 400_000 }), fc.constantFrom(0, 65524, 65525, 65536, 131048, 131049)),
      fill: fc.nat({ max: 255 }),
      fdCount: fc.oneof({ weight: 5, arbitrary: fc.nat({ max: 8 }) }, { weight: 1, arbitrary: fc.integer({ min: 250, max: 300 }) }),
    });
    const property = fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 4 }), async (frames) => {
      const before = fdTable();
      const [a, b] = native.seqpacketPair();
      const sender = new FdChannel(a);
      const receiver = new FdChannel(b);
      const got = [];
      receiver.on('frame', (frame) => got.push({ payload: frame.payload, identities: frame.fds.map(identity), fds: frame.fds }));
      try {
        const identities = [];
        const sends = frames.map(({ size, fill, fdCount }, f) => {
          const payload = Buffer.alloc(size);
          for (let i = 0; i < size; i += 997) payload[i] = (fill + i + f) & 0xff;
          const fds = [];
          for (let i = 0; i < fdCount; i++) fds.push(openFd('file', i + f));
          identities.push(fds.map(identity));
          return sender.send(payload, { fds, closeAfterSend: true }).then(() => payload);
        });
        const payloads = await Promise.all(sends);
        await eventually(receiver, ['frame', 'close'], () => got.length >= frames.length || receiver.isClosed, 'all frames');
        assert.equal(got.length, frames.length);
        for (let f = 0; f < frames.length; f++) {
          assert.ok(got[f].payload.equals(payloads[f]), `frame ${f}: payload of ${payloads[f].length} bytes arrives exactly`);
          assert.deepEqual(got[f].identities, identities[f], `frame ${f}: fds arrive in order`);
        }
        assert.equal(receiver.isClosed, false);
      } finally {
        for (const frame of got) for (const fd of frame.fds) fs.closeSync(fd);
        sender.close();
        receiver.close();
      }
      assert.equal(fdTable(), before, 'no fd leaked');
    });
    await assertProperty(property, runs(150, 0.1));
  });
});

describe('fuzz: decode()', () => {
  test('random bytes: a message or an ERR_HANDOVER_PROTOCOL error, nothing else', async () => {
    const payloadArb = fc.oneof(
      fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
      // A known type and a plausible header length, then anything.
      fc
        .record({ type: fc.integer({ min: 0, max: 12 }), json: fc.oneof(fc.json(), fc.string()), extra: fc.uint8Array({ maxLength: 40 }), lie: fc.option(fc.nat({ max: 0xffffffff })) })
        .map(({ type, json, extra, lie }) => {
          const header = Buffer.from(json);
          const head = Buffer.alloc(5);
          head.writeUInt8(type, 0);
          head.writeUInt32BE(lie ?? header.length, 1);
          return Buffer.concat([head, header, Buffer.from(extra)]);
        }),
      // A valid message with its header object mutated.
      fc.record({ message: messageArb, field: fc.string({ maxLength: 12 }), value: fc.jsonValue({ maxDepth: 2 }) }).map(({ message, field, value }) => {
        const { payload } = encode(withFds(message, []));
        const length = payload.readUInt32BE(1);
        const header = JSON.parse(payload.toString('utf8', 5, 5 + length));
        const keys = Object.keys(header);
        header[keys.length > 0 && field.length % 2 ? keys[field.length % keys.length] : field] = value;
        const json = Buffer.from(JSON.stringify(header));
        const head = Buffer.alloc(5);
        head.writeUInt8(payload[0], 0);
        head.writeUInt32BE(json.length, 1);
        return Buffer.concat([head, json, payload.subarray(5 + length)]);
      }),
    );
    const property = fc.property(payloadArb, fc.nat({ max: 4 }), (payload, fdCount) => {
      const fds = Array.from({ length: fdCount }, (_, i) => 1000 + i);
      let message;
      try {
        message = decode({ payload, fds });
      } catch (err) {
        assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL', `decode threw ${err.name} ${err.code}: ${err.message}`);
        return;
      }
      // Whatever decodes re-encodes to a message that decodes the same (and takes the fds it was given).
      if ('fds' in message) assert.deepEqual(message.fds, fds);
      else assert.equal(fdCount, 0, `${message.type} must not take fds`);
      const again = decode({ payload: encode(message).payload, fds });
      assert.deepEqual(normalize(again), normalize(message));
    });
    await assertProperty(property, runs(5000, 2));
  });

  test('encode then decode is the identity on valid messages', async () => {
    const property = fc.property(messageArb, (arb) => {
      const fds = Array.from({ length: 'fds' in arb ? arb.fds : 0 }, (_, i) => 100 + i);
      const message = withFds(arb, fds);
      const frame = encode(message);
      assert.deepEqual(frame.fds, 'fds' in message ? fds : []);
      const decoded = decode(frame);
      assert.deepEqual(normalize(decoded), normalize(message));
      if ('fds' in message) assert.deepEqual(decoded.fds, fds);
    });
    await assertProperty(property, runs(3000, 1));
  });
});
