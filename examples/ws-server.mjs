#!/usr/bin/env node
// A node:http server with a `ws` WebSocketServer whose WebSockets survive upgrades: they move to the
// new process between two frames and their clients notice nothing (no close, no reconnect).
//   node examples/ws-server.mjs --port P [--host H] --dir D
// Prints `ready pid=<pid> port=<P>` when it serves; SIGHUP upgrades; SIGTERM retires gracefully.
//   GET /         a page whose script connects to /ws and shows ticks and the pids that served it
//   /ws           every text message is answered `echo:<pid>:<message>`; `pid` is answered `pid:<pid>`;
//                 every 100 ms each connection gets `tick:<n>`, n counting from 1 per connection
//                 with no gap and no repeat across upgrades (the counter is state that moves);
//                 `broadcast:<text>` sends `broadcast:<text>` to every connection, exactly once each,
//                 even while connections are moving (see `broadcast` below).
import * as fs from 'node:fs';
import http from 'node:http';
import { WebSocketServer } from 'ws';
import { createUpgrader } from 'handover';
import { webSocketAdapter } from 'handover/ws';
import { example, movedFirst, serve } from './lib/example.mjs';

const { args, log, cannotListen } = example('ws-server');
const page = fs.readFileSync(new URL('./ws-page.html', import.meta.url));

const upgrader = createUpgrader({ dir: args.dir });

const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/broadcast') return relayed(req, res);
  if (req.url !== '/') {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'x-pid': String(process.pid) });
  res.end(page);
});

// Compression, if you turn it on, must be without context takeover on both sides for a WebSocket
// to move: { perMessageDeflate: { serverNoContextTakeover: true, clientNoContextTakeover: true } }.
// A connection that negotiated context takeover is closed with 1012 (Service Restart) instead.
const wss = new WebSocketServer({ server, path: '/ws' });

// How its WebSockets move (the library asks it at retirement; the successor adopts with it).
const protocol = webSocketAdapter(wss, {
  // Predecessor: this WebSocket moves now. Stop what sends on it by itself; its state travels.
  onMove(ws) {
    clearInterval(ws.ticker);
    return { tick: ws.tick, id: ws.id };
  },
  // The move failed (the successor died): it is ours again.
  onStay(ws) {
    startTicking(ws);
  },
});

let nextId = 0;
function startTicking(ws) {
  clearInterval(ws.ticker);
  ws.ticker = setInterval(() => ws.send(`tick:${++ws.tick}`), 100);
}

// `state` is what the predecessor's onMove returned (undefined for a brand-new connection).
wss.on('connection', (ws, req, state) => {
  ws.tick = state?.tick ?? 0;
  ws.id = state?.id ?? `${process.pid}-${++nextId}`;
  startTicking(ws);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (text === 'pid') ws.send(`pid:${process.pid}`);
    else if (text.startsWith('broadcast:')) broadcast(text);
    else ws.send(`echo:${process.pid}:${text}`);
  });
  ws.on('close', () => clearInterval(ws.ticker));
});

// ---- Broadcasts across the move window ----
// A generation reaches only the WebSockets it holds (wss.clients): while connections move, some are
// here and some already in the successor. Kept exact in two steps:
//   - a retiring process sends to what it still holds, then relays the broadcast to its successor
//     (POST /broadcast on its own port now reaches the successor), naming those it served;
//   - a process whose predecessor still retires holds broadcasts back until that one is gone, then
//     sends them to every connection it holds, except those the predecessor already served.
// Every connection is held by exactly one process at a time, so each gets each broadcast once.
const heldBack = [];
function broadcast(text, except = new Set()) {
  if (upgrader.hasPredecessor) {
    heldBack.push({ text, except });
    return;
  }
  const served = [];
  for (const ws of wss.clients) {
    if (except.has(ws.id)) continue;
    ws.send(text);
    served.push(ws.id);
  }
  if (upgrader.state === 'retiring') relay(text, [...except, ...served]);
}
function relay(text, except) {
  const body = JSON.stringify({ text, except });
  const req = http.request({ host: args.host ?? '127.0.0.1', port: server.address().port, method: 'POST', path: '/broadcast', headers: { 'content-type': 'application/json' } });
  req.on('error', (err) => log(`broadcast relay failed: ${err.message}`));
  req.end(body);
}
function relayed(req, res) {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => (body += chunk));
  req.on('end', () => {
    const { text, except } = JSON.parse(body);
    broadcast(text, new Set(except));
    res.writeHead(204).end();
  });
}
upgrader.on('predecessorRetired', () => {
  for (const { text, except } of heldBack.splice(0)) broadcast(text, except);
});

// WebSockets move with `protocol` (rebuilt in the successor and emitted as 'connection' with their
// state); the server's plain HTTP connections move as they would without it.
await upgrader.listen(server, { port: args.port, host: args.host }, { protocol }).catch(cannotListen);

upgrader.on('retiring', ({ successorPid }) => log(`retiring: moving ${protocol.open.size} WebSockets to pid ${successorPid}`));

await serve(upgrader, {
  log,
  server,
  close: () => {
    server.close();
    for (const ws of wss.clients) ws.close(1001, 'going away');
  },
  retiredLine: movedFirst,
});
