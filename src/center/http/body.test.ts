import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isNestedDeeper } from './body.ts';

test('isNestedDeeper counts the brackets of arrays and objects, not those in strings', () => {
  const cases: [string, number, boolean][] = [
    ['{}', 0, true],
    ['{}', 1, false],
    ['[[[]]]', 2, true],
    ['[[[]]]', 3, false],
    ['[[],[],[]]', 2, false],
    ['{"a":{"b":[1]}}', 3, false],
    ['{"a":{"b":[1]}}', 2, true],
    ['"[[[[[["', 1, false],
    ['{"a":"\\"[[[[\\\\"}', 1, false],
    ['{"a":"\\\\"}', 1, false],
    ['{"a":"\\\\","b":[[1]]}', 2, true],
    ['[' + '"x",'.repeat(1000) + '1]', 1, false],
    ['['.repeat(100_000), 32, true],
  ];
  for (const [text, max, deeper] of cases) {
    assert.equal(isNestedDeeper(text, max), deeper, `${text.slice(0, 40)} deeper than ${max}`);
  }
});
