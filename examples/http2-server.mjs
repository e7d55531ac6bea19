#!/usr/bin/env node
// An HTTP/2 server (TLS, or cleartext h2c with --h2c) that upgrades itself with zero downtime. It
// uses the stream API with trailers (a tiny gRPC service), the way gRPC servers do.
//   node examples/http2-server.mjs --port P [--host H] --dir D [--h2c] [--cert C --key K]
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// GET / answers 200 with `x-pid`; GET /slow?ms=N answers after N ms. gRPC (no .proto needed, the
// messages are raw bytes): /handover.Echo/Echo answers its request (unary), /handover.Echo/Count
// with a request of N (decimal text) streams N messages `i/N pid`, 10 ms apart, then trailers.
// Without --cert/--key it uses the test certificate for 127.0.0.1/localhost in test/fixtures/.
//
// An HTTP/2 session cannot move to another process (HPACK tables, stream states, TLS keys), so at
// an upgrade this process drains: each session gets GOAWAY when none of its client's requests can
// be crossing it, its streams in flight finish here, and the client opens its next session to the
// successor (see docs/http2-and-tls.md).
import fs from 'node:fs';
import http2 from 'node:http2';
import { createUpgrader } from 'handover';
import { example, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('http2-server', {
  options: {
    h2c: { type: 'boolean', default: false },
    cert: { type: 'string', default: new URL('../test/fixtures/tls-cert.pem', import.meta.url).pathname },
    key: { type: 'string', default: new URL('../test/fixtures/tls-key.pem', import.meta.url).pathname },
  },
  usage: '[--h2c] [--cert C --key K]',
});

const upgrader = createUpgrader({ dir: args.dir });

const server = args.h2c ? http2.createServer() : http2.createSecureServer({ cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key) });

/** A gRPC message: a compression flag (0), a 4-byte big-endian length, the bytes. */
function grpcMessage(payload) {
  const bytes = Buffer.from(payload);
  const header = Buffer.alloc(5);
  header.writeUInt32BE(bytes.length, 1);
  return Buffer.concat([header, bytes]);
}

/** A gRPC call over the stream API: one request message in, responses out, then trailers with grpc-status. */
function grpc(stream, method) {
  const chunks = [];
  stream.on('data', (chunk) => chunks.push(chunk));
  stream.on('end', () => {
    if (stream.destroyed) return;
    const request = Buffer.concat(chunks).subarray(5); // one uncompressed message
    const known = method === 'Echo' || method === 'Count';
    stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'x-pid': String(process.pid) }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': known ? '0' : '12' })); // 12: UNIMPLEMENTED
    if (method === 'Echo') return stream.end(grpcMessage(request));
    if (method !== 'Count') return stream.end();
    const count = Number(request.toString()) || 0;
    let sent = 0;
    const next = () => {
      if (stream.destroyed) return;
      if (sent === count) return stream.end();
      sent++;
      stream.write(grpcMessage(`${sent}/${count} ${process.pid}`));
      setTimeout(next, 10);
    };
    next();
  });
}

server.on('stream', (stream, headers) => {
  const url = new URL(headers[':path'] ?? '/', 'https://localhost');
  if (url.pathname.startsWith('/handover.Echo/')) return grpc(stream, url.pathname.slice('/handover.Echo/'.length));
  const answer = () => {
    if (stream.destroyed) return;
    stream.respond({ ':status': 200, 'content-type': 'text/plain', 'x-pid': String(process.pid) });
    stream.end(`hello from ${process.pid}\n`);
  };
  stream.resume(); // a request body, if any, is not needed
  if (url.pathname === '/slow') setTimeout(answer, Number(url.searchParams.get('ms')) || 0);
  else answer();
});

await upgrader.listen(server, { port: args.port, host: args.host }).catch(cannotListen);

await serve(upgrader, { log, server });
