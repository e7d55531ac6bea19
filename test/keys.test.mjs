// Listener keys and the error class: pure functions, no sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { listenerKey, HandoverError, isHandoverError } from 'handover';

test('listener keys are stable names for the same listener', () => {
  assert.deepEqual(listenerKey({ port: 8080 }), { key: 'tcp:*:8080', kind: 'tcp' });
  assert.deepEqual(listenerKey({ port: 8080, host: '' }), { key: 'tcp:*:8080', kind: 'tcp' });
  assert.deepEqual(listenerKey({ port: 80, host: '0.0.0.0' }), { key: 'tcp:0.0.0.0:80', kind: 'tcp' });
  assert.deepEqual(listenerKey({ port: 80, host: 'LocalHost' }), { key: 'tcp:localhost:80', kind: 'tcp' });
  assert.equal(listenerKey({ port: 80, host: '::' }).key, 'tcp:[::]:80');
  assert.equal(listenerKey({ port: 80, host: '::0' }).key, 'tcp:[::]:80');
  assert.equal(listenerKey({ port: 80, host: '[::1]' }).key, 'tcp:[::1]:80');
  assert.equal(listenerKey({ port: 80, host: '0:0:0:0:0:0:0:1' }).key, 'tcp:[::1]:80');
  assert.deepEqual(listenerKey({ path: '/run/app.sock' }), { key: 'unix:/run/app.sock', kind: 'unix' });
  assert.deepEqual(listenerKey({ key: 'admin' }), { key: 'admin', kind: 'named' });
  assert.deepEqual(listenerKey({ key: 'public', port: 443 }), { key: 'public', kind: 'tcp' });
});

test('invalid targets are refused with ERR_HANDOVER_INVALID_ARG naming the option', () => {
  assert.throws(() => listenerKey({}), { code: 'ERR_HANDOVER_INVALID_ARG', message: /options\.port/ });
  assert.throws(() => listenerKey({ port: 70000 }), { code: 'ERR_HANDOVER_INVALID_ARG', message: /options\.port/ });
  assert.throws(() => listenerKey({ port: 1.5 }), { code: 'ERR_HANDOVER_INVALID_ARG' });
  assert.throws(() => listenerKey({ path: '' }), { code: 'ERR_HANDOVER_INVALID_ARG', message: /options\.path/ });
  assert.throws(() => listenerKey({ key: '' }), { code: 'ERR_HANDOVER_INVALID_ARG', message: /options\.key/ });
});

test('HandoverError carries a stable code and a cause', () => {
  const cause = new Error('inner');
  const err = new HandoverError('ERR_UPGRADE_IN_PROGRESS', 'busy', { cause });
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'HandoverError');
  assert.equal(err.code, 'ERR_UPGRADE_IN_PROGRESS');
  assert.equal(err.cause, cause);
  assert.ok(isHandoverError(err));
  assert.ok(isHandoverError(err, 'ERR_UPGRADE_IN_PROGRESS'));
  assert.ok(!isHandoverError(err, 'ERR_HANDOVER_PROTOCOL'));
  assert.ok(!isHandoverError(new Error('plain')));
});
