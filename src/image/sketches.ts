import { zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import { isBulkheadError, ErrorCodes } from '../protocol/index.ts';
import type { ChunkEntry } from './chunk-index.ts';
import { forEachLimit } from './digest-file.ts';
import type { StoredChunks, WorkerPool } from './pool.ts';
import { zstdBound } from './read.ts';
import { ResemblanceIndex, SUPER_FEATURES } from './resemblance.ts';
import { chunkKey, sketchesKey, type WritableChunkStore } from './store/index.ts';

/*
 * The sketches of a version's chunks (resemblance.ts), kept beside it in the store so that the
 * next version's import finds what its new chunks resemble without reading the old chunks
 * back: each import sketches only the chunks its parent did not have. The file is a hint for
 * imports, never read by a PC: a damaged or missing one only costs time (the chunks are
 * sketched from the store instead) or compression, never correctness, as every reference is
 * checked against its digest before a frame is compressed with it.
 *
 * Format: "BHSKETCH1\n", then per distinct chunk in index order: its SHA-256 (32 bytes), its
 * block count (u16 LE), SUPER_FEATURES u32 LE per block (all zero: too little to sample);
 * zstd-compressed.
 */

/** Per chunk digest: SUPER_FEATURES values per SKETCH_BLOCK-byte block. */
export type Sketches = Map<string, Uint32Array>;

const MAGIC = Buffer.from('BHSKETCH1\n');
const MAX_SKETCH_FILE = 256 * 1024 * 1024;
const BATCH = 512;

export function encodeSketches(sketches: Sketches): Buffer {
  const parts: Buffer[] = [MAGIC];
  for (const [digest, s] of sketches) {
    const head = Buffer.allocUnsafe(34);
    head.write(digest, 0, 'hex');
    head.writeUInt16LE(s.length / SUPER_FEATURES, 32);
    parts.push(head, Buffer.from(s.buffer, s.byteOffset, s.byteLength));
  }
  return zstdCompressSync(Buffer.concat(parts));
}

/** Null when the bytes are not a sketch file. */
export function decodeSketches(compressed: Uint8Array): Sketches | null {
  let raw: Buffer;
  try {
    raw = zstdDecompressSync(compressed, { maxOutputLength: MAX_SKETCH_FILE });
  } catch {
    return null;
  }
  if (!raw.subarray(0, MAGIC.length).equals(MAGIC)) return null;
  const out: Sketches = new Map();
  for (let at = MAGIC.length; at < raw.length;) {
    if (at + 34 > raw.length) return null;
    const digest = raw.toString('hex', at, at + 32);
    const values = raw.readUInt16LE(at + 32) * SUPER_FEATURES;
    at += 34;
    if (at + values * 4 > raw.length) return null;
    const s = new Uint32Array(values);
    for (let k = 0; k < values; k++) s[k] = raw.readUInt32LE(at + 4 * k);
    at += values * 4;
    out.set(digest, s);
  }
  return out;
}

export async function readSketches(
  store: WritableChunkStore,
  name: string,
  version: string,
): Promise<Sketches | null> {
  try {
    return decodeSketches(await store.read(sketchesKey(name, version), MAX_SKETCH_FILE));
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) return null;
    throw err;
  }
}

export async function writeSketches(
  store: WritableChunkStore,
  name: string,
  version: string,
  sketches: Sketches,
): Promise<void> {
  await store.write(sketchesKey(name, version), encodeSketches(sketches));
}

type SketchResult = { sketches: Uint32Array; sampled: Uint8Array; blocks: Uint32Array };

/** Per input, its blocks' sketches, zero where a block had too little to sample. */
function perInput(results: readonly SketchResult[]): Uint32Array[] {
  const out: Uint32Array[] = [];
  for (const r of results) {
    let block = 0;
    for (let k = 0; k < r.blocks.length; k++) {
      const n = r.blocks[k]!;
      const s = r.sketches.slice(block * SUPER_FEATURES, (block + n) * SUPER_FEATURES);
      for (let b = 0; b < n; b++) {
        if (!r.sampled[block + b]) s.fill(0, b * SUPER_FEATURES, (b + 1) * SUPER_FEATURES);
      }
      block += n;
      out.push(s);
    }
  }
  return out;
}

