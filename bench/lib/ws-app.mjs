#!/usr/bin/env node
// The WebSocket app of examples/ws-server.mjs without the library, for bench/ws-alternatives.mjs:
// a node:http server with a `ws` WebSocketServer on /ws; every text message is answered
// `echo:<pid>:<message>`, `pid` is answered `pid:<pid>`, and every 100 ms each connection gets
// `tick:<n>` (n counting from 1 per connection).
//   --mode plain  SIGTERM kills it (Node's default); a plain restart starts a new one afterwards
//   --mode pm2    under PM2's cluster mode; on SIGINT (PM2's stop signal) it stops accepting, closes
//                 every WebSocket with 1001 (Going Away, the close a careful app sends), and exits
//                 once they are closed (2 s at most)
//   node bench/lib/ws-app.mjs --mode M --port P
// Prints `ready pid=<pid> port=<P>` when it serves.
import http from 'node:http';
import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const { values } = parseArgs({ options: { mode: { type: 'string' }, port: { type: 'string' } } });
const port = Number(values.port);
const server = http.createServer((req, res) => res.writeHead(404).end());
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => {
  ws.tick = 0;
  ws.ticker = setInterval(() => ws.send(`tick:${++ws.tick}`), 100);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    if (text === 'pid') ws.send(`pid:${process.pid}`);
    else ws.send(`echo:${process.pid}:${text}`);
  });
  ws.on('close', () => clearInterval(ws.ticker));
});
server.listen(port, '127.0.0.1', () => console.log(`ready pid=${process.pid} port=${port}`));

if (values.mode === 'pm2') {
  process.on('SIGINT', () => {
    server.close();
    for (const ws of wss.clients) {
      clearInterval(ws.ticker);
      ws.close(1001, 'going away');
    }
    const deadline = Date.now() + 2000;
    const exitWhenDone = () => {
      if (wss.clients.size === 0 || Date.now() > deadline) process.exit(0);
      setTimeout(exitWhenDone, 10);
    };
    exitWhenDone();
  });
}
