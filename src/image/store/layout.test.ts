import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCodes } from '../../protocol/index.ts';
import { chunkKey, indexKey, manifestKey, packKey } from './layout.ts';

test('store keys follow the documented layout', () => {
  const d = 'ab'.repeat(32);
  assert.equal(chunkKey(d), `chunks/ab/ab/${d}`);
  assert.equal(indexKey(d), `indexes/ab/ab/${d}`);
  assert.equal(manifestKey('debian', '12.1'), 'manifests/debian/12.1.json');
  assert.equal(packKey('debian', '12.2', '12.1'), 'packs/debian/12.2/from-12.1.pack');
});

test('no name, version or id can climb out of the store', async (t) => {
  const names = [
    '..',
    '../etc',
    'a/b',
    '/etc/passwd',
    '.hidden',
    '',
    'a\\b',
    'a\0b',
    'x'.repeat(129),
    'é',
  ];
  for (const n of names) {
    await t.test(`name ${JSON.stringify(n)}`, () => {
      assert.throws(
        () => manifestKey(n, '1'),
        (e: { code?: string }) => e.code === ErrorCodes.INVALID_NAME,
      );
      assert.throws(
        () => manifestKey('ok', n),
        (e: { code?: string }) => e.code === ErrorCodes.INVALID_NAME,
      );
    });
  }
  const ids = [
    '../../../../etc/passwd',
    'AB'.repeat(32),
    'ab'.repeat(31),
    `${'ab'.repeat(31)}/..`,
    '',
  ];
  for (const id of ids) {
    await t.test(`chunk id ${JSON.stringify(id)}`, () => {
      assert.throws(
        () => chunkKey(id),
        (e: { code?: string }) => e.code === ErrorCodes.INVALID_DIGEST,
      );
    });
  }
});
