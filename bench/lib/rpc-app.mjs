#!/usr/bin/env node
// The Bolt RPC app without the library (examples/rpc-server-core.mjs), for bench/rpc.mjs:
//   --mode plain  SIGTERM kills it (Node's default); a plain restart starts a new one afterwards
//   --mode pm2    under PM2's cluster mode; on SIGINT (PM2's stop signal) it stops accepting, stops
//                 decoding, answers the calls in flight, closes each connection, and exits
//   node bench/lib/rpc-app.mjs --mode M --port P
// Prints `ready pid=<pid> port=<P>` when it serves. (With the library: examples/rpc-server.mjs.)
import { parseArgs } from 'node:util';
import { createRpcServer } from '../../examples/rpc-server-core.mjs';

const { values } = parseArgs({ options: { mode: { type: 'string' }, port: { type: 'string' } } });
const port = Number(values.port);
const conns = new Set();
const server = createRpcServer({
  onConnection(conn) {
    conns.add(conn);
    conn.socket.once('close', () => conns.delete(conn));
  },
});
server.listen(port, '127.0.0.1', () => console.log(`ready pid=${process.pid} port=${port}`));

if (values.mode === 'pm2') {
  process.on('SIGINT', () => {
    server.close();
    // Bolt has no "goodbye" frame: answer the calls in flight, then close (FIN).
    for (const conn of conns) {
      conn.detach();
      const close = () => {
        if (conn.inFlight === 0) conn.socket.end(() => conn.socket.destroy());
      };
      conn.on('idle', close);
      close();
    }
    const exitWhenDone = () => (conns.size === 0 ? process.exit(0) : setTimeout(exitWhenDone, 10));
    exitWhenDone();
  });
}
