// The soak's load (bench/soak.mjs): wrk on HTTP keep-alive, sofa-rpc-node clients with slow calls.
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { sleep } from '../../test/helpers.mjs';
import { parseWrk } from '../../test/wrk.mjs';

const require = createRequire(import.meta.url);
const { RpcClient } = require('sofa-rpc-node').client;

const IFACE = 'com.example.Echo';

// ---- wrk ----------------------------------------------------------------------------------------

/** startWrk runs wrk until stop() (SIGINT: wrk then prints its report and exits 0). */
export function startWrk({ url, connections }) {
  // A generous timeout: a request slower than wrk's default 2 s on a loaded 2-core machine is
  // latency, not a failed request; a request that never gets its answer still counts.
  const child = spawn('wrk', ['-t1', `-c${connections}`, '-d86400s', '--timeout', '30s', url], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (chunk) => (out += chunk));
  child.stderr.on('data', (chunk) => (out += chunk));
  const result = new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (code !== 0) reject(new Error(`wrk exited with ${code ?? signal}:\n${out}`));
      else resolve(parseWrk(out));
    });
  });
  result.catch(() => undefined); // read by stop(); a wrk that dies early is reported there
  return {
    child,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
      return result;
    },
  };
}

// ---- sofa-rpc-node --------------------------------------------------------------------------------

export async function startClient(port, host) {
  const warnings = [];
  const keep = (...args) => warnings.push(args.map(String).join(' '));
  const client = new RpcClient({ logger: { info() {}, debug() {}, warn: keep, error: keep } });
  const consumer = client.createConsumer({
    interfaceName: IFACE,
    serverHost: `${host}:${port}`,
    responseTimeout: 10_000,
    retryFaultInterval: 200, // only shortens a sleep loop that would keep this process alive after close()
  });
  await consumer.ready();
  const connections = () => [...client.connectionManager.connections.values()];
  const [connection] = connections();
  const state = { client, consumer, warnings, connections, connection, localPort: connection._socket.localPort, socketClosed: false };
  connection._socket.once('close', () => (state.socketClosed = true));
  return state;
}

async function counted(stats, promise, expected) {
  stats.calls++;
  try {
    const value = await promise;
    if (value !== expected) throw new Error(`wrong answer ${JSON.stringify(value)}, expected ${JSON.stringify(expected)}`);
    stats.ok++;
  } catch (err) {
    stats.failed++;
    if (stats.errors.length < 20) stats.errors.push(`${err.name}: ${err.message}`);
    await sleep(20); // a refused call fails at once: do not spin
  }
}

/** startRpcLoad runs on every client one echo loop and two slow(slowMs) loops half a call apart. */
export function startRpcLoad(clients, slowMs) {
  const stats = { echo: { calls: 0, ok: 0, failed: 0, errors: [] }, slow: { calls: 0, ok: 0, failed: 0, errors: [] } };
  let running = true;
  const loops = [];
  clients.forEach((c, i) => {
    loops.push((async () => {
      for (let n = 0; running; n++) await counted(stats.echo, c.consumer.invoke('echo', [`c${i}-${n}`]), `c${i}-${n}`);
    })());
    for (let s = 0; s < 2; s++) {
      loops.push((async () => {
        if (s === 1) await sleep(slowMs / 2);
        while (running) await counted(stats.slow, c.consumer.invoke('slow', [slowMs]), slowMs);
      })());
    }
  });
  return {
    stats,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}
