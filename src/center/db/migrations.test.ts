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
  for (let i = shipped.length; i < numbers.length; i++) {
    assert.equal(numbers[i], numbers[i - 1]! + 1, `${MIGRATION_NAMES[i]} follows without a gap`);
  }
});
