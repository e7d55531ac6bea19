// A real browser through upgrades: headless Chromium (Debian's `chromium`, driven by playwright-core
// pointed at the system binary; nothing is downloaded) opens the page of examples/ws-server.mjs. Through
// 5 upgrades its WebSocket never closes, its tick counter has no gap, and it is served by each new
// pid in turn; a screenshot of the page at the end shows the pids it has seen.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { chromium } from 'playwright-core';
import { Sandbox, isAlive, root, waitUntil } from './helpers.mjs';

const HOST = '127.0.0.1';
const UPGRADES = 5;
/** The browser: CHROMIUM_PATH, or Debian's package (.ci/run installs it). */
const executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const sandbox = new Sandbox();
let browserServer;
let browser;
after(async () => {
  const pid = browserServer?.process().pid;
  await browser?.close().catch(() => undefined);
  await browserServer?.close().catch(() => undefined);
  if (pid !== undefined && isAlive(pid)) process.kill(pid, 'SIGKILL');
  await sandbox.cleanup();
});

test(`headless Chromium through ${UPGRADES} upgrades: its WebSocket never closes, ticks have no gap, every new pid serves it`, async (t) => {
  assert.ok(fs.existsSync(executablePath), `no browser at ${executablePath}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  const group = sandbox.group();
  const base = sandbox.dir('handover-ws-browser-');
  group.start([path.join(root, 'examples', 'ws-server.mjs'), '--port', '0', '--host', HOST, '--dir', path.join(base, 'ctl')]);
  const [, first, port] = await group.waitForLine(/^ready pid=(\d+) port=(\d+)/);
  // launchServer: the browser's process is ours to end, by pid.
  browserServer = await chromium.launchServer({ executablePath, headless: true });
  group.track(browserServer.process().pid);
  browser = await chromium.connect(browserServer.wsEndpoint());
  const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
  await page.goto(`http://${HOST}:${port}/`);
  const pageState = () => page.evaluate(() => ({ ...window.wsState, pids: [...window.wsState.pids] }));
  await waitUntil(async () => (await pageState()).lastTick >= 3, 10_000, 'the page to tick');
  const pids = [Number(first)];
  for (let i = 0; i < UPGRADES; i++) {
    const old = pids[pids.length - 1];
    const since = group.lines.length;
    process.kill(old, 'SIGHUP');
    const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since });
    pids.push(Number(next));
    await waitUntil(() => new RegExp(`\\[ws-server ${old}\\] retired: [1-9]\\d* connections moved, 0 closed, 0 left`).test(group.stderr.join('')), 15_000, `pid ${old} to retire having moved the page's WebSocket`);
    // The page asks `pid` every 200 ms: the new generation answers it on the same WebSocket.
    await waitUntil(async () => (await pageState()).pids.includes(Number(next)), 10_000, `the page to be served by pid ${next}`);
  }
  const before = (await pageState()).lastTick;
  await waitUntil(async () => (await pageState()).lastTick >= before + 3, 10_000, 'ticks after the last upgrade');
  const state = await pageState();
  assert.equal(state.closes, 0, 'the WebSocket closed');
  assert.equal(state.open, true);
  assert.equal(state.gaps, 0, 'the tick counter has a gap');
  assert.deepEqual(state.pids, pids);
  // What the screenshot shows: every pid, in order, on the page.
  const listed = await page.locator('#pids li').allTextContents();
  assert.deepEqual(listed.map((text) => Number(/pid (\d+)/.exec(text)[1])), pids);
  const screenshot = path.join(base, 'ws-page.png');
  await page.screenshot({ path: screenshot, fullPage: true });
  const png = fs.readFileSync(screenshot);
  assert.equal(png.subarray(1, 4).toString(), 'PNG');
  if (process.env.HANDOVER_SCREENSHOT_DIR) fs.copyFileSync(screenshot, path.join(process.env.HANDOVER_SCREENSHOT_DIR, 'ws-page.png'));
  t.diagnostic(`screenshot: ${screenshot} (${png.length} bytes; kept if HANDOVER_SCREENSHOT_DIR is set); pids ${pids.join(' -> ')}, ${state.lastTick} ticks`);
});
