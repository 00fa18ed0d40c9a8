import { createHash } from 'node:crypto';
import { zstdDecompressSync } from 'node:zlib';
import {
  BulkheadError,
  ErrorCodes,
  MAX_MANIFEST_BYTES,
  MAX_PACK_INDEX_BYTES,
  PackIndexSchema,
  REF_PREFIX_HEX,
  isBulkheadError,
  type ManifestBody,
  type PackFrame,
  type PackIndex,
} from '../protocol/index.ts';
import { decodeChunkIndex, encodeChunkIndex, type ChunkEntry } from './chunk-index.ts';
import type { PublicKeyInfo } from '../signing/index.ts';
import { parseManifest, verifyManifest } from './manifest.ts';
import {
  chunkKey,
  indexDeltaKey,
  indexKey,
  manifestKey,
  packIndexKey,
  type ChunkStore,
} from './store/index.ts';

/** Reads a manifest's bytes, unverified; a missing one is ERR_IMAGE_NOT_FOUND. */
export async function readManifestBytes(
  store: ChunkStore,
  name: string,
  version: string,
): Promise<Buffer> {
  try {
    return await store.read(manifestKey(name, version), MAX_MANIFEST_BYTES);
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) {
      throw new BulkheadError(
        ErrorCodes.IMAGE_NOT_FOUND,
        `image ${name}@${version} is not in the store ${store.location}`,
        {
          cause: err,
          hint: '`bulkhead image list --store …` shows what the store holds',
        },
      );
    }
    throw err;
  }
}

/** Reads and verifies a manifest; a missing one is ERR_IMAGE_NOT_FOUND. */
export async function readManifest(
  store: ChunkStore,
  name: string,
  version: string,
  trusted: readonly PublicKeyInfo[],
): Promise<{ body: ManifestBody; id: string; bytes: number }> {
  const bytes = await readManifestBytes(store, name, version);
  return { ...verifyManifest(bytes, trusted, { name, version }), bytes: bytes.length };
}

/** Reads the chunk index a (verified) manifest names and checks it against the manifest. */
export async function readIndex(store: ChunkStore, body: ManifestBody): Promise<ChunkEntry[]> {
  const { digest, bytes } = body.index;
  const compressed = await store.read(indexKey(digest), bytes + 64 * 1024);
  const raw = decompress(
    compressed,
    bytes,
    () =>
      new BulkheadError(
        ErrorCodes.INDEX_CORRUPT,
        `chunk index ${digest.slice(0, 16)}… of ${body.name}@${body.version} in ${store.location} does not decompress to ${bytes} bytes`,
        {
          hint: 'the store holds a damaged index; re-import the image or use another mirror',
        },
      ),
  );
  if (createHash('sha256').update(raw).digest('hex') !== digest) {
    throw new BulkheadError(
      ErrorCodes.INDEX_CORRUPT,
      `chunk index of ${body.name}@${body.version} in ${store.location} does not match the digest the signed manifest names (tampered or damaged)`,
      {
        hint: 'do not use this store or mirror; re-import the image or use another one',
      },
    );
  }
  return decodeChunkIndex(raw, body.size);
}

/**
 * The chunk index of a (verified) manifest rebuilt from its delta against the parent's index,
 * when one of `seeds` (chunk entries of local images, cut with this version's chunker) is the
 * parent: its index is then the dictionary the delta was compressed with. Null when no seed is
 * the parent or the store has no delta; a delta that does not decode to the index the signed
 * manifest names is reported through `onWarning` and null returned, so the caller reads the
 * whole index instead.
 */
