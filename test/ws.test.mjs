// WebSockets through upgrades (handover/ws), with real processes and the npm `ws` client: clients
// keep their connections and see nothing (no close, every echo once and in order, ticks
// consecutive); a client whose frame is half-received at retirement moves right after that frame;
// compression moves only without context takeover (else 1012, never 1006); a successor killed while
// WebSockets move leaves the ones it had not acknowledged with the old process, which serves on.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { once } from 'node:events';
import { Sandbox, fixtures, root, waitUntil, sleep } from './helpers.mjs';
import { wsUpgrades } from '../bench/ws-upgrades.mjs';
import { WsClient, openClients, summary } from '../bench/lib/ws-load.mjs';

const HOST = '127.0.0.1';
const example = path.join(root, 'examples', 'ws-server.mjs');
const sandbox = new Sandbox();
const sockets = [];
const clientSets = [];
after(async () => {
  for (const socket of sockets) socket.destroy();
  for (const set of clientSets) for (const c of set) c.close();
  await sandbox.cleanup();
});

async function start(script, extra = [], env = {}) {
  const group = sandbox.group();
  const dir = path.join(sandbox.dir('handover-ws-'), 'ctl');
  group.start([script, '--port', '0', '--host', HOST, '--dir', dir, ...extra], { env });
  const [, pid, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  return { group, dir, pid: Number(pid), port: Number(port) };
}

/** upgrade: SIGHUP to `pid`; resolves with the new generation's pid once it is ready. */
async function upgrade(group, pid) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
  return Number(next);
}

const retiredLine = (group, pid) => new RegExp(`\\[\\S+ ${pid}\\] retired: (\\d+) connections moved, (\\d+) closed`).exec(group.stderr.join(''));

// The proof, as users would write the clients: 500 `ws` clients, each sending a numbered
// message every 50 ms, through 20 upgrades. 500 is also more than one CONN batch (253), so that
// while they move some are held by the old process and some by the new one, and the example's
// broadcasts must reach each exactly once.
const CLIENTS = 500;
const UPGRADES = 20;
test(`${CLIENTS} ws clients through ${UPGRADES} upgrades: no close, every echo once and in order, ticks consecutive, every broadcast once, same TCP connections, a new pid each time`, async () => {
  const result = await wsUpgrades({ clients: CLIENTS, upgrades: UPGRADES });
  assert.deepEqual(result.problems, []);
  assert.equal(result.closes, 0);
  assert.equal(result.echoed, result.sent);
  assert.ok(result.sent > CLIENTS * UPGRADES * 5, `${result.sent} messages sent`);
  assert.ok(result.broadcasts > 50, `${result.broadcasts} broadcasts`);
  assert.equal(new Set(result.pids).size, UPGRADES + 1);
  assert.equal(result.retirements.length, UPGRADES);
  for (const r of result.retirements) assert.deepEqual([r.moved, r.closed, r.left], [CLIENTS, 0, 0]);
});

// ---- a raw client, to cut frames where the test wants ----------------------------------------

/** A client frame (masked, as RFC 6455 requires of clients). */
function clientFrame(text, { fin = true, opcode = 1 } = {}) {
  const payload = Buffer.from(text);
  let header;
  if (payload.length < 126) header = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536) {
    header = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | 126, 0, 0]);
    header.writeUInt16BE(payload.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[0] = (fin ? 0x80 : 0) | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  const mask = crypto.randomBytes(4);
  const masked = Buffer.from(payload.map((byte, i) => byte ^ mask[i % 4]));
  return Buffer.concat([header, mask, masked]);
}

