#!/usr/bin/env node
// The MOSN way of moving connections, for comparison with handover's batched CONN frames: one unix
// stream connection per moved connection, as MOSN's transferRead (pkg/network/transfer.go) does:
// connect to the successor's unix socket, send one byte with the connection's fd (SCM_RIGHTS), an
// 8-byte header (data length, id 0) and the bytes read but not processed, then wait for the
// successor's 4-byte connection id (sent once the successor made its connection object) and close.
// The successor wraps the fd (new net.Socket), injects it into its HTTP server and answers.
// Syscalls through handover's addon (sendmsg/recvmsg/accept/poll), the same Node objects on both
// sides as in bench/move-connections.mjs; only the transport of the move differs.
//   node bench/move-mosn.mjs --n 10000 [--runs R] [--concurrency C] [--json FILE]
// Roles (started by the orchestrator, each its own process):
//   --role predecessor --port P --sock S   an http server; on stdin `move`, moves every connection
//   --role successor --port P --sock S     listens on S (unix stream) and adopts what arrives
// Prints, per run: transfer start -> last id received (ms), connections/s, CPU of both sides.
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
// Not strict: bench/move-connections.mjs imports runMosnOnce from here with its own arguments.
const { values } = parseArgs({
  strict: false,
  options: {
    role: { type: 'string' },
    port: { type: 'string' },
    sock: { type: 'string' },
    n: { type: 'string', default: '10000' },
    runs: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '64' },
    json: { type: 'string' },
    'fd-limit': { type: 'string' },
  },
});
const now = () => process.hrtime.bigint();
const cpu = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};
const say = (line) => process.stdout.write(`${line}\n`);

function makeServer() {
  const body = Buffer.from(`${process.pid}\n`);
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length, 'x-pid': String(process.pid) });
    res.end(body);
  });
  server.keepAliveTimeout = 600_000;
  server.headersTimeout = 610_000;
  server.requestTimeout = 0;
  return server;
}

// ---------- predecessor: one unix connection per moved connection ----------
async function predecessor() {
  const native = require('../dist/native.js').binding();
  const server = makeServer();
  const sockets = new Set();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise((resolve) => server.listen(Number(values.port), '127.0.0.1', resolve));
  say(`ready pid=${process.pid}`);
  const concurrency = Number(values.concurrency);

  async function move() {
    const t0 = now();
    const cpu0 = cpu();
    const queue = [...sockets];
    let moved = 0;
    let failed = 0;
    let active = 0;
    await new Promise((resolve) => {
      const next = () => {
        while (active < concurrency && queue.length > 0) {
          active++;
          transferOne(queue.shift()).then(
            () => moved++,
            () => failed++,
          ).finally(() => {
            active--;
            if (queue.length === 0 && active === 0) resolve();
            else next();
          });
        }
      };
      if (queue.length === 0) resolve();
      next();
    });
    const t1 = now();
    say(`moved pid=${process.pid} moved=${moved} failed=${failed} t0=${t0} t1=${t1} cpu=${cpu() - cpu0}`);
  }

  function transferOne(socket) {
    return new Promise((resolve, reject) => {
      // MOSN stops its read loop first; here: no more reads from the kernel.
      const handle = socket._handle;
      handle.readStop();
      handle.reading = false;
      let fd;
      const connect = () => {
        try {
          fd = native.unixStreamConnect(values.sock);
        } catch (err) {
          if (err.code === 'EAGAIN') return setTimeout(connect, 1); // the listener's backlog is full
          return reject(err);
        }
        try {
          // type byte 0 with the fd, then header (length 0, id 0): no bytes were read but not processed.
          native.sendmsg(fd, Buffer.from([0]), [handle.fd]);
          native.sendmsg(fd, Buffer.alloc(8), []);
        } catch (err) {
          native.close(fd);
          return reject(err);
        }
        const buffer = Buffer.alloc(8);
        let got = 0;
        const poller = native.createPoller(fd, () => {
          let message;
          try {
            message = native.recvmsg(fd, buffer.subarray(got), 0);
          } catch (err) {
            poller.close();
            native.close(fd);
            return reject(err);
          }
          if (message === null) return;
          got += message.bytes;
          if (message.bytes === 0 || got >= 4) {
            poller.close();
            native.close(fd);
            if (got < 4) return reject(new Error('successor closed without an id'));
            socket.destroy(); // our copy: a plain close
            resolve();
          }
        });
        poller.start(true, false);
      };
      connect();
    });
  }

  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'move') void move();
    if (line.trim() === 'quit') process.exit(0);
  });
}

