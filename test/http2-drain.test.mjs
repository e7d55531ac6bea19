// HTTP/2 through upgrades (TLS and h2c): a session cannot move, so the retiring process sends
// GOAWAY when no request of a client waiting for its responses can be crossing it; its streams in
// flight finish there and the client's next session reaches the successor. The example server uses
// the stream API with trailers (a gRPC service): giving it to listen() must not change how it
// behaves. Clients: Node's http2 (16 sessions hammering), undici (allowH2) and @grpc/grpc-js
// (unary and server-streaming calls). Zero failed requests, resets or refused streams.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { Agent as UndiciAgent, request as undiciRequest } from 'undici';
import { load, retirements, startExample, tlsCa, upgradeTimes } from './tls-upgrades.mjs';

const CLIENTS = 16;
const UPGRADES = 3;
let server;
afterEach(async () => {
  await server?.group.cleanup();
  if (server) fs.rmSync(server.base, { recursive: true, force: true });
  server = undefined;
});

async function throughUpgrades(kind, send, { clients = CLIENTS, minimum = 100 } = {}) {
  server = await startExample('http2-server.mjs', kind === 'h2c' ? ['--h2c'] : []);
  const running = load(clients, send);
  const pids = await upgradeTimes(server.group, 'http2-server', server.pid, UPGRADES);
  await new Promise((resolve) => setTimeout(resolve, 300));
  await running.stop();
  console.log(`${kind}: ${running.tally}; answered by ${[...running.pids].join(' ')}`);
  assert.deepEqual(running.tally.failures(), [], `failed: ${running.tally}`);
  assert.ok(running.tally.get('ok') >= minimum, `${running.tally}`);
  for (const pid of pids) assert.ok(running.pids.has(pid), `pid ${pid} never answered`);
  const reports = retirements(server.group, 'http2-server');
  for (const pid of pids.slice(0, -1)) assert.equal(reports.get(pid)?.remaining, 0, `pid ${pid}: ${JSON.stringify(reports.get(pid))}`);
}

/**
 * NodeH2Client: one session at a time, as a client that follows GOAWAY does: once its session
 * closes (it got GOAWAY) the next request opens a new one. Any stream error counts, by its code.
 */
class NodeH2Client {
  constructor(origin) {
    this.origin = origin;
    this.session = undefined;
  }
  current() {
    if (!this.session || this.session.closed || this.session.destroyed) {
      this.session = http2.connect(this.origin, { ca: tlsCa });
      this.session.on('error', () => undefined); // surfaces on the streams
    }
    return this.session;
  }
  get(path = '/') {
    return new Promise((resolve, reject) => {
      const stream = this.current().request({ ':path': path });
      let pid;
      stream.on('response', (headers) => (pid = Number(headers['x-pid'])));
      stream.on('data', () => undefined);
      stream.on('end', () => (pid ? resolve(pid) : reject(new Error('no response'))));
      stream.on('error', (err) => reject(Object.assign(err, { code: stream.rstCode ? `rst ${stream.rstCode}` : err.code })));
      stream.end();
    });
  }
  close() {
    this.session?.close();
  }
}

for (const kind of ['tls', 'h2c']) {
  test(`${kind}: Node's http2 client, ${CLIENTS} sessions, ${UPGRADES} upgrades: no refused stream`, { timeout: 60_000 }, async () => {
    const clients = [];
    try {
      await throughUpgrades(kind, (i) => {
        clients[i] ??= new NodeH2Client(`${kind === 'h2c' ? 'http' : 'https'}://127.0.0.1:${server.port}`);
        return clients[i].get();
      });
    } finally {
      for (const client of clients) client?.close();
    }
  });
}

test(`tls: undici with allowH2, ${CLIENTS} clients, ${UPGRADES} upgrades: no failed request`, { timeout: 60_000 }, async () => {
  const dispatchers = Array.from({ length: CLIENTS }, () => new UndiciAgent({ allowH2: true, connections: 1, connect: { ca: tlsCa } }));
  try {
    await throughUpgrades('tls', async (i) => {
      const res = await undiciRequest(`https://127.0.0.1:${server.port}/`, { dispatcher: dispatchers[i] });
      await res.body.dump();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
      return Number(res.headers['x-pid']);
    });
  } finally {
    await Promise.all(dispatchers.map((d) => d.destroy()));
  }
});

// A gRPC client without a .proto: raw bytes in and out.
const bytes = { serialize: (b) => b, deserialize: (b) => b };
const EchoClient = grpc.makeGenericClientConstructor({
  Echo: { path: '/handover.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize, responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
  Count: { path: '/handover.Echo/Count', requestStream: false, responseStream: true, requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize, responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
});

function grpcClient(kind) {
  const credentials = kind === 'h2c' ? grpc.credentials.createInsecure() : grpc.credentials.createSsl(tlsCa);
  // A connection of its own per client (grpc-js shares subchannels between clients by default).
  return new EchoClient(`127.0.0.1:${server.port}`, credentials, { 'grpc.use_local_subchannel_pool': 1, 'grpc.ssl_target_name_override': 'localhost', 'grpc.default_authority': 'localhost' });
}

function unary(client, text) {
  return new Promise((resolve, reject) => {
    const metadata = new grpc.Metadata();
    client.Echo(Buffer.from(text), metadata, (err, reply) => (err ? reject(Object.assign(err, { code: `grpc ${err.code}` })) : resolve(reply.toString())));
  });
}

function count(client, n) {
  return new Promise((resolve, reject) => {
    const call = client.Count(Buffer.from(String(n)));
    const messages = [];
    call.on('data', (message) => messages.push(message.toString()));
    call.on('error', (err) => reject(Object.assign(err, { code: `grpc ${err.code}` })));
    call.on('status', (status) => {
      if (status.code !== grpc.status.OK) return;
      // Every message of one call comes from one process, in order.
      const pids = new Set(messages.map((m) => m.split(' ')[1]));
      const ordered = messages.every((m, i) => m.startsWith(`${i + 1}/${n} `));
      if (messages.length !== n || pids.size !== 1 || !ordered) reject(Object.assign(new Error(`stream: ${messages.join(',')}`), { code: 'bad stream' }));
      else resolve(Number([...pids][0]));
    });
  });
}

test('the stream API with trailers works once the server is given to listen() (no compatibility layer)', { timeout: 30_000 }, async () => {
  server = await startExample('http2-server.mjs');
  const client = grpcClient('tls');
  try {
    assert.equal(await unary(client, 'hello'), 'hello');
    assert.equal(await count(client, 3), server.pid);
  } finally {
    client.close();
  }
});

for (const kind of ['tls', 'h2c']) {
  test(`${kind}: @grpc/grpc-js unary and server-streaming calls, ${UPGRADES} upgrades: every call OK`, { timeout: 60_000 }, async () => {
    const clients = [];
    try {
      await throughUpgrades(kind, async (i) => {
        clients[i] ??= grpcClient(kind);
        // Half the clients make unary calls, half stream 5 messages (50 ms) with trailers.
        if (i % 2 === 0) {
          const text = `call ${i}`;
          const reply = await unary(clients[i], text);
          if (reply !== text) throw Object.assign(new Error(reply), { code: 'wrong reply' });
          return undefined;
        }
        return count(clients[i], 5);
      }, { clients: 8, minimum: 50 });
    } finally {
      for (const client of clients) client?.close();
    }
  });
}
