import { createHash } from 'node:crypto';
import type { BlockCdcParams, ChunkerParams, FastCdcParams } from '../protocol/index.ts';

/** A run of the image: data to be stored as one chunk, or a hole of zeros. */
export interface Span {
  offset: number;
  length: number;
  isHole: boolean;
}

/**
 * The default chunker, chosen by measurement (bench/RESULTS.md): filesystems keep data in
 * 4 KiB blocks, and when an image is rebuilt its files move by whole blocks, so boundaries on
 * block edges re-align at once where byte-level CDC straddles old and new blocks.
 */
export const DEFAULT_CHUNKER: BlockCdcParams = {
  algorithm: 'block-cdc',
  blockSize: 4096,
  minBlocks: 1,
  avgBlocks: 2,
  maxBlocks: 8,
};

/** Parameters of FastCDC used for comparison in the benchmark. */
export const DEFAULT_FASTCDC: FastCdcParams = {
  algorithm: 'fastcdc',
  minSize: 4096,
  avgSize: 16384,
  maxSize: 65536,
  gearSeed: 'bulkhead-fastcdc-gear-v1',
};

/**
 * Cuts a block-cdc image into spans from per-block facts computed in parallel:
 * `fingerprints[b]` (first LE u32 of the block's SHA-256) and `isZero[b]`.
 * Pure and sequential: the only cross-block state is the length of the open chunk.
 */
export function planBlockCdc(
  params: BlockCdcParams,
  size: number,
  fingerprints: Uint32Array,
  isZero: Uint8Array,
): Span[] {
  const { blockSize, minBlocks, avgBlocks, maxBlocks } = params;
  const blocks = Math.ceil(size / blockSize);
  if (fingerprints.length !== blocks || isZero.length !== blocks) {
    throw new RangeError(`expected ${blocks} block facts, got ${fingerprints.length}`);
  }
  const spans: Span[] = [];
  const end = (b: number) => Math.min(size, b * blockSize);
  let start = 0; // first block of the open run
  let inHole = blocks > 0 && isZero[0] === 1;
  const close = (b: number, hole: boolean) => {
    if (b > start)
      spans.push({ offset: start * blockSize, length: end(b) - start * blockSize, isHole: hole });
    start = b;
  };
  for (let b = 0; b < blocks; b++) {
    const zero = isZero[b] === 1;
    if (zero !== inHole) {
      close(b, inHole);
      inHole = zero;
    }
    if (inHole) continue;
    const length = b - start + 1;
    const isCut =
      length >= maxBlocks ||
      (length >= minBlocks && fingerprints[b]! % avgBlocks === avgBlocks - 1);
    if (isCut) close(b + 1, false);
  }
  close(blocks, inHole);
  return spans;
}

/** The 256-entry gear table of FastCDC, derived from the seed by SHA-256 in counter mode. */
export function gearTable(seed: string): Uint32Array {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    table[i] = createHash('sha256').update(`${seed}:${i}`).digest().readUInt32LE(0);
  }
  return table;
}

/** Streaming FastCDC: feed bytes in order, get cut points (absolute offsets) back. */
export class FastCdc {
  private readonly gear: Uint32Array;
  private readonly maskS: number;
  private readonly maskL: number;
  private hash = 0;
  private chunkStart = 0;
  private position = 0;
  private readonly params: FastCdcParams;

  constructor(params: FastCdcParams) {
    this.params = params;
    this.gear = gearTable(params.gearSeed);
    const bits = Math.round(Math.log2(params.avgSize));
    // Normalised chunking: a stricter mask before the average size, a looser one after.
    // The gear hash's high bits depend on the most bytes, so the masks use the high bits.
    this.maskS = highMask(bits + 2);
    this.maskL = highMask(bits - 2);
  }

  /** Consumes `data`; returns the absolute offsets where chunks end inside it. */
  push(data: Uint8Array): number[] {
    const cuts: number[] = [];
    const { minSize, avgSize, maxSize } = this.params;
    const gear = this.gear;
    let hash = this.hash;
    for (let i = 0; i < data.length; i++) {
      const length = this.position + i + 1 - this.chunkStart;
      if (length <= minSize) continue;
      hash = ((hash << 1) + gear[data[i]!]!) >>> 0;
      const mask = length < avgSize ? this.maskS : this.maskL;
      if ((hash & mask) === 0 || length >= maxSize) {
        const cut = this.position + i + 1;
        cuts.push(cut);
        this.chunkStart = cut;
        hash = 0;
      }
    }
    this.hash = hash;
    this.position += data.length;
    return cuts;
  }
}

function highMask(bits: number): number {
  const n = Math.max(1, Math.min(31, bits));
  return ((0xffffffff << (32 - n)) >>> 0) & 0xffffffff;
}

/** Human-readable summary of chunker parameters, for `image inspect`. */
export function describeChunker(params: ChunkerParams): string {
  if (params.algorithm === 'block-cdc') {
    const kib = params.blockSize / 1024;
    return `block-cdc, ${kib} KiB blocks, chunks of ${params.minBlocks}-${params.maxBlocks} blocks (average ~${params.avgBlocks + params.minBlocks - 1})`;
  }
  return `fastcdc ${params.minSize}/${params.avgSize}/${params.maxSize} bytes, gear seed "${params.gearSeed}"`;
}
