// FdChannel: frames with fds between unrelated processes, limits, garbage, and no fd leaks.
import { test, describe, before, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { once } from 'node:events';
import { FdChannel, ChannelListener, channelPair } from 'handover';
import { binding } from '../dist/native.js';
import { ControlSession } from '../dist/session.js';
import { encode } from '../dist/protocol.js';
import { ProcessGroup, fixtures, fdCount, fdList, tmpDir } from './helpers.mjs';

const native = binding();
let fdsBefore;
let cleanups = [];

// Loading node:tls (handover imports node:https) makes Node 22 and later read the CA certificates
// (NODE_EXTRA_CA_CERTS among them) on a thread of their own: that file could be open when a test
// takes its fd list and closed by the next. A secure context waits until that reading is done.
before(() => tls.createSecureContext());

beforeEach(() => {
  fdsBefore = fdList();
});

afterEach(async () => {
  for (const fn of cleanups.reverse()) await fn();
  cleanups = [];
  // Let closes issued by libuv land before counting.
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(fdList(), fdsBefore, 'the fds of the test process are what they were before');
});

function nextFrame(channel) {
  return new Promise((resolve, reject) => {
    channel.once('frame', resolve);
    channel.once('error', reject);
  });
}

function openFiles(count) {
  const fds = [];
  for (let i = 0; i < count; i++) fds.push(fs.openSync('/dev/null', 'r'));
  return fds;
}

function closeFds(fds) {
  for (const fd of fds) fs.closeSync(fd);
}

function pair(options) {
  const [a, b] = channelPair(options);
  cleanups.push(() => {
    a.close();
    b.close();
  });
  return [a, b];
}

async function startPeer() {
  const dir = tmpDir();
  const socketPath = path.join(dir, 'c.sock');
  const listener = new ChannelListener(socketPath);
  const group = new ProcessGroup();
  cleanups.push(async () => {
    await group.cleanup();
    listener.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const accepted = once(listener, 'channel');
  group.start([path.join(fixtures, 'channel-peer.mjs'), socketPath]);
  const [channel] = await accepted;
  cleanups.push(() => channel.close());
  await group.waitForLine(/^connected pid=(\d+)/);
  return { channel, group };
}

function lineReader(socket) {
  let buffered = '';
  const waiting = [];
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    buffered += chunk;
    let index;
    while ((index = buffered.indexOf('\n')) >= 0 && waiting.length > 0) {
      const line = buffered.slice(0, index);
      buffered = buffered.slice(index + 1);
      waiting.shift()(line);
    }
  });
  return () => new Promise((resolve) => {
    const index = buffered.indexOf('\n');
    if (index >= 0) {
      const line = buffered.slice(0, index);
      buffered = buffered.slice(index + 1);
      resolve(line);
    } else waiting.push(resolve);
  });
}

describe('FdChannel between unrelated processes', () => {
  test('hands over a listening TCP socket: the other process accepts on it', async () => {
    const { channel, group } = await startPeer();
    const server = net.createServer(() => assert.fail('the old process must not accept'));
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address();
    const reply = nextFrame(channel);
    await channel.send(Buffer.from('LISTEN'), { fds: [server._handle.fd] });
    assert.equal((await reply).payload.toString(), 'LISTENING');
    await new Promise((resolve) => server.close(resolve));
    const client = net.connect(port, '127.0.0.1');
    const readLine = lineReader(client);
    client.write('hello\n');
    const peerPid = [...group.pids][0];
    assert.equal(await readLine(), `peer ${peerPid} hello`);
    client.destroy();
  });

  test('hands over a live TCP connection: the client goes on talking on the same socket', async () => {
    const { channel, group } = await startPeer();
    const server = net.createServer();
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(resolve)));
    const accepted = once(server, 'connection');
    const client = net.connect(server.address().port, '127.0.0.1');
    let clientErrors = 0;
    let clientEnded = false;
    client.on('error', () => clientErrors++);
    client.on('end', () => (clientEnded = true));
    const readLine = lineReader(client);
    const [serverSide] = await accepted;
    serverSide.write('old says hi\n');
    assert.equal(await readLine(), 'old says hi');
    const localPort = client.localPort;
    // The old process stops reading, sends the fd, and closes only its own copy.
    serverSide._handle.readStop();
    const reply = nextFrame(channel);
    await channel.send(Buffer.from('CONN'), { fds: [serverSide._handle.fd] });
    assert.equal((await reply).payload.toString(), 'ADOPTED');
    serverSide.destroy();
    client.write('still there?\n');
    const peerPid = [...group.pids][0];
    assert.equal(await readLine(), `peer ${peerPid} still there?`);
    assert.equal(client.localPort, localPort);
    assert.equal(clientErrors, 0);
    assert.equal(clientEnded, false);
    client.destroy();
  });

  test('253 fds in one frame and 1,000 fds across frames arrive and are closed', async () => {
    const { channel } = await startPeer();
    for (const count of [253, 1000]) {
      const fds = openFiles(count);
      const reply = nextFrame(channel);
      await channel.send(Buffer.from('COUNT'), { fds, closeAfterSend: true });
      assert.equal((await reply).payload.toString(), `COUNT ${count} 5 0`);
    }
  });

  test('a frame larger than the socket buffer is split and reassembled', async () => {
    const { channel } = await startPeer();
    const big = Buffer.alloc(5 * 1024 * 1024, 'x');
    big.write('COUNT ', 0);
    const fds = openFiles(3);
    const reply = nextFrame(channel);
    await channel.send(big, { fds, closeAfterSend: true });
    assert.equal((await reply).payload.toString(), `COUNT 3 ${big.length} 1`);
  });
});

