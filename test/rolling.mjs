// Upgrading example servers one after another, as an operator (or `handover upgrade`) does: SIGHUP
// a generation, wait for its successor's ready line, and read the predecessor's retirement report.
import { waitUntil } from './helpers.mjs';

/**
 * upgrade sends SIGHUP to `pid` (one of the example servers started in `group`) and resolves with
 * its successor's pid once the successor printed its ready line. Only one upgrade may run at a
 * time in a group, so the next ready line is that successor's.
 */
export async function upgrade(group, pid, { timeout = 15_000 } = {}) {
  const since = group.lines.length;
  process.kill(pid, 'SIGHUP');
  const [, next] = await group.waitForLine(/^ready pid=(\d+)/, { since, timeout });
  return Number(next);
}

/** retirement resolves with `{ closed, moved, left }` once the example server `pid` reported its retirement. */
export async function retirement(group, pid, timeout = 35_000) {
  const pattern = new RegExp(`\\[[\\w-]+ ${pid}\\] retired: (\\d+) closed, (\\d+) moved, (\\d+) left`);
  let match;
  await waitUntil(() => (match = pattern.exec(group.stderr.join(''))), timeout, `pid ${pid} to retire`);
  const [closed, moved, left] = match.slice(1).map(Number);
  return { closed, moved, left };
}
