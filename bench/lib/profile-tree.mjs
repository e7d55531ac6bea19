#!/usr/bin/env node
// Prints the call tree under the frames whose name matches --root (inclusive ms, within an optional
// window of absolute µs), dist/ frames mapped to src/. For digging into a --keep-profiles profile.
//   node bench/lib/profile-tree.mjs FILE.cpuprofile --root adoptBatch [--from US --to US] [--depth 4] [--min 1]
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { location } from './profile.mjs';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { root: { type: 'string', default: '' }, from: { type: 'string' }, to: { type: 'string' }, depth: { type: 'string', default: '4' }, min: { type: 'string', default: '1' } },
});
const profile = JSON.parse(fs.readFileSync(positionals[0], 'utf8'));
const from = values.from ? Number(values.from) : -Infinity;
const to = values.to ? Number(values.to) : Infinity;
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const weight = new Map();
let t = profile.startTime;
for (let i = 0; i < profile.samples.length; i++) {
  t += profile.timeDeltas[i];
  if (t < from || t > to) continue;
  const id = profile.samples[i];
  weight.set(id, (weight.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
}
const total = new Map();
function inclusive(id) {
  if (total.has(id)) return total.get(id);
  const node = byId.get(id);
  let sum = weight.get(id) ?? 0;
  for (const child of node.children ?? []) sum += inclusive(child);
  total.set(id, sum);
  return sum;
}
const label = (node) => `${node.callFrame.functionName || '(anonymous)'} ${location(node.callFrame.url, node.callFrame.lineNumber, node.callFrame.columnNumber)}`;

// Merge every occurrence of the root frame (it may be reached through several paths).
const merged = new Map(); // path label -> { ms, children }
function add(tree, id, depth) {
  const node = byId.get(id);
  const key = label(node);
  const entry = tree.get(key) ?? { ms: 0, self: 0, children: new Map() };
  entry.ms += inclusive(id) / 1000;
  entry.self += (weight.get(id) ?? 0) / 1000;
  tree.set(key, entry);
  if (depth > 0) for (const child of node.children ?? []) add(entry.children, child, depth - 1);
}
const re = new RegExp(values.root);
function findRoots(id, inside) {
  const node = byId.get(id);
  const match = re.test(label(node));
  if (match && !inside) add(merged, id, Number(values.depth));
  for (const child of node.children ?? []) findRoots(child, inside || match);
}
findRoots(profile.nodes[0].id, false);
const min = Number(values.min);
function print(tree, indent) {
  for (const [key, entry] of [...tree.entries()].sort((a, b) => b[1].ms - a[1].ms)) {
    if (entry.ms < min) continue;
    console.log(`${entry.ms.toFixed(1).padStart(8)} ${entry.self.toFixed(1).padStart(7)}  ${indent}${key}`);
    print(entry.children, `${indent}  `);
  }
}
console.log('   incl.    self  (ms)');
print(merged, '');
