import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import type { BlockCdcParams } from '../protocol/index.ts';
import { DEFAULT_FASTCDC, FastCdc, gearTable, planBlockCdc, type Span } from './chunker.ts';

const params: BlockCdcParams = {
  algorithm: 'block-cdc',
  blockSize: 4096,
  minBlocks: 2,
  avgBlocks: 4,
  maxBlocks: 5,
};

// Facts per block as the workers report them: fingerprint, and whether the block is all zero.
function facts(blocks: (number | 'z')[]) {
  return {
    fingerprints: Uint32Array.from(blocks.map((b) => (b === 'z' ? 0 : b))),
    isZero: Uint8Array.from(blocks.map((b) => (b === 'z' ? 1 : 0))),
  };
}

const cut = (spans: Span[]) =>
  spans.map((s) => `${s.isHole ? 'H' : 'D'}${s.offset / 4096}+${s.length / 4096}`).join(' ');

test('block-cdc cuts on block edges by fingerprint, min and max', async (t) => {
  // fingerprint % 4 === 3 marks a boundary after that block.
  const cases: { name: string; blocks: (number | 'z')[]; want: string }[] = [
    { name: 'boundary after a marked block', blocks: [0, 3, 0, 0, 0], want: 'D0+2 D2+3' },
    { name: 'a mark before minBlocks is ignored', blocks: [3, 0, 0, 3, 0], want: 'D0+4 D4+1' },
    { name: 'maxBlocks forces a cut', blocks: [0, 0, 0, 0, 0, 0, 0], want: 'D0+5 D5+2' },
    {
      name: 'zero blocks are holes and end a chunk',
      blocks: [0, 0, 'z', 'z', 0, 7],
      want: 'D0+2 H2+2 D4+2',
    },
    { name: 'all holes', blocks: ['z', 'z', 'z'], want: 'H0+3' },
    { name: 'empty image', blocks: [], want: '' },
  ];
  for (const c of cases) {
    await t.test(c.name, () => {
      const f = facts(c.blocks);
      assert.equal(
        cut(planBlockCdc(params, c.blocks.length * 4096, f.fingerprints, f.isZero)),
        c.want,
      );
    });
  }
});

test('block-cdc keeps a partial last block', () => {
  const f = facts([0, 0, 0]);
  const spans = planBlockCdc(params, 2 * 4096 + 100, f.fingerprints, f.isZero);
  assert.deepEqual(
    spans.map((s) => [s.offset, s.length]),
    [[0, 2 * 4096 + 100]],
  );
});

test('block-cdc boundaries re-align right after an insertion of whole blocks', () => {
  const rand = (i: number) => createHash('sha256').update(String(i)).digest().readUInt32LE(0);
  const before = Array.from({ length: 400 }, (_, i) => rand(i));
  const after = [...before.slice(0, 100), rand(-1), rand(-2), rand(-3), ...before.slice(100)];
  const p: BlockCdcParams = { ...params, minBlocks: 1, maxBlocks: 16 };
  const digestsOf = (blocks: number[]) => {
    const f = facts(blocks);
    return planBlockCdc(p, blocks.length * 4096, f.fingerprints, f.isZero).map((s) =>
      blocks.slice(s.offset / 4096, (s.offset + s.length) / 4096).join(','),
    );
  };
  const old = new Set(digestsOf(before));
  const fresh = digestsOf(after).filter((c) => !old.has(c));
  // Only the chunks around the three inserted blocks are new.
  assert.ok(fresh.length <= 3, `expected at most 3 new chunks, got ${fresh.length}`);
});

test('block-cdc refuses facts that do not match the size', () => {
  const f = facts([0, 0]);
  assert.throws(() => planBlockCdc(params, 3 * 4096, f.fingerprints, f.isZero), RangeError);
});

test('FastCDC gear table is fixed by its seed', () => {
  const a = gearTable('bulkhead-fastcdc-gear-v1');
  assert.deepEqual(a, gearTable('bulkhead-fastcdc-gear-v1'));
  assert.notDeepEqual(a, gearTable('other'));
  // Pinned so a change to the derivation cannot go unnoticed: it would re-cut every image.
  assert.equal(
    a[0],
    createHash('sha256').update('bulkhead-fastcdc-gear-v1:0').digest().readUInt32LE(0),
  );
});

test('FastCDC cuts the same whatever the read sizes, within min and max', () => {
  const data = Buffer.concat(
    Array.from({ length: 2048 }, (_, i) => createHash('sha256').update(`x${i}`).digest()),
  );
  const whole = new FastCdc(DEFAULT_FASTCDC).push(data);
  const pieces = new FastCdc(DEFAULT_FASTCDC);
  const split: number[] = [];
  for (let pos = 0; pos < data.length; pos += 1000)
    split.push(...pieces.push(data.subarray(pos, pos + 1000)));
  assert.deepEqual(split, whole);
  assert.ok(whole.length > 0);
  let last = 0;
  for (const c of whole) {
    assert.ok(
      c - last > DEFAULT_FASTCDC.minSize && c - last <= DEFAULT_FASTCDC.maxSize,
      `chunk of ${c - last} bytes`,
    );
    last = c;
  }
});
