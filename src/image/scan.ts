import { open } from 'node:fs/promises';
import type { ChunkerParams } from '../protocol/index.ts';
import type { ChunkEntry } from './chunk-index.ts';
import { FastCdc, planBlockCdc, type Span } from './chunker.ts';
import type { WorkerPool } from './pool.ts';

export interface ScanProgress {
  phase: 'scan' | 'digest';
  doneBytes: number;
  totalBytes: number;
}

const SEGMENT_BYTES = 64 * 1024 * 1024;
const BATCH_BYTES = 16 * 1024 * 1024;

/**
 * Cuts a raw image file into chunks with the given parameters and digests every chunk, using
 * every worker of the pool. Deterministic: the same bytes and parameters give the same
 * entries on any machine.
 */
export async function scanImage(
  path: string,
  size: number,
  params: ChunkerParams,
  pool: WorkerPool,
  onProgress?: (p: ScanProgress) => void,
): Promise<ChunkEntry[]> {
  const spans =
    params.algorithm === 'block-cdc'
      ? await planBlocks(path, size, params.blockSize, params, pool, onProgress)
      : await planFastCdc(path, size, params, onProgress);
  return digestSpans(path, spans, pool, onProgress);
}

async function planBlocks(
  path: string,
  size: number,
  blockSize: number,
  params: Extract<ChunkerParams, { algorithm: 'block-cdc' }>,
  pool: WorkerPool,
  onProgress?: (p: ScanProgress) => void,
): Promise<Span[]> {
  const blocks = Math.ceil(size / blockSize);
  const fingerprints = new Uint32Array(blocks);
  const isZero = new Uint8Array(blocks);
  const segment = SEGMENT_BYTES - (SEGMENT_BYTES % blockSize);
  let done = 0;
  const jobs: Promise<void>[] = [];
  for (let start = 0; start < size; start += segment) {
    const end = Math.min(size, start + segment);
    jobs.push(
      pool.run({ op: 'fingerprint', path, start, end, blockSize }).then((r) => {
        fingerprints.set(r.fingerprints, start / blockSize);
        isZero.set(r.isZero, start / blockSize);
        done += end - start;
        onProgress?.({ phase: 'scan', doneBytes: done, totalBytes: size });
      }),
    );
  }
  await Promise.all(jobs);
  return planBlockCdc(params, size, fingerprints, isZero);
}

async function planFastCdc(
  path: string,
  size: number,
  params: Extract<ChunkerParams, { algorithm: 'fastcdc' }>,
  onProgress?: (p: ScanProgress) => void,
): Promise<Span[]> {
  const cdc = new FastCdc(params);
  const spans: Span[] = [];
  let last = 0;
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
    for (let pos = 0; pos < size;) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) throw new Error(`${path} ended at byte ${pos}, expected ${size}`);
      for (const cut of cdc.push(buf.subarray(0, bytesRead))) {
        spans.push({ offset: last, length: cut - last, isHole: false });
        last = cut;
      }
      pos += bytesRead;
      onProgress?.({ phase: 'scan', doneBytes: pos, totalBytes: size });
    }
  } finally {
    await fh.close();
  }
  if (last < size) spans.push({ offset: last, length: size - last, isHole: false });
  return spans;
}

async function digestSpans(
  path: string,
  spans: Span[],
  pool: WorkerPool,
  onProgress?: (p: ScanProgress) => void,
): Promise<ChunkEntry[]> {
  const entries: ChunkEntry[] = spans.map((s) => ({
    offset: s.offset,
    length: s.length,
    digest: null,
  }));
  const total = spans.reduce((n, s) => n + (s.isHole ? 0 : s.length), 0);
  let done = 0;
  const jobs: Promise<void>[] = [];
  let batch: number[] = [];
  let batchBytes = 0;
  const flush = () => {
    if (batch.length === 0) return;
    const members = batch;
    const bytes = batchBytes;
    const ranges = new Float64Array(members.length * 2);
    members.forEach((i, k) => {
      ranges[2 * k] = spans[i]!.offset;
      ranges[2 * k + 1] = spans[i]!.length;
    });
    jobs.push(
      pool.run({ op: 'digest', path, spans: ranges }).then((r) => {
        members.forEach((i, k) => {
          // A chunk of zeros found by a byte-level chunker is a hole like any other.
          if (r.isZero[k] !== 1)
            entries[i]!.digest = Buffer.from(r.digests.subarray(k * 32, k * 32 + 32)).toString(
              'hex',
            );
        });
        done += bytes;
        onProgress?.({ phase: 'digest', doneBytes: done, totalBytes: total });
      }),
    );
    batch = [];
    batchBytes = 0;
  };
  spans.forEach((s, i) => {
    if (s.isHole) return;
    batch.push(i);
    batchBytes += s.length;
    if (batchBytes >= BATCH_BYTES) flush();
  });
  flush();
  await Promise.all(jobs);
  return mergeHoles(entries);
}

/** Adjacent holes become one entry: fewer index bytes, same image. */
function mergeHoles(entries: ChunkEntry[]): ChunkEntry[] {
  const out: ChunkEntry[] = [];
  for (const e of entries) {
    const prev = out[out.length - 1];
    if (prev && prev.digest === null && e.digest === null) prev.length += e.length;
    else out.push(e);
  }
  return out;
}
