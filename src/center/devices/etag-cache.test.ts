import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EtagCache } from './etag-cache.ts';

const HOUR = 3600_000;

test('an entry answers within its window and age, and is forgotten on notification', () => {
  const cache = new EtagCache({ maxAgeMs: 10_000 });
  cache.set('a', '"1"', 0, 1000);
  cache.set('b', '"2"', 0, 1000);
  assert.equal(cache.get('a', 0, 5000), '"1"');
  assert.equal(cache.get('a', HOUR, 5000), undefined, 'a new hour window has a new ETag');
  assert.equal(cache.get('a', 0, 5000), undefined, 'and the stale entry is gone');
  assert.equal(cache.get('b', 0, 11_001), undefined, 'too old to trust');
  cache.set('c', '"3"', 0, 1000);
  cache.set('d', '"4"', 0, 1000);
  cache.invalidate(['c']);
  assert.equal(cache.get('c', 0, 1000), undefined);
  assert.equal(cache.get('d', 0, 1000), '"4"');
  cache.invalidate('all');
  assert.equal(cache.size, 0);
});

test('beyond its bound the oldest entries go first', () => {
  const cache = new EtagCache({ maxEntries: 3 });
  for (const id of ['a', 'b', 'c']) cache.set(id, `"${id}"`, 0, 0);
  cache.set('a', '"a2"', 0, 0); // refreshed: now the newest
  cache.set('d', '"d"', 0, 0);
  assert.equal(cache.size, 3);
  assert.equal(cache.get('b', 0, 0), undefined, 'b was the oldest');
  assert.equal(cache.get('a', 0, 0), '"a2"');
  assert.equal(cache.get('d', 0, 0), '"d"');
});