describe('FdChannel limits and garbage', () => {
  test('frames keep their boundaries and their own fds', async () => {
    const [a, b] = pair();
    const frames = [];
    b.on('frame', (frame) => frames.push(frame));
    const fdsA = openFiles(2);
    const fdsB = openFiles(1);
    await Promise.all([a.send(Buffer.from('one'), { fds: fdsA }), a.send(Buffer.from('two')), a.send(Buffer.from('three'), { fds: fdsB })]);
    closeFds([...fdsA, ...fdsB]);
    while (frames.length < 3) await once(b, 'frame');
    assert.deepEqual(frames.map((f) => [f.payload.toString(), f.fds.length]), [['one', 2], ['two', 0], ['three', 1]]);
    closeFds(frames.flatMap((f) => f.fds));
  });

  test('garbage bytes are an ERR_HANDOVER_PROTOCOL error, not a crash', async () => {
    const [a, b] = pair();
    const fds = openFiles(2);
    native.sendmsg(a.fd, Buffer.from('GET / HTTP/1.1\r\n\r\n'), fds);
    closeFds(fds);
    const [err] = await once(b, 'error');
    assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL');
    assert.equal(b.isClosed, true);
  });

  test('a frame over maxFrameSize is refused on both ends', async () => {
    const [a, b] = pair({ maxFrameSize: 1024 });
    await assert.rejects(a.send(Buffer.alloc(2048)), { code: 'ERR_HANDOVER_PROTOCOL' });
    // A sender with a larger limit: the receiver refuses it.
    const [bigSender, smallReceiver] = pair({ maxFrameSize: 1024 });
    const sender = new FdChannel(native.dup(bigSender.fd));
    cleanups.push(() => sender.close());
    await sender.send(Buffer.alloc(4096));
    const [err] = await once(smallReceiver, 'error');
    assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL');
    assert.match(err.message, /maxFrameSize/);
    void b;
  });

  test('too many fds for a frame are refused and closed', async () => {
    const [a, b] = pair({ maxFdsPerFrame: 4 });
    const fds = openFiles(5);
    await assert.rejects(a.send(Buffer.from('x'), { fds, closeAfterSend: true }), { code: 'ERR_HANDOVER_PROTOCOL' });
    const sender = new FdChannel(native.dup(a.fd));
    cleanups.push(() => sender.close());
    const more = openFiles(5);
    await sender.send(Buffer.from('x'), { fds: more, closeAfterSend: true });
    const [err] = await once(b, 'error');
    assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL');
  });

  test('a peer that closes mid-frame: clean error, the partial fds closed', async () => {
    const [a, b] = pair();
    // The first chunk of a 2-chunk frame, by hand: header says 100 bytes and 2 fds, carries 10 and 1.
    const header = Buffer.alloc(12);
    header.writeUInt16BE(0x484f, 0);
    header.writeUInt8(1, 2);
    header.writeUInt8(1, 3);
    header.writeUInt32BE(100, 4);
    header.writeUInt32BE(2, 8);
    const fds = openFiles(1);
    native.sendmsg(a.fd, Buffer.concat([header, Buffer.alloc(10)]), fds);
    closeFds(fds);
    a.close();
    const [err] = await once(b, 'error');
    assert.equal(err.code, 'ERR_HANDOVER_PROTOCOL');
    assert.match(err.message, /middle of a frame/);
  });

  test('a peer that closes with unread data: its last frames are still delivered, then the end', async () => {
    const [a, b] = pair();
    b.pause();
    // b never reads this: closing b with it unread makes the kernel report ECONNRESET to a.
    await a.send(Buffer.from('unread'));
    await b.send(Buffer.from('ACK'));
    const frames = [];
    a.on('frame', (frame) => frames.push(frame.payload.toString()));
    const closed = once(a, 'close');
    b.close();
    await closed;
    assert.deepEqual(frames, ['ACK']);
  });

  test('closing one end is a clean end on the other', async () => {
    const [a, b] = pair();
    const ended = once(b, 'end');
    a.close();
    await ended;
    assert.equal(b.isClosed, true);
    await assert.rejects(b.send(Buffer.from('late')), { code: 'ERR_HANDOVER_CHANNEL_CLOSED' });
  });

  test('fds arriving on a message that must not carry any are closed, with an error', async () => {
    const [a, b] = pair();
    const session = new ControlSession(b, 'test');
    const { payload } = encode({ type: 'HELLO', version: 1, pid: process.pid });
    const fds = openFiles(3);
    await a.send(payload, { fds, closeAfterSend: true });
    const [error] = await once(session, 'close');
    assert.equal(error.code, 'ERR_HANDOVER_PROTOCOL');
    assert.match(error.message, /must not carry fds/);
  });

  test('writes queue under back-pressure and resolve once flushed', async () => {
    const [a, b] = pair();
    b.pause();
    const sends = [];
    for (let i = 0; i < 200; i++) sends.push(a.send(Buffer.alloc(32 * 1024, i)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.ok(a.pendingChunks > 0, 'some chunks wait for the kernel');
    let received = 0;
    b.on('frame', (frame) => {
      assert.equal(frame.payload[0], received % 256);
      received++;
    });
    b.resume();
    await Promise.all(sends);
    while (received < 200) await once(b, 'frame');
    assert.equal(received, 200);
  });
});
