import assert from 'node:assert/strict';
import { test } from 'node:test';
import { newId } from './ids.ts';

test('ids are UUIDv7 whose text sorts by creation time', () => {
  const t = Date.parse('2025-06-01T12:00:00Z');
  const id = newId(t);
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16), t);
  const ids = Array.from({ length: 1000 }, (_, i) => newId(t + i));
  assert.deepEqual([...ids].sort(), ids);
  assert.equal(new Set(Array.from({ length: 1000 }, () => newId(t))).size, 1000);
});

test('newId refuses a time that is not epoch milliseconds', () => {
  for (const bad of [-1, 1.5, Number.NaN, 2 ** 48]) assert.throws(() => newId(bad), RangeError);
});