/** Sketches of chunks read from an image file at their offsets. */
export function sketchFromFile(
  pool: WorkerPool,
  path: string,
  entries: readonly ChunkEntry[],
): Promise<Sketches> {
  return sketchInBatches(pool, entries, async (b) => {
    const spans = new Float64Array(b.flatMap((e) => [e.offset, e.length]));
    return pool.run({ op: 'sketch', path, spans });
  });
}

/** Sketches of chunks read back from the store (when no sketch file was kept for them). */
export function sketchFromStore(
  pool: WorkerPool,
  store: WritableChunkStore,
  entries: readonly ChunkEntry[],
): Promise<Sketches> {
  return sketchInBatches(pool, entries, async (b) => {
    const lengthOf = new Map(b.map((e) => [e.digest, e.length]));
    const chunks = await storedChunks(
      store,
      b.map((e) => e.digest!),
      lengthOf,
    );
    return pool.run({ op: 'sketch', chunks });
  });
}

/** Runs `sketchBatch` over `entries` in batches, two per worker at a time. */
async function sketchInBatches(
  pool: WorkerPool,
  entries: readonly ChunkEntry[],
  sketchBatch: (batch: ChunkEntry[]) => Promise<SketchResult>,
): Promise<Sketches> {
  const results: SketchResult[] = [];
  await forEachLimit(cut(entries, BATCH), pool.size * 2, async (b, i) => {
    results[i] = await sketchBatch(b);
  });
  const sketches = perInput(results);
  return new Map(entries.map((e, i) => [e.digest!, sketches[i]!]));
}

/**
 * For each new chunk, the candidates its blocks resemble (the first found for each block, once
 * each): what the frame holding it is compressed against.
 */
export function chooseReferences(
  candidates: readonly ChunkEntry[],
  candidateSketches: Sketches,
  wanted: readonly ChunkEntry[],
  wantedSketches: Sketches,
): Map<string, ChunkEntry[]> {
  const index = new ResemblanceIndex<ChunkEntry>();
  for (const c of candidates) {
    const s = candidateSketches.get(c.digest!);
    if (s) forEachBlock(s, (b) => index.add(b, c));
  }
  const refOf = new Map<string, ChunkEntry[]>();
  for (const w of wanted) {
    const s = wantedSketches.get(w.digest!);
    if (!s) continue;
    const refs: ChunkEntry[] = [];
    forEachBlock(s, (b) => {
      const ref = index.find(b);
      if (ref && !refs.includes(ref)) refs.push(ref);
    });
    if (refs.length > 0) refOf.set(w.digest!, refs);
  }
  return refOf;
}

function forEachBlock(s: Uint32Array, fn: (block: Uint32Array) => void): void {
  for (let at = 0; at < s.length; at += SUPER_FEATURES) {
    const b = s.subarray(at, at + SUPER_FEATURES);
    if (b.some((v) => v !== 0)) fn(b);
  }
}

/** Chunks of the store as it holds them, for a worker to decompress and check. */
export async function storedChunks(
  store: WritableChunkStore,
  digests: readonly string[],
  lengthOf: ReadonlyMap<string | null, number>,
): Promise<StoredChunks> {
  const lengths = digests.map((d) => lengthOf.get(d)!);
  if (store.localPath) {
    const files = digests.map((d) => store.localPath!(chunkKey(d)));
    return { files, lengths, digests: [...digests] };
  }
  const compressed: Buffer[] = [];
  await forEachLimit(digests, 16, async (d, i) => {
    compressed[i] = await store.read(chunkKey(d), zstdBound(lengths[i]!));
  });
  return { compressed, lengths, digests: [...digests] };
}

function cut<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}
