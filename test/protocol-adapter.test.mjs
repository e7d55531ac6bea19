// The protocol-author contract (src/adapters/net.ts, docs/adapters.md) with real processes: a small
// length-prefixed protocol (test/fixtures/protocol-server.mjs) whose adapter only answers
// now / later / never, resumes, drains and adopts; the library does the rest. A connection in the
// middle of a frame moves right at that frame's end with the bytes after it; state travels; late
// writes arrive in order and the forwarder is let go; a connection that never moves is drained; a
// successor SIGKILLed before acknowledging gives every connection back, and they keep working.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { once } from 'node:events';
import { createUpgrader } from 'handover';
import * as http from 'node:http';
import { Sandbox, fixtures, isAlive, waitUntil } from './helpers.mjs';

const HOST = '127.0.0.1';
const server = path.join(fixtures, 'protocol-server.mjs');
const sandbox = new Sandbox();
const sockets = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await sandbox.cleanup();
});

function encode(payload) {
  const body = Buffer.from(payload);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  return Buffer.concat([header, body]);
}

/** A client of the fixture's protocol: every frame it receives, parsed, in order of arrival. */
class Client {
  static async connect(port) {
    const socket = net.connect(port, HOST);
    sockets.push(socket);
    await once(socket, 'connect');
    return new Client(socket);
  }