/** RawWebSocket: the handshake by hand, then frames as the test cuts them; collects the server's text messages. */
class RawWebSocket {
  static async connect(port) {
    const socket = net.connect(port, HOST);
    sockets.push(socket);
    await once(socket, 'connect');
    const key = crypto.randomBytes(16).toString('base64');
    socket.write(`GET /ws HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    const raw = new RawWebSocket(socket);
    await waitUntil(() => raw.handshake !== undefined, 5000, 'the 101 response');
    assert.match(raw.handshake, /^HTTP\/1.1 101 /);
    return raw;
  }

  constructor(socket) {
    this.socket = socket;
    this.messages = [];
    this.closed = false;
    this.handshake = undefined;
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (this.handshake === undefined) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        this.handshake = buf.subarray(0, end).toString();
        buf = buf.subarray(end + 4);
      }
      // Server frames: unmasked; the example's are short text frames.
      while (buf.length >= 2) {
        let length = buf[1] & 0x7f;
        let offset = 2;
        if (length === 126) {
          if (buf.length < 4) break;
          length = buf.readUInt16BE(2);
          offset = 4;
        } else if (length === 127) {
          if (buf.length < 10) break;
          length = Number(buf.readBigUInt64BE(2));
          offset = 10;
        }
        if (buf.length < offset + length) break;
        this.messages.push({ opcode: buf[0] & 0x0f, text: buf.subarray(offset, offset + length).toString() });
        buf = buf.subarray(offset + length);
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => (this.closed = true));
  }

  /** waitFor resolves with the first message after `since` that starts with `prefix`. */
  async waitFor(prefix, since = 0) {
    let found;
    await waitUntil(() => (found = this.messages.slice(since).find((m) => m.text.startsWith(prefix))) !== undefined || this.closed, 10_000, `a message ${prefix}`);
    assert.ok(found, `closed before ${prefix}`);
    return found.text;
  }

  echoes(of) {
    return this.messages.filter((m) => m.text.startsWith('echo:') && m.text.endsWith(`:${of}`)).map((m) => m.text);
  }

  ticksConsecutive() {
    const ticks = this.messages.filter((m) => m.text.startsWith('tick:')).map((m) => Number(m.text.slice(5)));
    return ticks.length > 0 && ticks.every((n, i) => n === i + 1);
  }
}

test('frames half-received at retirement (cut in the payload, in a 64-bit length, a fragmented message): the old process reads on to their end and answers them, then they move; one header byte moves as pending', async () => {
  const { group, pid, port } = await start(example);
  const cut = await RawWebSocket.connect(port); // cut in its payload
  const fragmented = await RawWebSocket.connect(port); // a fragmented message, one fragment in
  const oneByte = await RawWebSocket.connect(port); // one byte of a frame: moves with it as pending
  const large = await RawWebSocket.connect(port); // a 100 KB frame cut inside its 64-bit length
  const whole = clientFrame('half-frame');
  const bigText = `big-${'x'.repeat(100_000)}`;
  const big = clientFrame(bigText);
  large.socket.write(big.subarray(0, 5));
  cut.socket.write(whole.subarray(0, 9));
  fragmented.socket.write(clientFrame('first-', { fin: false, opcode: 1 }));
  const next = clientFrame('one-byte');
  oneByte.socket.write(next.subarray(0, 1));
  await sleep(100);
  const successor = await upgrade(group, pid);
  // Retirement has begun: from here on the old process reads only up to the ends of those frames.
  await waitUntil(() => group.stderr.join('').includes(`[ws-server ${pid}] retiring:`), 10_000, 'the retirement to begin');
  await sleep(300);
  // The old process is still retiring: it waits for the rest of the two messages it holds part of.
  assert.equal(retiredLine(group, pid), null, 'retired before the half-received frames completed');
  cut.socket.write(whole.subarray(9));
  fragmented.socket.write(clientFrame('second', { fin: true, opcode: 0 }));
  oneByte.socket.write(next.subarray(1));
  large.socket.write(big.subarray(5));
  assert.equal(await large.waitFor('echo:'), `echo:${pid}:${bigText}`);
  assert.equal(await cut.waitFor('echo:'), `echo:${pid}:half-frame`);
  assert.equal(await fragmented.waitFor('echo:'), `echo:${pid}:first-second`);
  // The one byte travelled as pending: the successor parsed the frame it begins.
  assert.equal(await oneByte.waitFor('echo:'), `echo:${successor}:one-byte`);
  await waitUntil(() => retiredLine(group, pid), 10_000, `pid ${pid} to retire`);
  assert.deepEqual(retiredLine(group, pid).slice(1, 3), ['4', '0']);
  for (const raw of [cut, fragmented, oneByte, large]) {
    const since = raw.messages.length;
    raw.socket.write(clientFrame('after'));
    assert.equal(await raw.waitFor('echo:', since), `echo:${successor}:after`);
    assert.equal(raw.closed, false);
    assert.ok(raw.ticksConsecutive(), 'ticks consecutive');
  }
  assert.deepEqual(cut.echoes('half-frame'), [`echo:${pid}:half-frame`]);
  assert.deepEqual(fragmented.echoes('first-second'), [`echo:${pid}:first-second`]);
  assert.deepEqual(oneByte.echoes('one-byte'), [`echo:${successor}:one-byte`]);
});

test('the negotiated subprotocol, the upgrade request and binaryType move; a reply sent by the old process after the move arrives as a late write', async () => {
  const { group, pid, port } = await start(path.join(fixtures, 'ws-fixture-server.mjs'));
  const client = new WsClient(`ws://${HOST}:${port}/ws?room=7`, { protocols: ['chat.v1', 'chat.v2'], headers: { 'x-user': 'ada' } });
  clientSets.push([client]);
  await client.opened;
  const localPort = client.localPort;
  const answers = [];
  client.ws.on('message', (data) => {
    const text = data.toString();
    if (!text.startsWith('tick:')) answers.push(text);
  });
  client.ws.send('binaryType=arraybuffer');
  // Answered only once the WebSocket is the successor's: by this process, through the successor.
  client.ws.send('late:after-the-move');
  await sleep(100);
  const successor = await upgrade(group, pid);
  await waitUntil(() => answers.includes(`echo:${pid}:after-the-move`), 10_000, 'the late reply');
  await waitUntil(() => retiredLine(group, pid), 10_000, `pid ${pid} to retire`);
  assert.deepEqual(retiredLine(group, pid).slice(1, 3), ['1', '0']);
  assert.equal(await client.askPid(), successor);
  const before = answers.length;
  client.ws.send('protocol');
  client.ws.send('binaryType');
  client.ws.send('request');
  await waitUntil(() => answers.slice(before).some((a) => a.startsWith('request:')), 10_000, 'the answers');
  assert.ok(answers.slice(before).includes('binaryType:arraybuffer'), answers.join(' '));
  assert.ok(answers.includes('protocol:chat.v2'), answers.join(' '));
  assert.ok(answers.includes('request:/ws?room=7:ada'), answers.join(' '));
  assert.equal(client.ws.protocol, 'chat.v2');
  assert.deepEqual(client.closes, []);
  assert.deepEqual(client.problems, []);
  assert.equal(client.ws._socket.localPort, localPort);
});

// ---- compression ----------------------------------------------------------------------------

test('permessage-deflate without context takeover moves (2 upgrades, every message compressed)', async () => {
  const { group, pid, port } = await start(path.join(fixtures, 'ws-fixture-server.mjs'), ['--deflate', 'no-takeover']);
  const clients = await openClients(`ws://${HOST}:${port}/ws`, 20, { perMessageDeflate: true });
  clientSets.push(clients);
  assert.match(clients[0].ws.extensions, /permessage-deflate/);
  const ports = clients.map((c) => c.localPort);
  for (const c of clients) c.start();
  let current = pid;
  for (let i = 0; i < 2; i++) {
    await sleep(300);
    const old = current;
    current = await upgrade(group, old);
    await waitUntil(() => retiredLine(group, old), 10_000, `pid ${old} to retire`);
    assert.deepEqual(retiredLine(group, old).slice(1, 3), ['20', '0']);
    assert.deepEqual(await Promise.all(clients.map((c) => c.askPid())), clients.map(() => current));
  }
  for (const c of clients) c.stop();
  await waitUntil(() => clients.every((c) => c.allEchoed), 10_000, 'the last echoes');
  assert.deepEqual(summary(clients, ports).problems, []);
});

test('permessage-deflate with context takeover: closed with 1012 after the messages in flight, never 1006', async () => {
  const { group, pid, port } = await start(path.join(fixtures, 'ws-fixture-server.mjs'), ['--deflate', 'takeover']);
  const clients = await openClients(`ws://${HOST}:${port}/ws`, 10, { perMessageDeflate: true });
  clientSets.push(clients);
  for (const c of clients) c.start();
  await sleep(300);
  await upgrade(group, pid);
  await waitUntil(() => clients.every((c) => c.closes.length > 0), 10_000, 'every client to be closed');
  for (const c of clients) {
    assert.deepEqual(c.closes, [1012]);
    // Everything the old process answered arrived, in order, before the close: no gap, no repeat.
    assert.deepEqual(c.problems.filter((p) => !/tick|echo/.test(p)), []);
    assert.deepEqual(c.problems, []);
    assert.ok(c.echoed > 0 && c.echoed <= c.sent);
  }
  await waitUntil(() => retiredLine(group, pid), 10_000, `pid ${pid} to retire`);
  assert.deepEqual(retiredLine(group, pid).slice(1, 3), ['0', '10']);
});

test('wss:// (TLS): closed with 1012 at retirement, never 1006', async () => {
  const { group, pid, port } = await start(path.join(fixtures, 'ws-fixture-server.mjs'), ['--tls']);
  const clients = await openClients(`wss://localhost:${port}/ws`, 3, { rejectUnauthorized: false });
  clientSets.push(clients);
  for (const c of clients) c.start();
  await sleep(300);
  await upgrade(group, pid);
  await waitUntil(() => clients.every((c) => c.closes.length > 0), 10_000, 'every client to be closed');
  for (const c of clients) {
    assert.deepEqual(c.closes, [1012]);
    assert.deepEqual(c.problems, []);
  }
  await waitUntil(() => retiredLine(group, pid), 10_000, `pid ${pid} to retire`);
  assert.deepEqual(retiredLine(group, pid).slice(1, 3), ['0', '3']);
});

// ---- a successor killed while WebSockets move -------------------------------------------------

test('a successor SIGKILLed while WebSockets move: those it had not acknowledged stay with the old process and keep working', async () => {
  const base = sandbox.dir('handover-ws-kill-');
  const killFile = path.join(base, 'kill');
  const { group, pid, port } = await start(path.join(fixtures, 'ws-kill-server.mjs'), [], { WS_KILL_FILE: killFile });
  // More than one CONN batch (253): the first is acknowledged and lost with the successor, the rest stay.
  const COUNT = 300;
  const clients = await openClients(`ws://${HOST}:${port}/ws`, COUNT);
  clientSets.push(clients);
  const ports = clients.map((c) => c.localPort);
  for (const c of clients) c.start();
  await sleep(300);
  fs.writeFileSync(killFile, '');
  process.kill(pid, 'SIGHUP');
  await waitUntil(() => /successor \d+ lost/.test(group.stderr.join('')), 15_000, 'the rollback');
  const count = (prefix) => group.lines.filter((l) => l.startsWith(prefix)).length;
  await waitUntil(() => count('transfer acked') + count('transfer kept') === COUNT, 10_000, 'every WebSocket to be acknowledged or come back');
  const acked = count('transfer acked');
  assert.ok(acked > 0 && acked < COUNT, `${acked} acknowledged`);
  const keptPorts = new Set(group.lines.filter((l) => l.startsWith('transfer kept')).map((l) => Number(/port=(\d+)/.exec(l)[1])));
  const kept = clients.filter((c) => keptPorts.has(c.localPort));
  assert.equal(kept.length, COUNT - acked);
  // The kept ones keep working on the old process, on the same connection, and saw nothing.
  await sleep(300);
  assert.deepEqual(await Promise.all(kept.map((c) => c.askPid())), kept.map(() => pid));
  for (const c of kept) c.stop();
  await waitUntil(() => kept.every((c) => c.allEchoed), 10_000, 'the last echoes');
  const keptSummary = summary(kept, kept.map((c) => ports[clients.indexOf(c)]));
  assert.deepEqual(keptSummary.problems, []);
  assert.equal(keptSummary.closes, 0);
  assert.ok(kept.every((c) => c.lastTick > 5), 'ticks went on');
});