export async function readIndexFromParent(
  store: ChunkStore,
  body: ManifestBody,
  seeds: readonly (readonly ChunkEntry[])[],
  onWarning?: (message: string) => void,
): Promise<ChunkEntry[] | null> {
  const parent = body.parent;
  if (!parent || seeds.length === 0) return null;
  const missing = (err: unknown) => {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) return null;
    if (isBulkheadError(err, ErrorCodes.IMAGE_NOT_FOUND)) return null;
    throw err;
  };
  // The parent's manifest only says which index to look for; what is rebuilt is checked against
  // this version's signed manifest.
  const parentBytes = await readManifestBytes(store, body.name, parent.version).catch(missing);
  if (!parentBytes) return null;
  let parentDigest: string;
  try {
    parentDigest = parseManifest(parentBytes).signed.index.digest;
  } catch {
    return null;
  }
  const dictionary = seeds
    .map((entries) => encodeChunkIndex(entries))
    .find((raw) => createHash('sha256').update(raw).digest('hex') === parentDigest);
  if (!dictionary) return null;
  const key = indexDeltaKey(body.name, body.version, parent.version);
  const delta = await store.read(key, body.index.bytes + 64 * 1024).catch(missing);
  if (!delta) return null;
  let raw: Buffer | null = null;
  try {
    raw = zstdDecompressSync(delta, { dictionary, maxOutputLength: Math.max(1, body.index.bytes) });
  } catch {
    // damaged: reported below
  }
  if (
    raw === null ||
    raw.length !== body.index.bytes ||
    createHash('sha256').update(raw).digest('hex') !== body.index.digest
  ) {
    onWarning?.(
      `${key} in ${store.location} does not rebuild the chunk index the signed manifest names; reading the whole index`,
    );
    return null;
  }
  return decodeChunkIndex(raw, body.size);
}

/** Reads one chunk, decompresses it and checks its digest. */
export async function readChunk(
  store: ChunkStore,
  digest: string,
  length: number,
): Promise<Buffer> {
  const compressed = await store.read(chunkKey(digest), zstdBound(length));
  const raw = decompress(compressed, length, () => corruptChunk(digest, store.location));
  if (createHash('sha256').update(raw).digest('hex') !== digest)
    throw corruptChunk(digest, store.location);
  return raw;
}

export function corruptChunk(digest: string, location: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.CHUNK_CORRUPT,
    `chunk ${digest.slice(0, 16)}… from ${location} does not match its digest (tampered or damaged); it was not used`,
    {
      hint: 'use another mirror, or re-import the image into this store; chunks already verified are kept',
    },
  );
}

/**
 * Reads a pack index if the store has one for `from` → `version`, its frames as readers use them
 * (chunks by digest, from the version's signed `entries`); null otherwise.
 */
export async function readPackIndex(
  store: ChunkStore,
  name: string,
  version: string,
  from: string,
  entries: readonly ChunkEntry[],
): Promise<{ formatVersion: number; frames: PackFrame[] } | null> {
  let bytes: Buffer;
  try {
    bytes = await store.read(packIndexKey(name, version, from), MAX_PACK_INDEX_BYTES);
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) return null;
    throw err;
  }
  let parsed: PackIndex;
  try {
    parsed = PackIndexSchema.parse(JSON.parse(bytes.toString('utf8')));
  } catch {
    // A bad pack index only costs the fast path: chunks are fetched one by one instead.
    return null;
  }
  if (parsed.name !== name || parsed.version !== version || parsed.from !== from) return null;
  if (parsed.formatVersion === 1) {
    return { formatVersion: 1, frames: parsed.frames.map((f) => ({ ...f, refs: [] })) };
  }
  const frames = parsed.frames.map((f) => {
    let at = -1;
    // A position off the index, or at a hole, names no chunk: the frame is inconsistent.
    const chunks = f.at.map((step) => entries[(at += step)]?.digest ?? '');
    return { offset: f.offset, bytes: f.bytes, rawBytes: f.rawBytes, chunks, refs: f.refs };
  });
  return { formatVersion: 2, frames };
}

/** Where each reference prefix leads among `digests`; null where two chunks share it. */
export function refPrefixes(digests: Iterable<string>): Map<string, string | null> {
  const out = new Map<string, string | null>();
  for (const d of digests) {
    const p = d.slice(0, REF_PREFIX_HEX);
    const seen = out.get(p);
    out.set(p, seen === undefined || seen === d ? d : null);
  }
  return out;
}

/** Largest compressed size zstd may produce for `length` bytes, with room for framing. */
export function zstdBound(length: number): number {
  return length + (length >> 7) + 1024;
}

/**
 * Decompresses exactly `length` bytes, with the raw-content `dictionary` a pack frame was
 * compressed against if any; anything else (or a bomb) is the given error.
 */
export function decompress(
  data: Uint8Array,
  length: number,
  error: () => BulkheadError,
  dictionary?: Buffer,
): Buffer {
  let raw: Buffer;
  try {
    raw = zstdDecompressSync(data, {
      maxOutputLength: Math.max(1, length),
      ...(dictionary ? { dictionary } : {}),
    });
  } catch {
    throw error();
  }
  if (raw.length !== length) throw error();
  return raw;
}
