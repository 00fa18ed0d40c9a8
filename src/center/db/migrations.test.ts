import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MIGRATION_NAMES } from './migrations.ts';

test('migrations are numbered in order, and new ones without gaps', () => {
  const numbers = MIGRATION_NAMES.map((name) => {
    const match = /^(\d{4})_[a-z0-9_]+$/.exec(name);
    assert.ok(match, `migration name ${name} is NNNN_words`);
    return Number(match[1]);
  });
  // 0003 was never shipped; names already recorded in databases are never changed.
  const shipped = [1, 2, 4, 5];
  assert.deepEqual(numbers.slice(0, shipped.length), shipped);
  // 0011 belongs to another change of the same issue, merged beside this one.
  const reserved = new Set([11]);
  for (let i = shipped.length; i < numbers.length; i++) {
    const expected = reserved.has(numbers[i - 1]! + 1) ? numbers[i - 1]! + 2 : numbers[i - 1]! + 1;
    assert.equal(numbers[i], expected, `${MIGRATION_NAMES[i]} follows without a gap`);
  }
});
