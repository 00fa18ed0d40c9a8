// Worker thread of the image pipeline: the CPU-heavy, embarrassingly parallel steps
// (block fingerprints, chunk digests, compression) on byte ranges of a file it opens itself.
import { hash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { constants, zstdCompressSync } from 'node:zlib';
import type { WorkerRequest, WorkerResponse } from './pool.ts';

const READ_SLICE = 8 * 1024 * 1024;

function readRange(fd: number, offset: number, length: number, into?: Buffer): Buffer {
  const buf = into && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, offset + done);
    if (n === 0)
      throw new Error(`file ended at byte ${offset + done}, expected ${offset + length}`);
    done += n;
  }
  return buf;
}

function isAllZero(buf: Buffer): boolean {
  // Compare 8 bytes at a time first: most data blocks differ from zero in their first bytes.
  for (let i = 0; i < Math.min(buf.length, 64); i++) if (buf[i] !== 0) return false;
  return buf.equals(zeroBuffer(buf.length));
}

let zeros = Buffer.alloc(0);
function zeroBuffer(length: number): Buffer {
  if (zeros.length < length) zeros = Buffer.alloc(Math.max(length, 1 << 20));
  return zeros.subarray(0, length);
}

function fingerprint(path: string, start: number, end: number, blockSize: number) {
  const blocks = Math.ceil((end - start) / blockSize);
  const fingerprints = new Uint32Array(blocks);
  const isZero = new Uint8Array(blocks);
  const fd = openSync(path, 'r');
  try {
    const slice = Buffer.allocUnsafe(READ_SLICE - (READ_SLICE % blockSize));
    for (let pos = start; pos < end; pos += slice.length) {
      const buf = readRange(fd, pos, Math.min(slice.length, end - pos), slice);
      for (let off = 0; off < buf.length; off += blockSize) {
        const block = buf.subarray(off, off + blockSize);
        const b = (pos - start + off) / blockSize;
        if (isAllZero(block)) isZero[b] = 1;
        else fingerprints[b] = hash('sha256', block, 'buffer').readUInt32LE(0);
      }
    }
  } finally {
    closeSync(fd);
  }
  return { fingerprints, isZero };
}

function digestSpans(path: string, spans: Float64Array) {
  const n = spans.length / 2;
  const digests = new Uint8Array(n * 32);
  const isZero = new Uint8Array(n);
  const fd = openSync(path, 'r');
  try {
    let scratch = Buffer.allocUnsafe(1 << 20);
    for (let i = 0; i < n; i++) {
      const length = spans[2 * i + 1]!;
      if (scratch.length < length) scratch = Buffer.allocUnsafe(length);
      const buf = readRange(fd, spans[2 * i]!, length, scratch);
      if (isAllZero(buf)) isZero[i] = 1;
      digests.set(hash('sha256', buf, 'buffer'), i * 32);
    }
  } finally {
    closeSync(fd);
  }
  return { digests, isZero };
}

/**
 * Compresses each span on its own, or (`joined`) all of them as one frame, as a pack does.
 * Digests are taken again from the very bytes compressed, so a file changed under us between
 * passes is caught instead of storing a chunk under the wrong name.
 */
function compressSpans(path: string, spans: Float64Array, level: number, joined: boolean) {
  const out: Uint8Array[] = [];
  const n = spans.length / 2;
  const digests = new Uint8Array(n * 32);
  const fd = openSync(path, 'r');
  try {
    const parts: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      const buf = readRange(fd, spans[2 * i]!, spans[2 * i + 1]!);
      digests.set(hash('sha256', buf, 'buffer'), i * 32);
      if (joined) parts.push(buf);
      else out.push(compress(buf, level));
    }
    if (joined) out.push(compress(Buffer.concat(parts), level));
  } finally {
    closeSync(fd);
  }
  return { compressed: out, digests };
}

function compress(buf: Uint8Array, level: number): Uint8Array {
  return zstdCompressSync(buf, {
    params: {
      [constants.ZSTD_c_compressionLevel]: level,
      [constants.ZSTD_c_checksumFlag]: 0,
      [constants.ZSTD_c_contentSizeFlag]: 1,
    },
  });
}

function handle(req: WorkerRequest): { res: WorkerResponse; transfer: ArrayBuffer[] } {
  switch (req.op) {
    case 'fingerprint': {
      const r = fingerprint(req.path, req.start, req.end, req.blockSize);
      return {
        res: { op: 'fingerprint', ...r },
        transfer: [r.fingerprints.buffer, r.isZero.buffer],
      };
    }
    case 'digest': {
      const r = digestSpans(req.path, req.spans);
      return { res: { op: 'digest', ...r }, transfer: [r.digests.buffer, r.isZero.buffer] };
    }
    case 'compress': {
      const r = compressSpans(req.path, req.spans, req.level, req.joined);
      return { res: { op: 'compress', ...r }, transfer: [r.digests.buffer] };
    }
  }
}

parentPort!.on('message', (msg: { id: number; req: WorkerRequest }) => {
  try {
    const { res, transfer } = handle(msg.req);
    parentPort!.postMessage({ id: msg.id, res }, transfer);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    parentPort!.postMessage({ id: msg.id, error: { message: e.message, code: e.code } });
  }
});
