import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLoginLimiter } from './rate-limit.ts';

test('the login limiter counts failures in a sliding window, per key', () => {
  let at = 1_000_000;
  const limiter = createLoginLimiter({
    now: () => new Date(at),
    maxFailures: 3,
    windowMs: 60_000,
  });
  limiter.fail('a');
  at += 10_000;
  limiter.fail('a');
  limiter.fail('a');
  assert.equal(limiter.retryAfter('a'), 50, 'the oldest failure frees a slot');
  assert.equal(limiter.retryAfter('b'), 0, 'keys are counted apart');
  at += 50_000;
  assert.equal(limiter.retryAfter('a'), 0);
  limiter.fail('a');
  assert.equal(limiter.retryAfter('a'), 10);
  limiter.reset('a');
  assert.equal(limiter.retryAfter('a'), 0);
});

test('the login limiter forgets the least recently failed keys beyond its bound', () => {
  const limiter = createLoginLimiter({ now: () => new Date(0), maxFailures: 1, maxKeys: 2 });
  limiter.fail('a');
  limiter.fail('b');
  limiter.fail('c');
  assert.equal(limiter.retryAfter('a'), 0);
  assert.ok(limiter.retryAfter('b') > 0);
  assert.ok(limiter.retryAfter('c') > 0);
});