// ---------- successor: accept, receive the fd and header, adopt, answer the id ----------
async function successor() {
  const native = require('../dist/native.js').binding();
  const server = makeServer();
  let adopted = 0;
  let lastLive = 0n;
  let cpuAtLast = 0;
  const listener = native.unixStreamListen(values.sock, 4096);
  let nextId = 1;
  const accept = native.createPoller(listener, () => {
    for (;;) {
      let fd;
      try {
        fd = native.accept(listener);
      } catch {
        return;
      }
      if (fd < 0) return;
      serve(fd);
    }
  });
  accept.start(true, false);

  function serve(fd) {
    const buffer = Buffer.alloc(64 * 1024);
    let bytes = 0;
    const fds = [];
    const poller = native.createPoller(fd, () => {
      let message;
      try {
        message = native.recvmsg(fd, buffer.subarray(bytes), 1);
      } catch {
        poller.close();
        native.close(fd);
        return;
      }
      if (message === null) return;
      if (message.bytes === 0 && message.fds.length === 0) {
        poller.close();
        native.close(fd);
        for (const f of fds) native.close(f);
        return;
      }
      bytes += message.bytes;
      fds.push(...message.fds);
      // type (1) + header (8) + data (length from the header)
      if (bytes < 9 || fds.length === 0) return;
      const length = buffer.readUInt32BE(1);
      if (bytes < 9 + length) return;
      poller.close();
      const socket = new net.Socket({ fd: fds[0], readable: true, writable: true, manualStart: true });
      if (length > 0) socket.unshift(Buffer.from(buffer.subarray(9, 9 + length)));
      server.emit('connection', socket);
      socket.resume();
      const id = Buffer.alloc(4);
      id.writeUInt32BE(nextId++);
      try {
        native.sendmsg(fd, id, []);
      } catch {
        // the predecessor went away
      }
      native.close(fd);
      adopted++;
      lastLive = now();
      cpuAtLast = cpu();
    });
    poller.start(true, false);
  }
  const cpuStart = cpu();
  say(`ready pid=${process.pid}`);
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    if (line.trim() === 'report') say(`adopted pid=${process.pid} n=${adopted} last=${lastLive} cpu=${cpuAtLast - cpuStart}`);
    if (line.trim() === 'quit') process.exit(0);
  });
}

// ---------- orchestrator ----------
const hardLimit = Number(execFileSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim()) || 1024;
const fdLimit = Math.min(hardLimit, Number(values['fd-limit'] ?? 65536));
const started = new Set();
function killAll() {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}

