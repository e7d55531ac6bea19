// The plain Bolt server of the SOFA RPC example (examples/rpc-server-core.mjs),
// without handover: the real sofa-rpc-node client against it, and the
// leftover mechanism a connection move relies on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRpcServer, frameLength } from '../examples/rpc-server-core.mjs';

const require = createRequire(import.meta.url);
const { RpcClient } = require('sofa-rpc-node').client;
const protocol = require('sofa-bolt-node/lib/protocol');

const HOST = '127.0.0.1';
const IFACE = 'com.example.Echo';
const CORE_URL = pathToFileURL(fileURLToPath(new URL('../examples/rpc-server-core.mjs', import.meta.url))).href;

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

async function waitFor(cond, what, timeout = 3000) {
  const end = Date.now() + timeout;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

// sofa-rpc-node logs through this; warnings are kept to show them on failure.
function quietLogger() {
  const warnings = [];
  const keep = (...args) => warnings.push(args.map(String).join(' '));
  return { warnings, info() {}, debug() {}, warn: keep, error: keep };
}

async function startServer() {
  const conns = [];
  const server = createRpcServer({ onConnection: conn => conns.push(conn) });
  server.listen(0, HOST);
  await once(server, 'listening');
  return { server, conns, port: server.address().port };
}

function closeServer(server) {
  return new Promise(resolve => server.close(() => resolve()));
}

// A direct client: serverHost instead of a registry. retryFaultInterval only
// shortens a sleep loop that would otherwise keep the process alive for 30 s
// after client.close() (lib/client/address_group.js _retryFaultAddresses).
async function startClient(port) {
  const logger = quietLogger();
  const client = new RpcClient({ logger });
  const consumer = client.createConsumer({
    interfaceName: IFACE,
    serverHost: `${HOST}:${port}`,
    responseTimeout: 5000,
    retryFaultInterval: 200,
  });
  await consumer.ready();
  const localPorts = () => [ ...client.connectionManager.connections.values() ].map(c => c._socket.localPort);
  return { client, consumer, logger, localPorts };
}

// ---- raw Bolt helpers (sofa-bolt-node's own encoder, our frame splitter) ----

const V1 = { protocolType: 'bolt', codecType: 'hessian2', boltVersion: 1, crcEnable: false };

function encodeRequest(id, methodName, args, opts = V1, oneway = false) {
  const serverSignature = `${IFACE}:1.0`;
  return protocol.requestEncode(id, {
    serverSignature, methodName, args, timeout: 3000, requestProps: { service: serverSignature }, oneway,
  }, opts);
}

// Collects decoded frames arriving on a raw socket.
function frameReader(socket) {
  const frames = [];
  let buf = Buffer.alloc(0);
  socket.on('data', chunk => {
    buf = Buffer.concat([ buf, chunk ]);
    for (let len = frameLength(buf); len && buf.length >= len; len = frameLength(buf)) {
      frames.push(protocol.decode(buf.subarray(0, len), {}));
      buf = buf.subarray(len);
    }
  });
  return frames;
}

async function rawConnect(port) {
  const socket = net.connect(port, HOST);
  socket.setNoDelay(true);
  await once(socket, 'connect');
  return { socket, frames: frameReader(socket) };
}

// ---------------------------------------------------------------------------

test('sofa-rpc-node client: echo, pid, concurrent slow calls on one kept connection', { timeout: 20000 }, async () => {
  const { server, conns, port } = await startServer();
  const { client, consumer, logger, localPorts } = await startClient(port);
  try {
    assert.equal(await consumer.invoke('echo', [ 'hello' ]), 'hello');
    assert.equal(await consumer.invoke('echo', [ 'ünïcødé ✓' ]), 'ünïcødé ✓');
    assert.equal(await consumer.invoke('pid', []), process.pid);
    const [ firstPort ] = localPorts();
    assert.equal(typeof firstPort, 'number');

    // 20 slow(200) and an echo at once: all multiplexed on the one connection.
    const t0 = Date.now();
    const slows = Array.from({ length: 20 }, () => consumer.invoke('slow', [ 200 ]));
    const echo = consumer.invoke('echo', [ 'meanwhile' ]);
    await waitFor(() => conns[0].inFlight === 20, '20 requests in flight');
    assert.equal(await echo, 'meanwhile');
    assert.deepEqual(await Promise.all(slows), Array(20).fill(200));
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 195 && elapsed < 2000, `20 concurrent slow(200) took ${elapsed} ms`);
    assert.equal(conns[0].inFlight, 0);

    // Out of order: a slow(300) sent first is answered after a later echo.
    const order = [];
    const slow = consumer.invoke('slow', [ 300 ]).then(v => { order.push('slow'); return v; });
    const fast = consumer.invoke('echo', [ 'fast' ]).then(v => { order.push('echo'); return v; });
    assert.deepEqual(await Promise.all([ slow, fast ]), [ 300, 'fast' ]);
    assert.deepEqual(order, [ 'echo', 'slow' ]);

    // An unknown method is an error response, and the connection lives on.
    await assert.rejects(consumer.invoke('nope', []), /RpcServerException: Error: Can not find method: com\.example\.Echo#nope\(\)/);
    assert.equal(await consumer.invoke('echo', [ 'still here' ]), 'still here');

    // The same TCP connection carried everything.
    assert.deepEqual(localPorts(), [ firstPort ]);
    assert.equal(conns.length, 1);
    assert.equal(conns[0].socket.remotePort, firstPort);
    assert.equal(conns[0].halfFrame, false);
  } catch (err) {
    if (logger.warnings.length) err.message += `\nclient warnings:\n${logger.warnings.join('\n')}`;
    throw err;
  } finally {
    await client.close();
    await closeServer(server);
  }
});

test('raw Bolt: heartbeat ack, out-of-order responses, bolt v2 with crc, oneway, undecodable body', { timeout: 20000 }, async () => {
  const { server, port } = await startServer();
  const { socket, frames } = await rawConnect(port);
  try {
    socket.write(protocol.heartbeatEncode(7, { timeout: 3000 }, V1));
    await waitFor(() => frames.length === 1, 'heartbeat ack');
    assert.equal(frames[0].packetType, 'heartbeat_ack');
    assert.equal(frames[0].packetId, 7);

    // One write, two requests: the slow one first, yet its response comes second.
    socket.write(Buffer.concat([ encodeRequest(10, 'slow', [ 150 ]), encodeRequest(11, 'echo', [ 'x' ]) ]));
    await waitFor(() => frames.length === 3, 'two responses');
    assert.deepEqual(frames.slice(1).map(f => [ f.packetId, f.data.appResponse ]), [ [ 11, 'x' ], [ 10, 150 ] ]);

    // Bolt v2 with a crc32 trailer: the answer uses the request's framing.
    const V2 = { protocolType: 'bolt2', codecType: 'hessian2', boltVersion: 2, crcEnable: true };
    socket.write(encodeRequest(12, 'echo', [ 'v2' ], V2));
    await waitFor(() => frames.length === 4, 'v2 response');
    assert.equal(frames[3].packetId, 12);
    assert.equal(frames[3].options.protocolType, 'bolt2');
    assert.equal(frames[3].data.appResponse, 'v2');

    // A oneway request runs but gets no response.
    socket.write(encodeRequest(13, 'echo', [ 'oneway' ], V1, true));
    socket.write(encodeRequest(14, 'echo', [ 'after' ]));
    await waitFor(() => frames.length === 5, 'response after oneway');
    assert.equal(frames[4].packetId, 14);

    // A body that cannot be decoded (protobuf, no proto) is answered with an
    // error; the framing is intact, so the connection goes on.
    const bad = encodeRequest(15, 'echo', [ 'pb' ]);
    bad[9] = 11; // codec byte: protobuf
    socket.write(Buffer.concat([ bad, encodeRequest(16, 'echo', [ 'ok' ]) ]));
    await waitFor(() => frames.length === 7, 'error response and next answer');
    assert.equal(frames[5].packetId, 15);
    assert.match(frames[5].data.error.message, /cannot decode request/);
    assert.equal(frames[6].data.appResponse, 'ok');
  } finally {
    socket.destroy();
    await closeServer(server);
  }
});

test('raw Bolt: garbage closes the connection', { timeout: 20000 }, async () => {
  const { server, conns, port } = await startServer();
  const { socket } = await rawConnect(port);
  try {
    const errors = [];
    await waitFor(() => conns.length === 1, 'connection');
    conns[0].on('protocolError', err => errors.push(err.message));
    socket.write('GET / HTTP/1.1\r\n\r\n');
    await once(socket, 'close');
    assert.match(errors[0], /not a Bolt frame/);
  } finally {
    socket.destroy();
    await closeServer(server);
  }
});

test('leftover: a half-received frame is handed to another server and answered there', { timeout: 20000 }, async () => {
  const a = await startServer();
  const b = await startServer();
  const { socket, frames } = await rawConnect(a.port);
  try {
    await waitFor(() => a.conns.length === 1, 'connection on A');
    const connA = a.conns[0];

    // Bytes arrive in three pieces: not even a full header, then part of the body.
    const req = encodeRequest(1, 'echo', [ 'split across owners' ]);
    socket.write(req.subarray(0, 10));
    await waitFor(() => connA.halfFrame, 'A holding a partial header');
    const cut = req.length >> 1;
    socket.write(req.subarray(10, cut));
    await waitFor(() => connA.socket.bytesRead === cut, 'A reading the first half');
    assert.equal(connA.halfFrame, true);
    assert.equal(frames.length, 0);

    // A stops at this point and hands over what it has not decoded.
    const leftover = connA.detach();
    assert.deepEqual(leftover, req.subarray(0, cut));
    assert.equal(connA.halfFrame, false);
    assert.equal(connA.takeLeftover().length, 0);

    const connB = b.server.adoptConnection(connA.socket, leftover);
    assert.equal(b.conns[0], connB);
    assert.equal(connB.halfFrame, true);

    socket.write(req.subarray(cut));
    await waitFor(() => frames.length === 1, 'the answer from B');
    assert.equal(frames[0].packetId, 1);
    assert.equal(frames[0].data.appResponse, 'split across owners');
    assert.equal(connB.halfFrame, false);

    // B keeps serving the connection.
    socket.write(encodeRequest(2, 'echo', [ 'next' ]));
    await waitFor(() => frames.length === 2, 'a second answer from B');
    assert.equal(frames[1].data.appResponse, 'next');
  } finally {
    socket.destroy();
    await closeServer(a.server);
    await closeServer(b.server);
  }
});

test('leftover: the same works across processes (socket passed over IPC)', { timeout: 20000 }, async () => {
  const a = await startServer();
  // The successor: adopts a socket with its leftover, runs until disconnected.
  const child = spawn(process.execPath, [ '--input-type=module', '-e', `
    import { adoptConnection } from ${JSON.stringify(CORE_URL)};
    process.on('message', (msg, socket) => {
      const conn = adoptConnection(socket, Buffer.from(msg.leftover, 'base64'));
      process.send({ adopted: true, halfFrame: conn.halfFrame });
    });
    process.send({ ready: true });
  ` ], { stdio: [ 'ignore', 'inherit', 'inherit', 'ipc' ] });
  const messages = [];
  child.on('message', m => messages.push(m));
  const { socket, frames } = await rawConnect(a.port);
  try {
    await waitFor(() => messages.some(m => m.ready), 'child ready', 10000);
    await waitFor(() => a.conns.length === 1, 'connection on A');
    const connA = a.conns[0];
    const localPort = socket.localPort;

    const req = encodeRequest(1, 'pid', []);
    const cut = 30; // past the header: the lengths are known, the body is not
    socket.write(req.subarray(0, cut));
    await waitFor(() => connA.socket.bytesRead === cut, 'A reading the first part');
    const leftover = connA.detach();
    assert.equal(leftover.length, cut);

    child.send({ leftover: leftover.toString('base64') }, connA.socket);
    await waitFor(() => messages.some(m => m.adopted), 'child adopted the socket');
    assert.equal(messages.find(m => m.adopted).halfFrame, true);

    socket.write(req.subarray(cut));
    await waitFor(() => frames.length === 1, 'the answer from the child');
    assert.equal(frames[0].packetId, 1);
    assert.equal(frames[0].data.appResponse, child.pid);
    assert.notEqual(child.pid, process.pid);
    assert.equal(socket.localPort, localPort); // the very same TCP connection
  } finally {
    socket.destroy();
    // A net.Server that sent a socket through child_process asks the child
    // whether it is closed before close() completes: close it while the
    // child still listens on IPC, then let the child go.
    await closeServer(a.server);
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      if (child.connected) child.disconnect();
      else child.kill();
      await exited;
    }
  }
});
