// Worker thread of the image pipeline: the CPU-heavy, embarrassingly parallel steps
// (block fingerprints, chunk digests, compression) on byte ranges of a file it opens itself.
import { createHash, hash } from 'node:crypto';
import {
  closeSync,
  openSync,
  readFileSync,
  readSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { constants, zstdCompressSync, zstdDecompressSync } from 'node:zlib';
import type { StoredChunks, WorkerRequest, WorkerResponse } from './pool.ts';
import { DICTIONARY_WINDOW_LOG, SKETCH_BLOCK, SUPER_FEATURES, sketch } from './resemblance.ts';

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
 * Compresses each span on its own, or (`joined`) all of them as one frame, as a pack does; a
 * joined frame with `refs` is compressed with their raw bytes as its dictionary, so what it
 * shares with them costs a few bytes. A joined frame's `singles` are also compressed on their
 * own (after the frame, in order) from the same read, so each new chunk is read and hashed once.
 * Chunks compressed on their own go to `files` (one per chunk, in order) when it is given: a
 * local store's, written from this thread. Digests are taken again from the very bytes compressed, so a file changed under us between
 * passes is caught instead of storing a chunk under the wrong name.
 */
function compressSpans(req: Extract<WorkerRequest, { op: 'compress' }>) {
  const { spans, level, joined, refs, singles } = req;
  const out: Uint8Array[] = [];
  const n = spans.length / 2;
  const digests = new Uint8Array(n * 32);
  let storedBytes = 0;
  const fd = openSync(req.path, 'r');
  try {
    // A joined frame reads its spans into one buffer, which the frame is compressed from.
    const total = joined ? spans.reduce((sum, v, k) => (k % 2 === 1 ? sum + v : sum), 0) : 0;
    const whole = joined ? Buffer.allocUnsafe(total) : null;
    let scratch = Buffer.allocUnsafe(joined ? 0 : 1 << 20);
    let at = 0;
    let written = 0;
    for (let i = 0; i < n; i++) {
      const length = spans[2 * i + 1]!;
      if (!whole && scratch.length < length) scratch = Buffer.allocUnsafe(length);
      const buf = readRange(fd, spans[2 * i]!, length, whole ? whole.subarray(at) : scratch);
      at += length;
      digests.set(hash('sha256', buf, 'buffer'), i * 32);
      if (joined && !singles?.[i]) continue;
      const single = compress(buf, req.singleLevel ?? level);
      const k = written++;
      const file = req.files?.[k];
      if (file === undefined) out.push(single);
      else if (digestHex(digests, i) === req.fileDigests?.[k]) {
        // A chunk that changed since the scan is not stored under its old name; the caller
        // finds the mismatch in the digests returned.
        writeChunkFile(file, single);
        storedBytes += single.length;
      }
    }
    if (whole) {
      const dictionary = refs && refs.digests.length > 0 ? Buffer.concat(rawChunks(refs)) : null;
      out.unshift(compress(whole, level, dictionary));
    }
  } finally {
    closeSync(fd);
  }
  return { compressed: out, digests, storedBytes };
}

function digestHex(digests: Uint8Array, i: number): string {
  return Buffer.from(digests.buffer, digests.byteOffset + i * 32, 32).toString('hex');
}

/**
 * Writes a chunk into its file of a local store, in place: every reader verifies chunks, and an
 * import finds a partial one from a crash and writes it again. A failed write leaves no file.
 */
function writeChunkFile(file: string, data: Uint8Array): void {
  try {
    writeFileSync(file, data, { mode: 0o644 });
  } catch (err) {
    try {
      unlinkSync(file);
    } catch {
      // Nothing was created.
    }
    throw err;
  }
}

/** The raw bytes of chunks as the store holds them, each checked against its digest. */
function rawChunks(chunks: StoredChunks): Buffer[] {
  const compressed =
    'files' in chunks
      ? chunks.files.map((f, i) => {
          try {
            return readFileSync(f);
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code ?? String(err);
            throw new Error(
              `cannot read chunk ${chunks.digests[i]!.slice(0, 16)}… of the store (${code}); \`bulkhead image verify\` the parent version`,
            );
          }
        })
      : chunks.compressed;
  return compressed.map((c, i) => {
    const length = chunks.lengths[i]!;
    const raw = zstdDecompressSync(c, { maxOutputLength: Math.max(1, length) });
    if (raw.length !== length || hash('sha256', raw) !== chunks.digests[i]) {
      throw new Error(`chunk ${chunks.digests[i]!.slice(0, 16)}… in the store is damaged`);
    }
    return raw;
  });
}

function compress(buf: Uint8Array, level: number, dictionary: Buffer | null = null): Uint8Array {
  const params: Record<number, number> = {
    [constants.ZSTD_c_compressionLevel]: level,
    [constants.ZSTD_c_checksumFlag]: 0,
    [constants.ZSTD_c_contentSizeFlag]: 1,
  };
  if (!dictionary) return zstdCompressSync(buf, { params });
  params[constants.ZSTD_c_windowLog] = DICTIONARY_WINDOW_LOG;
  return zstdCompressSync(buf, { params, dictionary });
}

/** Sketches of every SKETCH_BLOCK-byte block of each input (the last of each may be shorter). */
function sketchAll(inputs: Iterable<Uint8Array>, n: number) {
  const blocks = new Uint32Array(n);
  const sketches: Uint32Array[] = [];
  const sampled: number[] = [];
  let i = 0;
  for (const data of inputs) {
    for (let at = 0; at < data.length; at += SKETCH_BLOCK) {
      const s = sketch(data.subarray(at, at + SKETCH_BLOCK));
      sketches.push(s ?? new Uint32Array(SUPER_FEATURES));
      sampled.push(s ? 1 : 0);
      blocks[i]!++;
    }
    i++;
  }
  const all = new Uint32Array(sketches.length * SUPER_FEATURES);
  sketches.forEach((s, k) => all.set(s, k * SUPER_FEATURES));
  return { sketches: all, sampled: Uint8Array.from(sampled), blocks };
}

function* readSpans(path: string, spans: Float64Array): Generator<Buffer> {
  const fd = openSync(path, 'r');
  try {
    let scratch = Buffer.allocUnsafe(1 << 20);
    for (let i = 0; i < spans.length / 2; i++) {
      const length = spans[2 * i + 1]!;
      if (scratch.length < length) scratch = Buffer.allocUnsafe(length);
      yield readRange(fd, spans[2 * i]!, length, scratch);
    }
  } finally {
    closeSync(fd);
  }
}

/** SHA-256 of a file's first `size` bytes. */
function sha256Of(path: string, size: number): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(READ_SLICE);
    for (let pos = 0; pos < size; pos += READ_SLICE) {
      h.update(readRange(fd, pos, Math.min(READ_SLICE, size - pos), buf));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

function copyRanges(from: string, to: string, spans: Float64Array): void {
  const src = openSync(from, 'r');
  try {
    const dst = openSync(to, 'r+');
    try {
      let buf = Buffer.allocUnsafe(1 << 20);
      for (let i = 0; i < spans.length; i += 3) {
        const length = spans[i + 2]!;
        if (buf.length < length) buf = Buffer.allocUnsafe(length);
        const data = readRange(src, spans[i]!, length, buf);
        writeAll(dst, data, spans[i + 1]!);
      }
    } finally {
      closeSync(dst);
    }
  } finally {
    closeSync(src);
  }
}

function writeAll(fd: number, data: Uint8Array, offset: number): void {
  for (let done = 0; done < data.length;) {
    done += writeSync(fd, data, done, data.length - done, offset + done);
  }
}

function unpack(req: Extract<WorkerRequest, { op: 'unpack' }>) {
  const written = new Uint8Array(req.digests.length);
  let raw: Buffer;
  try {
    const parts = req.refs.map((r) => {
      const fd = openSync(r.path, 'r');
      try {
        return readRange(fd, r.offset, r.length);
      } finally {
        closeSync(fd);
      }
    });
    raw = zstdDecompressSync(req.frame, {
      maxOutputLength: Math.max(1, req.rawBytes),
      ...(parts.length > 0 ? { dictionary: Buffer.concat(parts) } : {}),
    });
  } catch {
    return { damaged: true, written };
  }
  if (raw.length !== req.rawBytes) return { damaged: true, written };
  const fd = openSync(req.out, 'r+');
  try {
    let pos = 0;
    for (let k = 0; k < req.digests.length; k++) {
      const chunk = raw.subarray(pos, pos + req.lengths[k]!);
      pos += req.lengths[k]!;
      if (req.at[k]!.length === 0) {
        written[k] = 2;
        continue;
      }
      if (hash('sha256', chunk) !== req.digests[k]) continue;
      for (const offset of req.at[k]!) writeAll(fd, chunk, offset);
      written[k] = 1;
    }
  } finally {
    closeSync(fd);
  }
  return { damaged: false, written };
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
      const r = compressSpans(req);
      return { res: { op: 'compress', ...r }, transfer: [r.digests.buffer] };
    }
    case 'copy':
      copyRanges(req.from, req.to, req.spans);
      return { res: { op: 'copy' }, transfer: [] };
    case 'unpack': {
      const r = unpack(req);
      return { res: { op: 'unpack', ...r }, transfer: [r.written.buffer] };
    }
    case 'sha256':
      return { res: { op: 'sha256', sha256: sha256Of(req.path, req.size) }, transfer: [] };
    case 'sketch': {
      const r =
        'chunks' in req
          ? sketchAll(rawChunks(req.chunks), req.chunks.digests.length)
          : sketchAll(readSpans(req.path, req.spans), req.spans.length / 2);
      return {
        res: { op: 'sketch', ...r },
        transfer: [r.sketches.buffer, r.sampled.buffer, r.blocks.buffer],
      };
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