class Proc {
  constructor(name, args) {
    this.name = name;
    this.lines = [];
    this.waiters = [];
    this.child = spawn('bash', ['-c', `ulimit -n ${fdLimit} && exec "$0" "$@"`, process.execPath, ...args], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] });
    this.pid = this.child.pid;
    started.add(this.pid);
    this.stderr = '';
    this.child.stderr.on('data', (chunk) => (this.stderr += chunk));
    this.child.stdin.on('error', () => undefined);
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      this.lines.push(line);
      for (const w of [...this.waiters]) {
        const m = w.regex.exec(line);
        if (m) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          clearTimeout(w.timer);
          w.resolve(m);
        }
      }
    });
  }
  waitFor(regex, ms) {
    for (const line of this.lines) {
      const m = regex.exec(line);
      if (m) return Promise.resolve(m);
    }
    return new Promise((resolve, reject) => {
      const w = { regex, resolve };
      w.timer = setTimeout(() => reject(new Error(`${this.name}: timed out waiting for ${regex}\n${this.stderr.slice(-2000)}`)), ms);
      this.waiters.push(w);
    });
  }
  send(line) {
    this.child.stdin.write(`${line}\n`);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** runMosnOnce moves n idle keep-alive connections the MOSN way; returns its figures. */
export async function runMosnOnce(n, { concurrency = 64, foreignCpu, track } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'handover-mosn-'));
  const sock = path.join(dir, 'transfer.sock');
  const port = await freePort();
  const self = fileURLToPath(import.meta.url);
  const procs = [];
  try {
    const pred = new Proc('predecessor', [self, '--role', 'predecessor', '--port', String(port), '--sock', sock, '--concurrency', String(concurrency)]);
    procs.push(pred);
    track?.(pred.pid);
    const oldPid = Number((await pred.waitFor(/^ready pid=(\d+)/, 15_000))[1]);
    const succ = new Proc('successor', [self, '--role', 'successor', '--port', String(port), '--sock', sock]);
    procs.push(succ);
    track?.(succ.pid);
    const newPid = Number((await succ.waitFor(/^ready pid=(\d+)/, 15_000))[1]);
    const hold = new Proc('hold', [path.join(root, 'bench/lib/hold-client.mjs'), '--port', String(port), '--n', String(n)]);
    procs.push(hold);
    track?.(hold.pid);
    const held = await hold.waitFor(/^held n=(\d+) failed=(\d+)/, 120_000);
    if (Number(held[1]) !== n) throw new Error(`held ${held[1]} of ${n}`);
    await new Promise((r) => setTimeout(r, 500));
    const before = foreignCpu?.start();
    pred.send('move');
    const moved = await pred.waitFor(/^moved pid=\d+ moved=(\d+) failed=(\d+) t0=(\d+) t1=(\d+) cpu=(\d+)/, 300_000);
    await new Promise((r) => setTimeout(r, 300));
    succ.send('report');
    const report = await succ.waitFor(/^adopted pid=\d+ n=(\d+) last=(\d+) cpu=(\d+)/, 10_000);
    const noise = foreignCpu?.stop(before);
    hold.send('check');
    const checked = JSON.parse((await hold.waitFor(/^checked (.*)$/, 120_000))[1]);
    const ms = Number(BigInt(moved[4]) - BigInt(moved[3])) / 1e6;
    const result = {
      n,
      concurrency,
      moved: Number(moved[1]),
      failed: Number(moved[2]),
      startToLastIdMs: ms,
      startToLastLiveMs: Number(BigInt(report[2]) - BigInt(moved[3])) / 1e6,
      connectionsPerSecond: (Number(moved[1]) / ms) * 1000,
      predecessorCpuMs: Number(moved[5]) / 1000,
      successorCpuMs: Number(report[3]) / 1000,
      answeredByNewPid: checked.pids[newPid] ?? 0,
      oldPid,
      newPid,
      foreignCpu: noise,
    };
    result.ok = result.moved === n && result.failed === 0 && result.answeredByNewPid === n;
    return result;
  } finally {
    for (const p of procs) {
      try {
        p.send('quit');
      } catch {
        // gone
      }
    }
    await new Promise((r) => setTimeout(r, 200));
    for (const p of procs) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone
      }
      started.delete(p.pid);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (values.role === 'predecessor') await predecessor();
else if (values.role === 'successor') await successor();
else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.on('exit', killAll);
  const results = [];
  for (let i = 0; i < Number(values.runs); i++) {
    const r = await runMosnOnce(Number(values.n), { concurrency: Number(values.concurrency) });
    results.push(r);
    console.log(`MOSN way, N=${r.n}, ${r.concurrency} unix connections at a time: start -> last id ${r.startToLastIdMs.toFixed(1)} ms (${Math.round(r.connectionsPerSecond)} conn/s), last live ${r.startToLastLiveMs.toFixed(1)} ms; CPU predecessor ${r.predecessorCpuMs.toFixed(1)} ms, successor ${r.successorCpuMs.toFixed(1)} ms; ${r.answeredByNewPid}/${r.n} answered by the new pid; ${r.ok ? 'ok' : 'FAILED'}`);
  }
  if (values.json) fs.writeFileSync(values.json, JSON.stringify(results, null, 2));
  process.exit(results.every((r) => r.ok) ? 0 : 1);
}