  constructor(socket) {
    this.socket = socket;
    this.port = socket.localPort;
    this.frames = [];
    this.closed = false;
    this.waiters = [];
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 4 && buffer.length >= 4 + buffer.readUInt32BE(0)) {
        const payload = buffer.subarray(4, 4 + buffer.readUInt32BE(0));
        buffer = buffer.subarray(4 + payload.length);
        this.frames.push(parse(payload));
        this.wake();
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  wake() {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** until resolves once `condition(frames)` holds (rejects if the connection closes first, or after 10 s). */
  until(condition, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames.map(short))}`)), 10_000);
      const check = () => {
        if (condition(this.frames)) done();
        else if (this.closed) done(new Error(`connection closed while waiting for ${what}; frames: ${JSON.stringify(this.frames.map(short))}`));
      };
      const done = (err) => {
        clearTimeout(timer);
        this.waiters.splice(this.waiters.indexOf(check), 1);
        if (err) reject(err);
        else resolve(this.frames);
      };
      this.waiters.push(check);
      check();
    });
  }

  /** send writes one whole frame; call sends it and resolves with the answer (the next frame). */
  send(payload) {
    this.socket.write(encode(payload));
  }

  async call(payload) {
    const before = this.frames.length;
    this.send(payload);
    await this.until((frames) => frames.length > before, `an answer to ${payload}`);
    return this.frames[before];
  }
}

/** parse: `<op> <count> <pid> <rest>`; S frames end in filler bytes (all 'a'). */
function parse(payload) {
  const text = payload.toString('latin1');
  const [op, count, pid, ...rest] = text.split(' ');
  const frame = { op, count: Number(count), pid: Number(pid), rest: rest.join(' '), size: payload.length };
  if (op === 'S') {
    frame.tag = rest[0];
    const filler = payload.subarray(text.indexOf(' ', text.indexOf(rest[0])) + 1);
    frame.filler = filler.length;
    frame.fillerIntact = filler.every((byte) => byte === 0x61);
  }
  return frame;
}

const short = (f) => `${f.op} ${f.count} ${f.pid} ${f.tag ?? f.rest.slice(0, 40)}`;

async function start(env = {}) {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir('handover-protocol-'), 'ctl');
  group.start([server, '--port', '0', '--host', HOST, '--dir', dir], { env: { GRACEFUL: '15000', ...env } });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/);
  return { group, dir, pid: Number(pid), port: Number(port) };
}

/** line waits for a stdout line of the fixture (from `since`) and returns its match. */
const line = (group, regex, since = 0) => group.waitForLine(regex, { since });

test('mid-frame moves at its next frame boundary with the bytes after it; state, late writes in order, a drained "never", and the counts of retired', { timeout: 60_000 }, async () => {
  const { group, pid: oldPid, port } = await start();

  // c1: in the middle of a frame when retirement starts.
  const c1 = await Client.connect(port);
  assert.equal((await c1.call('Hone')).count, 1);
  const first = encode('Efirst-frame-of-c1');
  c1.socket.write(first.subarray(0, 9));
  await line(group, new RegExp(`^begin pid=${oldPid} port=${c1.port}$`));

  // c2: idle between frames, with three slow answers still to write (late writes, one of 300 KB).
  const c2 = await Client.connect(port);
  assert.equal((await c2.call('Htwo')).count, 1);
  assert.deepEqual((await c2.call('Ex')).rest, 'two x');
  c2.send('S600,300000,late1');
  c2.send('S700,10,late2');
  c2.send('S300,20,late0');

  // c3: pinned (never moves), with a slow answer in flight: drained after it.
  const c3 = await Client.connect(port);
  assert.equal((await c3.call('N')).count, 1);
  c3.send('S400,5,pinned');
  await new Promise((resolve) => setTimeout(resolve, 50)); // the S frames are read (answers come later anyway)

  const since = group.lines.length;
  process.kill(oldPid, 'SIGHUP');
  const [, newPidText] = await line(group, /^ready pid=(\d+) port=\d+$/, since);
  const newPid = Number(newPidText);
  await line(group, new RegExp(`^later pid=${oldPid} port=${c1.port}$`), since);
  await line(group, new RegExp(`^moved pid=${oldPid} port=${c2.port}$`), since);
  await line(group, new RegExp(`^drain pid=${oldPid} port=${c3.port}$`), since);
  assert.equal(group.lines.slice(since).some((l) => l === `moved pid=${oldPid} port=${c1.port}`), false, 'c1 moved in the middle of its frame');

  // The rest of c1's frame, a whole second frame and 3 bytes of a third, in one write: the
  // connection moves at the end of the first frame; the bytes after it are its pending bytes.
  const second = encode('Esecond');
  const third = encode('Ethird');
  c1.socket.write(Buffer.concat([first.subarray(9), second, third.subarray(0, 3)]));
  const [, pendingHex, stateJson] = await line(group, new RegExp(`^adopted pid=${newPid} port=${c1.port} pending=([0-9a-f]*) state=(.*)$`), since);
  assert.equal(pendingHex, Buffer.concat([second, third.subarray(0, 3)]).toString('hex'), 'pending: exactly the bytes after the frame boundary');
  assert.deepEqual(JSON.parse(stateJson), { name: 'one', count: 2 }, 'c1 state');
  c1.socket.write(third.subarray(3));
  const c1Frames = await c1.until((frames) => frames.length === 4, 'c1: four answers');
  assert.deepEqual(c1Frames.map((f) => [f.count, f.pid, f.rest]), [
    [1, oldPid, 'one'],
    [2, oldPid, 'one first-frame-of-c1'],
    [3, newPid, 'one second'],
    [4, newPid, 'one third'],
  ]);

  // c2: its state moved; the successor answers at once while the old process's three late answers
  // follow, in the order that process wrote them, whole.
  const [, c2State] = await line(group, new RegExp(`^adopted pid=${newPid} port=${c2.port} pending= state=(.*)$`), since);
  assert.deepEqual(JSON.parse(c2State), { name: 'two', count: 5 });
  const after = await c2.call('Eafter');
  assert.deepEqual([after.count, after.pid, after.rest], [6, newPid, 'two after']);
  const c2Frames = await c2.until((frames) => frames.filter((f) => f.op === 'S').length === 3, 'c2: three late answers');
  const late = c2Frames.filter((f) => f.op === 'S');
  assert.deepEqual(late.map((f) => [f.tag, f.count, f.pid, f.filler, f.fillerIntact]), [
    ['late0', 5, oldPid, 20, true],
    ['late1', 3, oldPid, 300000, true],
    ['late2', 4, oldPid, 10, true],
  ]);

  // c3: never moved: its slow answer, then goodbye, then closed, all by the old process.
  await c3.until((frames, closed = c3.closed) => closed, 'c3 to close');
  assert.deepEqual(c3.frames.map((f) => [f.op, f.pid, f.tag ?? '']), [
    ['N', oldPid, ''],
    ['S', oldPid, 'pinned'],
    ['G', oldPid, ''],
  ]);
  assert.equal(group.lines.some((l) => new RegExp(`^adopted pid=\\d+ port=${c3.port} `).test(l)), false, 'c3 was moved');

  // Retired once the last late write left (the forwarder let go: without it the retirement would
  // wait for the 15 s graceful timeout): two moved, one closed, none left; and the old process
  // holds no socket any more (connections, kept listener, control sockets: all closed).
  const [, moved, closed, remaining, timedOut, socketsLeft] = await line(group, new RegExp(`^retired pid=${oldPid} moved=(\\d+) closed=(\\d+) remaining=(\\d+) timedOut=(\\w+) sockets=(\\d+)$`), since);
  assert.deepEqual([Number(moved), Number(closed), Number(remaining), timedOut, Number(socketsLeft)], [2, 1, 0, 'false', 0]);
  const [, connections] = await line(group, new RegExp(`^retiring pid=${oldPid} connections=(\\d+) sockets=\\d+$`), since);
  assert.equal(Number(connections), 3);
  await waitUntil(() => !isAlive(oldPid), 5000, 'the old process to exit');

  // Everything goes on with the successor, on the same TCP connections.
  assert.deepEqual([(await c1.call('Eon')).pid, (await c2.call('Eon')).pid], [newPid, newPid]);
  assert.equal(c1.closed || c2.closed, false);
});

test('a successor SIGKILLed before acknowledging: connections are given back (resume) and keep working, the one mid-frame too; the next upgrade moves them', { timeout: 60_000 }, async () => {
  const base = sandbox.dir('handover-protocol-kill-');
  const killFile = path.join(base, 'kill-next-successor');
  const { group, pid: oldPid, port } = await start({ KILL_FILE: killFile });

  const idle = await Client.connect(port);
  assert.equal((await idle.call('Hidle')).count, 1);
  idle.send('S500,1000,slow');
  const midFrame = await Client.connect(port);
  assert.equal((await midFrame.call('Hmid')).count, 1);
  const frame = encode('Ehalf-sent-before-the-kill');
  midFrame.socket.write(frame.subarray(0, 10));
  await line(group, new RegExp(`^begin pid=${oldPid} port=${midFrame.port}$`));

  fs.writeFileSync(killFile, '');
  const since = group.lines.length;
  process.kill(oldPid, 'SIGHUP');
  await line(group, new RegExp(`^later pid=${oldPid} port=${midFrame.port}$`), since);
  const [, code] = await line(group, new RegExp(`^kept pid=${oldPid} port=${idle.port} code=(\\w+)$`), since);
  assert.equal(code, 'ERR_HANDOVER_CHANNEL_CLOSED');
  assert.equal(fs.existsSync(killFile), false, 'the successor consumed the kill file');

  // Given back: the slow answer in flight and the next frames are answered here, state intact.
  const slow = await idle.until((frames) => frames.some((f) => f.op === 'S'), 'the slow answer');
  assert.deepEqual(slow.filter((f) => f.op === 'S').map((f) => [f.tag, f.pid, f.filler, f.fillerIntact]), [['slow', oldPid, 1000, true]]);
  const echo = await idle.call('Eback');
  assert.deepEqual([echo.count, echo.pid, echo.rest], [3, oldPid, 'idle back']);
  midFrame.socket.write(frame.subarray(10));
  await midFrame.until((frames) => frames.length === 2, 'the mid-frame answer');
  assert.deepEqual([midFrame.frames[1].count, midFrame.frames[1].pid, midFrame.frames[1].rest], [2, oldPid, 'mid half-sent-before-the-kill']);
  assert.equal(group.lines.slice(since).some((l) => /^(moved|drain) /.test(l)), false, 'nothing moved or drained');

  // A healthy successor: both move (state intact) and go on there.
  const since2 = group.lines.length;
  process.kill(oldPid, 'SIGHUP');
  const [, newPidText] = await line(group, /^ready pid=(\d+) port=\d+$/, since2);
  const newPid = Number(newPidText);
  await line(group, new RegExp(`^retired pid=${oldPid} moved=2 closed=0 remaining=0 timedOut=false `), since2);
  const [a, b] = [await idle.call('Eon'), await midFrame.call('Eon')];
  assert.deepEqual([a.count, a.pid, b.count, b.pid], [4, newPid, 3, newPid]);
  assert.equal(idle.closed || midFrame.closed, false);
});

test('beside the HTTP adapter: connections the protocol answers later for are moved by HTTP and reach the successor as connection, not through its adopt', { timeout: 60_000 }, async () => {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir('handover-protocol-http-'), 'ctl');
  group.start([path.join(fixtures, 'protocol-http-server.mjs'), '--port', '0', '--host', HOST, '--dir', dir]);
  const [, oldPidText, portText] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)$/);
  const oldPid = Number(oldPidText);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const get = () => new Promise((resolve, reject) => {
    http.get({ host: HOST, port: Number(portText), agent }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve(body.split(' ').map(Number)));
    }).on('error', reject);
  });
  try {
    const [pid, clientPort] = await get();
    assert.equal(pid, oldPid);
    const since = group.lines.length;
    process.kill(oldPid, 'SIGHUP');
    const [, newPid] = await group.waitForLine(/^ready pid=(\d+) port=\d+$/, { since });
    await group.waitForLine(new RegExp(`^asked pid=${oldPid} port=${clientPort}$`), { since });
    await group.waitForLine(new RegExp(`^retired pid=${oldPid} moved=1 closed=0 remaining=0$`), { since });
    assert.deepEqual(await get(), [Number(newPid), clientPort], 'the same keep-alive connection, served by the successor');
    assert.equal(group.lines.some((l) => l.startsWith('adopted-by-protocol')), false);
  } finally {
    agent.destroy();
  }
});

test('listen() checks options.protocol and refuses it together with options.adopt, naming the option', async () => {
  const upgrader = createUpgrader({ dir: path.join(sandbox.dir('handover-protocol-args-'), 'ctl') });
  const server = net.createServer();
  try {
    const target = { port: 0, host: HOST };
    const refused = (options, message) => assert.rejects(upgrader.listen(server, target, options), (err) => err.code === 'ERR_HANDOVER_INVALID_ARG' && message.test(err.message));
    await refused({ protocol: 'bolt' }, /options\.protocol must be an object/);
    await refused({ protocol: {} }, /options\.protocol\.prepareMove must be a function/);
    await refused({ protocol: { prepareMove: () => ({ move: 'now' }), resume: 1 } }, /options\.protocol\.resume must be a function/);
    await refused({ protocol: { prepareMove: () => ({ move: 'now' }) }, adopt: () => undefined }, /cannot be used together/);
    assert.equal(server.listening, false);
    await upgrader.listen(server, target, { protocol: { prepareMove: () => ({ move: 'never' }) } });
    assert.equal(server.listening, true);
  } finally {
    upgrader.stop();
    server.close();
  }
});
