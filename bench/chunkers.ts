// Chunker comparison on a real image pair: for each candidate chunker, what a holder of the
// old image must download to get the new one (the new chunks as one pack at the product's
// pack level, plus the compressed chunk index), and what the store holds.
import { openSync, readSync, closeSync, statSync } from 'node:fs';
import { constants, zstdCompressSync } from 'node:zlib';
import type { ChunkerParams } from '../src/protocol/index.ts';
import {
  DEFAULT_CHUNKER,
  DEFAULT_FASTCDC,
  WorkerPool,
  encodeChunkIndex,
  scanImage,
} from '../src/image/index.ts';

export const CANDIDATES: { label: string; params: ChunkerParams }[] = [
  { label: 'fastcdc 4/16/64 KiB', params: DEFAULT_FASTCDC },
  { label: 'block-cdc avg 8 KiB (default)', params: DEFAULT_CHUNKER },
  { label: 'block-cdc avg 16 KiB', params: { ...DEFAULT_CHUNKER, avgBlocks: 4, maxBlocks: 16 } },
  { label: 'block-cdc avg 32 KiB', params: { ...DEFAULT_CHUNKER, avgBlocks: 8, maxBlocks: 32 } },
  { label: 'block-cdc avg 64 KiB', params: { ...DEFAULT_CHUNKER, avgBlocks: 16, maxBlocks: 64 } },
];

const FRAME = 8 * 1024 * 1024;

function zstd(data: Buffer, level: number): number {
  return zstdCompressSync(data, { params: { [constants.ZSTD_c_compressionLevel]: level } }).length;
}

export async function compareChunkers(oldImage: string, newImage: string, packLevel = 19) {
  const size = statSync(newImage).size;
  const pool = new WorkerPool();
  const fd = openSync(newImage, 'r');
  const rows = [];
  try {
    for (const c of CANDIDATES) {
      const started = performance.now();
      const before = await scanImage(oldImage, statSync(oldImage).size, c.params, pool);
      const after = await scanImage(newImage, size, c.params, pool);
      const scanSeconds = (performance.now() - started) / 2000;
      const have = new Set(before.map((e) => e.digest));
      const seen = new Set<string>();
      const parts: Buffer[] = [];
      let singly = 0;
      for (const e of after) {
        if (!e.digest || have.has(e.digest) || seen.has(e.digest)) continue;
        seen.add(e.digest);
        const buf = Buffer.allocUnsafe(e.length);
        readSync(fd, buf, 0, e.length, e.offset);
        parts.push(buf);
        singly += zstd(buf, 3);
      }
      const raw = Buffer.concat(parts);
      let pack = 0;
      for (let o = 0; o < raw.length; o += FRAME)
        pack += zstd(raw.subarray(o, o + FRAME), packLevel);
      const index = zstd(encodeChunkIndex(after), 19);
      rows.push({
        chunker: c.label,
        params: c.params,
        chunks: after.filter((e) => e.digest).length,
        newChunks: seen.size,
        newRawBytes: raw.length,
        packBytes: pack,
        indexBytes: index,
        downloadBytes: pack + index,
        singleChunkBytes: singly + index,
        scanSecondsPerImage: +scanSeconds.toFixed(2),
      });
    }
  } finally {
    closeSync(fd);
    await pool.close();
  }
  return rows;
}
