// WebSocket clients for examples/ws-server.mjs, written as users write them (the npm `ws` client),
// each checking what it receives: its echoes exactly once and in order, its ticks consecutive, no
// close, and which pid answers `pid`.
import WebSocket from 'ws';

/** One client: sends `m<seq>` every `everyMs` (while sending), and checks every message it gets. */
export class WsClient {
  constructor(url, { everyMs = 50, perMessageDeflate = false, protocols = [], headers = {}, rejectUnauthorized } = {}) {
    this.everyMs = everyMs;
    this.ws = new WebSocket(url, protocols, { perMessageDeflate, headers, ...(rejectUnauthorized === undefined ? {} : { rejectUnauthorized }) });
    this.sent = 0;
    this.echoed = 0;
    this.lastTick = 0;
    this.ticks = 0;
    this.problems = [];
    this.closes = [];
    this.pidWaiters = [];
    /** How many times each broadcast arrived (exactly once each, expected). */
    this.broadcasts = new Map();
    this.localPort = undefined;
    this.ws.on('message', (data) => this.onMessage(data.toString()));
    this.ws.on('close', (code) => this.onClose(code));
    this.ws.on('error', (err) => this.onError(err));
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => {
        this.localPort = this.ws._socket.localPort;
        resolve();
      });
      this.ws.once('error', reject);
    });
  }

  onClose(code) {
    this.closes.push(code);
  }

  onError(err) {
    this.problem(`error: ${err.message}`);
  }

  problem(text) {
    if (this.problems.length < 10) this.problems.push(text);
  }

  onMessage(text) {
    const colon = text.indexOf(':');
    const kind = text.slice(0, colon);
    if (kind === 'tick') {
      const n = Number(text.slice(colon + 1));
      if (n !== this.lastTick + 1) this.problem(`tick ${n} after ${this.lastTick}`);
      this.lastTick = n;
      this.ticks++;
    } else if (kind === 'echo') {
      // echo:<pid>:m<seq> (an echo of anything else is a test's own message)
      const numbered = /:m(\d+)$/.exec(text);
      if (!numbered) return;
      const seq = Number(numbered[1]);
      if (seq !== this.echoed + 1) this.problem(`echo m${seq} after m${this.echoed}`);
      else this.echoed = seq;
    } else if (kind === 'pid') {
      const pid = Number(text.slice(colon + 1));
      for (const waiter of this.pidWaiters.splice(0)) waiter(pid);
    } else if (kind === 'broadcast') {
      const id = text.slice(colon + 1);
      this.broadcasts.set(id, (this.broadcasts.get(id) ?? 0) + 1);
      if (this.broadcasts.get(id) > 1) this.problem(`broadcast ${id} received twice`);
    } else if (!['protocol', 'request', 'binaryType'].includes(kind)) {
      this.problem(`unexpected message ${text.slice(0, 60)}`);
    }
  }

  start() {
    this.timer = setInterval(() => this.send(), this.everyMs);
  }

  send() {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(`m${++this.sent}`);
  }

  stop() {
    clearInterval(this.timer);
  }

  /** askPid resolves with the pid that answers `pid` now. */
  askPid(timeout = 10_000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no answer to pid')), timeout);
      this.pidWaiters.push((pid) => {
        clearTimeout(timer);
        resolve(pid);
      });
      this.ws.send('pid');
    });
  }

  get allEchoed() {
    return this.echoed === this.sent;
  }

  close() {
    this.stop();
    this.ws.terminate();
  }
}

/**
 * ReconnectingWsClient: what users' clients do when the server goes away (a plain restart, a PM2
 * reload): it counts the close and reconnects after `reconnectMs` (and again every `reconnectMs`
 * while the port refuses), rather than failing. It numbers its messages across connections: a
 * message sent on a connection that closed before its echo came back is *lost*; one the app could
 * not send because no connection was open is *unsent*. Ticks count from 1 again on a new connection.
 */
