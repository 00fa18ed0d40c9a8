import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCodes } from '../protocol/index.ts';
import { decodeChunkIndex, encodeChunkIndex, type ChunkEntry } from './chunk-index.ts';

const d = (c: string) => c.repeat(64);
const entries: ChunkEntry[] = [
  { offset: 0, length: 8192, digest: d('a') },
  { offset: 8192, length: 1 << 30, digest: null },
  { offset: 8192 + (1 << 30), length: 4096, digest: d('b') },
];
const size = 8192 + (1 << 30) + 4096;

test('chunk index round-trips and stays compact', () => {
  const bytes = encodeChunkIndex(entries);
  assert.deepEqual(decodeChunkIndex(bytes, size), entries);
  // header 6 + count 1 + two data entries (varint + 32) + one hole (varint only)
  assert.ok(bytes.length < 6 + 1 + 2 * (3 + 32) + 6, `index is ${bytes.length} bytes`);
});

test('a damaged chunk index is refused with ERR_INDEX_CORRUPT', async (t) => {
  const good = encodeChunkIndex(entries);
  const cases: { name: string; bytes: Buffer; size?: number }[] = [
    { name: 'bad magic', bytes: Buffer.concat([Buffer.from('XXXX'), good.subarray(4)]) },
    {
      name: 'unknown version',
      bytes: Buffer.concat([good.subarray(0, 4), Buffer.from([9]), good.subarray(5)]),
    },
    { name: 'truncated', bytes: good.subarray(0, good.length - 5) },
    { name: 'trailing bytes', bytes: Buffer.concat([good, Buffer.from([0])]) },
    { name: 'covers less than the image', bytes: good, size: size + 1 },
    { name: 'runs past the image', bytes: good, size: size - 1 },
    {
      name: 'absurd entry count',
      bytes: Buffer.concat([good.subarray(0, 6), Buffer.from([0xff, 0xff, 0xff, 0x7f])]),
    },
    { name: 'empty', bytes: Buffer.alloc(0) },
  ];
  for (const c of cases) {
    await t.test(c.name, () => {
      assert.throws(
        () => decodeChunkIndex(c.bytes, c.size ?? size),
        (err: { code?: string }) => err.code === ErrorCodes.INDEX_CORRUPT,
      );
    });
  }
});

test('encoding refuses entries that do not tile the image', () => {
  assert.throws(
    () => encodeChunkIndex([{ offset: 4096, length: 4096, digest: d('a') }]),
    RangeError,
  );
  assert.throws(() => encodeChunkIndex([{ offset: 0, length: 0, digest: null }]), RangeError);
});
