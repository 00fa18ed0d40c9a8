import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clockedRateLimitStore } from './rate-limit-store.ts';

function incr(store: InstanceType<ReturnType<typeof clockedRateLimitStore>>, key: string) {
  let result: { current: number; ttl: number } | undefined;
  store.incr(
    key,
    (err, r) => {
      assert.equal(err, null);
      result = r;
    },
    60_000,
    10,
  );
  return result!;
}

test('a fixed window per key on the injected clock', () => {
  let at = 1_000_000;
  const Store = clockedRateLimitStore(() => new Date(at), 100);
  const store = new Store({});
  assert.deepEqual(incr(store, 'a'), { current: 1, ttl: 60_000 });
  at += 20_000;
  assert.deepEqual(incr(store, 'a'), { current: 2, ttl: 40_000 });
  assert.deepEqual(incr(store, 'b'), { current: 1, ttl: 60_000 });
  at += 40_000;
  assert.deepEqual(incr(store, 'a'), { current: 1, ttl: 60_000 }, 'a new window');
  const child = store.child({} as never);
  assert.deepEqual(incr(child, 'b'), { current: 1, ttl: 60_000 }, 'each route counts apart');
});

test('a flood of distinct keys keeps the least recently seen out, not the whole table', () => {
  const Store = clockedRateLimitStore(() => new Date(0), 1000);
  const store = new Store({});
  for (let i = 0; i < 5; i++) incr(store, 'steady');
  for (let i = 0; i < 100_000; i++) {
    incr(store, `flood-${i}`);
    // The steady client keeps coming back, so it stays among the most recently seen.
    if (i % 500 === 0) incr(store, 'steady');
  }
  assert.equal(incr(store, 'steady').current, 5 + 200 + 1, 'its count survived the flood');
  assert.equal(incr(store, 'flood-0').current, 1, 'long-gone keys were forgotten');
});
