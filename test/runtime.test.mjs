// The start-up self-test of the Node internals the moves read (src/runtime.ts): it passes on this
// runtime, names exactly what changed on a runtime that lacks one, and leaks nothing.
import { test, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import * as net from 'node:net';
import * as path from 'node:path';
import { createRequire } from 'node:module';
import { fdCount, root } from './helpers.mjs';

const require = createRequire(import.meta.url);
const runtime = require(path.join(root, 'dist/runtime.js'));
const { checkInternals } = require(path.join(root, 'dist/connections/index.js'));

afterEach(() => runtime.resetRuntimeCapabilities());

test('on this Node.js every internal the moves read is there', () => {
  const capabilities = runtime.runtimeCapabilities();
  assert.deepEqual(capabilities, { moveConnections: true, httpIdleTracking: true, problems: [], conclusive: true });
  assert.equal(checkInternals(), null);
});

test('the self-test runs once, on real sockets, and leaks no fd', async () => {
  const before = fdCount();
  for (let i = 0; i < 20; i++) {
    runtime.resetRuntimeCapabilities();
    runtime.runtimeCapabilities();
  }
  // Handle closes complete on the next turn of the loop.
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(fdCount(), before);
  assert.equal(runtime.runtimeCapabilities(), runtime.runtimeCapabilities(), 'cached');
});

test('a runtime without an internal is named, and moves are refused with ERR_HANDOVER_UNSUPPORTED_RUNTIME', () => {
  const proto = net.Socket.prototype;
  const original = Object.getOwnPropertyDescriptor(proto, '_writev');
  delete proto._writev;
  try {
    const capabilities = runtime.runtimeCapabilities();
    assert.equal(capabilities.moveConnections, false);
    assert.deepEqual(capabilities.problems, [`Node.js ${process.version}: net.Socket#_writev is not a function`]);
    const err = checkInternals();
    assert.equal(err.code, 'ERR_HANDOVER_UNSUPPORTED_RUNTIME');
    assert.match(err.message, /net\.Socket#_writev/);
  } finally {
    Object.defineProperty(proto, '_writev', original);
  }
});

test('a socket timeout that setTimeout() no longer reports is named (a handed-back connection would lose its timer)', () => {
  const original = Object.getOwnPropertyDescriptor(net.Socket.prototype, 'setTimeout');
  // A runtime that keeps the timeout elsewhere: the value given is not readable back.
  net.Socket.prototype.setTimeout = function setTimeout(msecs, callback) {
    const result = original.value.call(this, msecs, callback);
    delete this.timeout;
    return result;
  };
  try {
    const { problems } = runtime.runtimeCapabilities();
    assert.deepEqual(problems, [`Node.js ${process.version}: net.Socket#timeout does not report the value given to setTimeout()`]);
  } finally {
    Object.defineProperty(net.Socket.prototype, 'setTimeout', original);
  }
});
