// Reads a V8 .cpuprofile (node --cpu-prof) and summarises the samples that fall inside a time
// window: top self time, top inclusive time, hot lines; dist/*.js frames are mapped back to src/
// through their source maps. Sample times are V8 TimeTicks in µs: CLOCK_MONOTONIC on Linux, the
// clock of process.hrtime, so the window can come from another process's hrtime stamps.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SourceMap } from 'node:module';
import { fileURLToPath } from 'node:url';

const maps = new Map();
function sourceMapFor(file) {
  if (!maps.has(file)) {
    let map;
    try {
      map = new SourceMap(JSON.parse(fs.readFileSync(`${file}.map`, 'utf8')));
    } catch {
      map = undefined;
    }
    maps.set(file, map);
  }
  return maps.get(file);
}

/** location turns a frame (0-based line/column of a script url) into `src/x.ts:LINE` or `node:net:LINE`. */
export function location(url, line, column = 0, root = process.cwd()) {
  if (!url) return '';
  if (url.startsWith('file://')) {
    const file = fileURLToPath(url);
    const map = file.endsWith('.js') ? sourceMapFor(file) : undefined;
    if (map) {
      const entry = map.findEntry(line, column);
      if (entry && entry.originalSource) {
        const source = entry.originalSource.startsWith('file://') ? fileURLToPath(entry.originalSource) : path.resolve(path.dirname(file), entry.originalSource);
        return `${path.relative(root, source)}:${entry.originalLine + 1}`;
      }
    }
    return `${path.relative(root, file)}:${line + 1}`;
  }
  return `${url}:${line + 1}`;
}

/**
 * summarise returns { windowMs, sampledMs, busyMs, self: [...], inclusive: [...], lines: [...] }
 * for samples in [fromUs, toUs] (absolute, µs). Entries are { name, where, ms }.
 */
export function summarise(file, fromUs, toUs, { root = process.cwd(), top = 15 } = {}) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const keyOf = new Map();
  const describe = new Map();
  for (const node of profile.nodes) {
    const { functionName, url, lineNumber, columnNumber } = node.callFrame;
    const where = location(url, lineNumber, columnNumber, root);
    const name = functionName || '(anonymous)';
    const key = `${name} ${where}`;
    keyOf.set(node.id, key);
    describe.set(key, { name, where });
  }
  const self = new Map();
  const inclusive = new Map();
  const lines = new Map();
  let t = profile.startTime;
  let sampledUs = 0;
  let idleUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i];
    if (t < fromUs || t > toUs) continue;
    // A sample's weight: the time until the next sample (the profiler's own convention).
    const weight = profile.timeDeltas[i + 1] ?? 0;
    const id = profile.samples[i];
    const key = keyOf.get(id);
    sampledUs += weight;
    if (key.startsWith('(idle)')) idleUs += weight;
    self.set(key, (self.get(key) ?? 0) + weight);
    const seen = new Set();
    for (let node = id; node !== undefined; node = parent.get(node)) {
      const k = keyOf.get(node);
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + weight);
    }
  }
  // Hot lines: positionTicks are per node over the whole profile (not windowed); used only to point at lines.
  for (const node of profile.nodes) {
    for (const tick of node.positionTicks ?? []) {
      const { url, functionName } = node.callFrame;
      const where = location(url, tick.line - 1, 0, root);
      const key = `${functionName || '(anonymous)'} ${where}`;
      lines.set(key, (lines.get(key) ?? 0) + tick.ticks);
    }
  }
  const sorted = (map, scale) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([key, value]) => ({ ...(describe.get(key) ?? { name: key.split(' ')[0], where: key.split(' ').slice(1).join(' ') }), ms: value / scale }));
  return {
    windowMs: (toUs - fromUs) / 1000,
    sampledMs: sampledUs / 1000,
    busyMs: (sampledUs - idleUs) / 1000,
    self: sorted(self, 1000),
    inclusive: sorted(inclusive, 1000).filter((e) => !['(root)'].includes(e.name)),
    inclusiveAll: inclusive,
    describe,
    lines: sorted(lines, 1),
  };
}

/** inclusiveOf sums the inclusive time (ms) of frames whose "name where" matches `test`. Overlaps count once per frame. */
export function inclusiveOf(summary, test) {
  let best = 0;
  for (const [key, us] of summary.inclusiveAll) if (test(key)) best = Math.max(best, us / 1000);
  return best;
}
