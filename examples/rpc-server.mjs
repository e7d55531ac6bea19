#!/usr/bin/env node
// A SOFA Bolt RPC server that upgrades itself with zero downtime, keeping its clients' TCP connections.
//   node examples/rpc-server.mjs --port P [--host H] --dir D
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Serves com.example.Echo: echo(str), slow(ms) (answers after ms milliseconds), pid().
//
// The Bolt protocol itself is in rpc-server-core.mjs (sofa-bolt-node does the codec). What this file
// adds is the handover protocol adapter (docs/adapters.md), both halves of it:
//   - retiring (predecessor): a Bolt connection can move at any moment: it stops decoding and hands
//     over the bytes of its half-received frame; responses to the calls in flight follow as late
//     writes (Bolt matches them by id); the library lets go of this process's copy after the last.
//   - adopting (successor): a moved connection gets a decoder fed with those bytes first.
// Responses on a connection go out as each call finishes (out of order; Bolt matches them by id).
import { once } from 'node:events';
import { createUpgrader } from 'handover';
import { example, movedFirst, serve } from './lib/example.mjs';
import { createRpcServer } from './rpc-server-core.mjs';

const { args, log, cannotListen } = example('rpc-server');

const upgrader = createUpgrader({ dir: args.dir });

/** The connections this process decodes (accepted, adopted, or kept after a failed move), by socket. */
const conns = new Map();
const server = createRpcServer({
  onConnection(conn) {
    conns.set(conn.socket, conn);
    conn.socket.once('close', () => {
      conns.delete(conn.socket);
      outcome(conn.socket, 'closed');
    });
  },
});

/** idle: resolves once every call decoded so far is answered (nothing more is decoded after detach()). */
const idle = (conn) => (conn.inFlight === 0 ? Promise.resolve() : once(conn, 'idle'));

/** finish: Bolt has no "goodbye" frame: stop decoding, answer the calls in flight, then close (FIN). */
function finish(conn) {
  conn.detach();
  void idle(conn).then(() => conn.socket.end(() => conn.socket.destroy()));
}

await upgrader.listen(server, { port: args.port, host: args.host }, {
  protocol: {
    // Any moment is a safe point: the half-received frame travels as `pending`.
    prepareMove: (socket) => {
      const conn = conns.get(socket);
      if (!conn) return { move: 'never', reason: 'not a Bolt connection (any more)' };
      return { move: 'now', pending: conn.detach(), lateWrites: idle(conn) };
    },
    resume: (socket, pending, reason) => {
      conns.get(socket)?.attach(pending); // the leftover first, then the socket again
      outcome(socket, reason.code);
    },
    moved: (socket) => {
      conns.delete(socket);
      outcome(socket, 'moved');
    },
    drain: (socket) => conns.has(socket) && finish(conns.get(socket)),
    // Successor side: the decoder gets `pending` first, then starts the socket reading.
    adopt: (socket, { pending }) => server.adoptConnection(socket, pending),
  },
}).catch(cannotListen);

// What became of the connections of one retirement, for the log: moved, kept (why), or closed.
let tally;
function outcome(socket, what) {
  if (!tally?.waiting.delete(socket)) return;
  tally.outcomes.set(what, (tally.outcomes.get(what) ?? 0) + 1);
  if (tally.waiting.size > 0) return;
  const moved = tally.outcomes.get('moved') ?? 0;
  const why = [...tally.outcomes].filter(([code]) => code !== 'moved').map(([code, n]) => `${n} ${code}`).join(', ');
  log(`moved ${moved} connections to pid ${tally.successorPid}${moved < tally.expected ? `; ${tally.expected - moved} stay here (${why})` : ''}`);
  tally = undefined;
}

upgrader.on('retiring', ({ successorPid }) => {
  const calls = [...conns.values()].reduce((sum, conn) => sum + conn.inFlight, 0);
  tally = { successorPid, expected: conns.size, waiting: new Set(conns.keys()), outcomes: new Map() };
  log(`retiring: moving ${conns.size} connections (${calls} calls in flight) to pid ${successorPid}`);
});

await serve(upgrader, {
  log,
  server,
  close: () => {
    server.close();
    for (const conn of conns.values()) finish(conn);
  },
  retiredLine: movedFirst,
});
