#!/usr/bin/env node
// A SOFA Bolt RPC server that upgrades itself with zero downtime, keeping its clients' TCP connections.
//   node examples/rpc-server.mjs --port P [--host H] --dir D
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
// Serves com.example.Echo: echo(str), slow(ms) (answers after ms milliseconds), pid().
//
// The Bolt protocol itself is in rpc-server-core.mjs (sofa-bolt-node does the codec). What this file
// adds is the handover adapter, both sides of it:
//   - retiring (predecessor): every live connection stops decoding, hands over the bytes of its
//     half-received frame and moves to the successor at once, slow calls in flight or not; their
//     responses follow as late writes; once the last one is written, this process lets go.
//   - adopting (successor): a moved connection gets a decoder fed with those bytes first.
// Responses on a connection go out as each call finishes (out of order; Bolt matches them by id).
import { parseArgs } from 'node:util';
import { createUpgrader } from 'handover';
import { createRpcServer } from './rpc-server-core.mjs';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    dir: { type: 'string' },
  },
});
if (values.port === undefined || values.dir === undefined) {
  console.error('usage: node examples/rpc-server.mjs --port P [--host H] --dir D');
  process.exit(2);
}
const port = Number(values.port);
const log = (line) => console.error(`[rpc-server ${process.pid}] ${line}`);

const upgrader = createUpgrader({ dir: values.dir });

/** The connections this process decodes (accepted, adopted, or kept after a failed move). */
const conns = new Set();
const server = createRpcServer({
  onConnection(conn) {
    conns.add(conn);
    conn.socket.once('close', () => conns.delete(conn));
  },
});

await upgrader.listen(server, { port, host: values.host }, {
  // Successor side: a connection moved here from the predecessor. The socket does not read yet;
  // `pending` is what the predecessor had read but not decoded (part of a frame): the decoder gets
  // it first, then starts the socket reading (BoltConnection's constructor does both, in that order).
  adopt(socket, { pending }) {
    server.adoptConnection(socket, pending);
  },
});

/**
 * moveConnection hands one connection to the successor; true if it moved, false if it stays here.
 * Requests in flight need not finish first: their responses, written after the move, are late
 * writes the successor puts on the connection in order.
 */
async function moveConnection(conn) {
  const { socket } = conn;
  if (socket.destroyed) return false;
  // Stop decoding and take the half-received frame, in the same tick as transferConnection()
  // stops the kernel reads: not one byte is decoded here after this point.
  const leftover = conn.detach();
  try {
    await upgrader.transferConnection(socket, { pending: leftover, lateWrites: true });
  } catch (err) {
    // Refused, or the successor died before acknowledging it: the connection is still ours, as it
    // was (the bytes the library read after detach() are back in the socket, behind `leftover`).
    if (!socket.destroyed) conn.attach(leftover);
    return err.code ?? 'error';
  }
  // The successor owns the connection. This socket object is now a forwarder: responses to the
  // calls still in flight here go through it to the successor, which writes them.
  conns.delete(conn);
  letGoWhenIdle(conn);
  return true;
}

/** letGoWhenIdle closes this process's forwarder once its last late response is on its way. */
function letGoWhenIdle(conn) {
  const { socket } = conn;
  const letGo = () => {
    if (conn.inFlight > 0 || socket.destroyed) return;
    conn.removeListener('idle', letGo);
    // destroy() is a plain close of this process's copy: nothing reaches the client. But it would
    // drop late writes still queued in the socket (waiting for the successor to take the previous
    // one); end() sends those first, then closes the forwarder the same way.
    if (socket.writableLength === 0) socket.destroy();
    else socket.end();
  };
  conn.on('idle', letGo);
  letGo();
}

upgrader.on('retiring', ({ successorPid }) => {
  const moving = [...conns];
  const calls = moving.reduce((sum, conn) => sum + conn.inFlight, 0);
  log(`retiring: moving ${moving.length} connections (${calls} calls in flight) to pid ${successorPid}`);
  void Promise.all(moving.map(moveConnection)).then((outcomes) => {
    const moved = outcomes.filter((outcome) => outcome === true).length;
    const kept = new Map();
    for (const outcome of outcomes) if (outcome !== true) kept.set(outcome, (kept.get(outcome) ?? 0) + 1);
    const why = [...kept].map(([code, n]) => `${n} ${code}`).join(', ');
    log(`moved ${moved} connections to pid ${successorPid}${moved < moving.length ? `; ${moving.length - moved} stay here (${why})` : ''}`);
  });
});

process.on('SIGHUP', () => {
  upgrader.upgrade().then(
    (pid) => log(`upgraded: pid ${pid} serves now`),
    (err) => log(`upgrade failed (${err.code}): ${err.message}; still serving`),
  );
});

process.on('SIGTERM', async () => {
  if (upgrader.state === 'retiring') return; // already on its way out
  log('SIGTERM: closing');
  upgrader.stop();
  server.close();
  // Bolt has no "goodbye" frame: stop decoding, answer the calls in flight, then close (FIN).
  for (const conn of conns) {
    conn.detach();
    const close = () => {
      if (conn.inFlight === 0) conn.socket.end(() => conn.socket.destroy());
    };
    conn.on('idle', close);
    close();
  }
  const report = await upgrader.waitConnectionsDone();
  log(`closed (${report.closed} connections finished, ${report.remaining} cut)`);
  process.exit(0);
});

upgrader.on('warning', (err) => log(`warning (${err.code}): ${err.message}`));
upgrader.on('upgradeFailed', (err) => log(`upgrade failed (${err.code}): ${err.message}`));
upgrader.on('rollback', ({ successorPid, reason }) => log(`successor ${successorPid} lost (${reason}); serving again`));
upgrader.on('predecessorRetired', ({ pid, clean }) => log(`predecessor ${pid} retired${clean ? '' : ' (went away)'}`));
upgrader.on('retired', (report) => {
  log(`retired: ${report.moved} connections moved, ${report.closed} closed, ${report.remaining} left`);
  process.exit(0);
});

// Ready last: whoever reads this line may signal at once, so every handler is in place.
await upgrader.ready();
console.log(`ready pid=${process.pid} port=${server.address().port}`);
