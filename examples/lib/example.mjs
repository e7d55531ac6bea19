// What every example server shares, so that each example shows only its own server and listen call:
// the command line `--port P [--host H] --dir D`, the log on stderr, and the upgrade lifecycle
// (SIGHUP upgrades, SIGTERM retires gracefully, the upgrader's events logged, `ready pid=<pid> port=<P>`).
import { parseArgs } from 'node:util';

/**
 * example parses `--port P [--host H] --dir D` plus the example's own `options` (node:util parseArgs
 * options; `usage` describes them) and exits 2 with a usage line without --port or --dir. It returns
 * the arguments (`port` a number), `log` (a line on stderr, `[name pid] ...`) and `cannotListen`, the
 * handler for a listen() that fails: the reason, then exit 1.
 */
export function example(name, { options = {}, usage = '' } = {}) {
  const { values } = parseArgs({
    options: { port: { type: 'string' }, host: { type: 'string' }, dir: { type: 'string' }, ...options },
  });
  if (values.port === undefined || values.dir === undefined) {
    console.error(`usage: node examples/${name}.mjs --port P [--host H] --dir D${usage ? ` ${usage}` : ''}`);
    process.exit(2);
  }
  const log = (line) => console.error(`[${name} ${process.pid}] ${line}`);
  const cannotListen = (err) => {
    log(`cannot listen (${err.code}): ${err.message}`);
    process.exit(1);
  };
  return { args: { ...values, port: Number(values.port) }, log, cannotListen };
}

/**
 * serve runs the lifecycle of `server` (what the example gave to upgrader.listen()) and prints the
 * ready line last: whoever reads it may signal at once, so every handler is in place by then.
 *   SIGHUP: upgrade; this process retires once its successor serves, then exits 0 ('retired').
 *   SIGTERM: stop the upgrader, `close()` (by default server.close(): no new connections; it may
 *            return a promise to wait for), wait for the connections to finish, exit 0.
 * `retiredLine(report)` words the retirement's report; `beforeExit()` runs after it (it may return
 * a promise).
 */
export async function serve(upgrader, { log, server, close = () => server.close(), retiredLine = closedFirst, beforeExit = () => {} }) {
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
    await close();
    const report = await upgrader.waitConnectionsDone();
    log(`closed (${report.closed} connections finished, ${report.remaining} cut)`);
    process.exit(0);
  });

  upgrader.on('warning', (err) => log(`warning (${err.code}): ${err.message}`));
  upgrader.on('upgradeFailed', (err) => log(`upgrade failed (${err.code}): ${err.message}`));
  upgrader.on('rollback', ({ successorPid, reason }) => log(`successor ${successorPid} lost (${reason}); serving again`));
  upgrader.on('predecessorRetired', ({ pid, clean }) => log(`predecessor ${pid} retired${clean ? '' : ' (went away)'}`));
  upgrader.on('retired', async (report) => {
    log(retiredLine(report));
    await beforeExit();
    process.exit(0);
  });

  await upgrader.ready();
  console.log(`ready pid=${process.pid} port=${server.address().port}`);
}

/** The retirement's report, closed connections first (HTTP examples; tests read this wording). */
const closedFirst = (report) => `retired: ${report.closed} closed, ${report.moved} moved, ${report.remaining} left`;

/** The retirement's report, moved connections first (the examples whose point is moving them). */
export const movedFirst = (report) => `retired: ${report.moved} connections moved, ${report.closed} closed, ${report.remaining} left`;
