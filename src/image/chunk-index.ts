import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

/**
 * The chunk index of one image version, in order. Offsets are implicit (the sum of the
 * lengths before), so the encoding is compact:
 *
 *   "BHIX" u8 version(=1) u8 reserved(=0) varint(entries)
 *   entries × ( varint(length·2 + isHole) [32-byte SHA-256 unless a hole] )
 *
 * The encoded bytes are stored zstd-compressed under their own SHA-256, which the signed
 * manifest names, so the index is as trustworthy as the manifest.
 */
export interface ChunkEntry {
  offset: number;
  length: number;
  /** Hex SHA-256 of the chunk's uncompressed bytes, or null for a hole of zeros. */
  digest: string | null;
}

const MAGIC = Buffer.from('BHIX', 'latin1');

export function encodeChunkIndex(entries: readonly ChunkEntry[]): Buffer {
  const parts: Buffer[] = [MAGIC, Buffer.from([1, 0]), varint(entries.length)];
  let expected = 0;
  for (const e of entries) {
    if (e.offset !== expected)
      throw new RangeError(`chunk at ${e.offset} does not follow ${expected}`);
    if (e.length <= 0) throw new RangeError(`chunk at ${e.offset} has length ${e.length}`);
    parts.push(varint(e.length * 2 + (e.digest === null ? 1 : 0)));
    if (e.digest !== null) parts.push(Buffer.from(e.digest, 'hex'));
    expected += e.length;
  }
  return Buffer.concat(parts);
}

/**
 * Decodes and checks an index against the image size the manifest states: every entry in
 * range, nothing left over. Throws ERR_INDEX_CORRUPT naming what is wrong.
 */
export function decodeChunkIndex(bytes: Uint8Array, imageSize: number): ChunkEntry[] {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fail = (what: string) =>
    new BulkheadError(ErrorCodes.INDEX_CORRUPT, `chunk index is corrupt: ${what}`, {
      hint: 'the store holds a damaged index; re-import the image or use another mirror',
    });
  if (buf.length < 7 || !buf.subarray(0, 4).equals(MAGIC)) throw fail('bad magic');
  if (buf[4] !== 1) throw fail(`unsupported format version ${buf[4]}`);
  let pos = 6;
  const readVarint = (): number => {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      if (pos >= buf.length) throw fail('truncated');
      const byte = buf[pos++]!;
      value += (byte & 0x7f) * scale;
      if ((byte & 0x80) === 0) {
        if (!Number.isSafeInteger(value)) throw fail('number out of range');
        return value;
      }
      scale *= 128;
    }
    throw fail('number too long');
  };
  const count = readVarint();
  // Each entry takes at least one byte: a count beyond that is a lie, not an allocation.
  if (count > buf.length) throw fail(`claims ${count} entries in ${buf.length} bytes`);
  const entries: ChunkEntry[] = new Array(count);
  let offset = 0;
  for (let i = 0; i < count; i++) {
    const v = readVarint();
    const length = Math.floor(v / 2);
    const isHole = v % 2 === 1;
    if (length === 0) throw fail(`entry ${i} has length 0`);
    if (offset + length > imageSize) throw fail(`entry ${i} ends past the image size ${imageSize}`);
    let digest: string | null = null;
    if (!isHole) {
      if (pos + 32 > buf.length) throw fail('truncated');
      digest = buf.toString('hex', pos, pos + 32);
      pos += 32;
    }
    entries[i] = { offset, length, digest };
    offset += length;
  }
  if (pos !== buf.length) throw fail(`${buf.length - pos} unexpected trailing bytes`);
  if (offset !== imageSize) throw fail(`entries cover ${offset} bytes, the image has ${imageSize}`);
  return entries;
}

function varint(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}