export class ReconnectingWsClient extends WsClient {
  constructor(url, options = {}) {
    super(url, options);
    this.url = url;
    this.options = options;
    this.reconnectMs = options.reconnectMs ?? 100;
    this.reconnects = 0;
    this.failedConnects = 0;
    this.errors = {};
    this.inFlight = new Set();
    this.lost = 0;
    this.unsent = 0;
    this.offlineMs = 0;
    this.isOpen = false;
    this.stopped = false;
    this.ws.once('open', () => (this.isOpen = true));
  }

  onError(err) {
    const kind = err.code ?? err.message.slice(0, 40);
    this.errors[kind] = (this.errors[kind] ?? 0) + 1;
  }

  onClose(code) {
    if (this.isOpen) {
      this.closes.push(code);
      this.lost += this.inFlight.size;
      this.inFlight.clear();
      this.isOpen = false;
      this.offlineSince = Date.now();
    } else {
      this.failedConnects++;
    }
    if (!this.stopped) setTimeout(() => this.reconnect(), this.reconnectMs);
  }

  reconnect() {
    if (this.stopped) return;
    const { perMessageDeflate = false, protocols = [], headers = {} } = this.options;
    this.ws = new WebSocket(this.url, protocols, { perMessageDeflate, headers });
    this.ws.on('message', (data) => this.onMessage(data.toString()));
    this.ws.on('close', (code) => this.onClose(code));
    this.ws.on('error', (err) => this.onError(err));
    this.ws.once('open', () => {
      this.isOpen = true;
      this.reconnects++;
      this.offlineMs += Date.now() - this.offlineSince;
      this.lastTick = 0;
    });
  }

  onMessage(text) {
    if (!text.startsWith('echo:')) return super.onMessage(text);
    const numbered = /:m(\d+)$/.exec(text);
    if (!numbered) return;
    const seq = Number(numbered[1]);
    if (this.inFlight.delete(seq)) this.echoed++;
    else this.problem(`echo m${seq} not awaited`);
  }

  send() {
    if (this.stopped) return;
    if (this.ws.readyState !== WebSocket.OPEN) {
      this.unsent++;
      return;
    }
    const seq = ++this.sent;
    this.inFlight.add(seq);
    this.ws.send(`m${seq}`);
  }

  get allEchoed() {
    return this.inFlight.size === 0;
  }

  close() {
    this.stopped = true;
    super.close();
  }
}

/** openClients opens `count` clients, `batch` at a time (a burst of 500 handshakes would only measure the accept queue). */
export async function openClients(url, count, options = {}, batch = 50, Client = WsClient) {
  const clients = [];
  for (let i = 0; i < count; i += batch) {
    const some = Array.from({ length: Math.min(batch, count - i) }, () => new Client(url, options));
    await Promise.all(some.map((c) => c.opened));
    clients.push(...some);
  }
  return clients;
}

/** summary: the invariants over every client (empty `problems` when all hold); `broadcasts`: the ids every client must have received once. */
export function summary(clients, startPorts, broadcasts = []) {
  const problems = [];
  let closes = 0;
  let sent = 0;
  let echoed = 0;
  let ticks = 0;
  let portChanged = 0;
  clients.forEach((c, i) => {
    closes += c.closes.length;
    sent += c.sent;
    echoed += c.echoed;
    ticks += c.ticks;
    if (c.ws._socket?.localPort !== startPorts[i] && c.closes.length === 0) portChanged++;
    for (const p of c.problems) if (problems.length < 20) problems.push(`client ${i}: ${p}`);
    if (c.closes.length > 0 && problems.length < 20) problems.push(`client ${i}: closed ${c.closes.join(',')}`);
    if (!c.allEchoed && problems.length < 20) problems.push(`client ${i}: ${c.sent} sent, ${c.echoed} echoed`);
    const missed = broadcasts.filter((id) => c.broadcasts.get(id) !== 1);
    if (missed.length > 0 && problems.length < 20) problems.push(`client ${i}: broadcasts not received exactly once: ${missed.slice(0, 5).join(', ')}`);
  });
  if (portChanged > 0) problems.push(`${portChanged} clients on another TCP connection`);
  return { clients: clients.length, closes, sent, echoed, ticks, problems };
}
