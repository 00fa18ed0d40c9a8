import { createHash } from 'node:crypto';
import { zstdDecompressSync } from 'node:zlib';
import {
  BulkheadError,
  ErrorCodes,
  errnoCode,
  isBulkheadError,
  type ManifestBody,
} from '../protocol/index.ts';
import { readCatalog, scanCatalog, type CatalogEntry } from './catalog.ts';
import type { ChunkEntry } from './chunk-index.ts';
import { forEachLimit, sha256File } from './digest-file.ts';
import type { PublicKeyInfo } from '../signing/index.ts';
import { manifestId, parseManifest } from './manifest.ts';
import { chooseFrames } from './pack-plan.ts';
import {
  readChunk,
  readIndex,
  readIndexFromParent,
  readManifest,
  readManifestBytes,
  readPackIndex,
  refPrefixes,
} from './read.ts';
import {
  DirectoryStore,
  chunkKey,
  indexDeltaKey,
  indexKey,
  manifestKey,
  packKey,
  type ChunkStore,
} from './store/index.ts';

/** A manifest as stored, verified when trusted keys are given. */
export async function inspectImage(
  store: ChunkStore,
  name: string,
  version: string,
  trusted: readonly PublicKeyInfo[],
): Promise<{ id: string; verified: boolean; signers: string[]; body: ManifestBody }> {
  if (trusted.length > 0) {
    const m = await readManifest(store, name, version, trusted);
    const raw = parseManifest(await readManifestBytes(store, name, version));
    return { id: m.id, verified: true, signers: raw.signatures.map((s) => s.keyid), body: m.body };
  }
  const bytes = await readManifestBytes(store, name, version);
  const m = parseManifest(bytes);
  return {
    id: manifestId(m.signed),
    verified: false,
    signers: m.signatures.map((s) => s.keyid),
    body: m.signed,
  };
}

/** Every image version a store holds. A directory is read directly; HTTP uses catalog.json. */
export async function listImages(store: ChunkStore): Promise<CatalogEntry[]> {
  if (!(store instanceof DirectoryStore)) return (await readCatalog(store)).images;
  if (!(await store.exists())) {
    throw new BulkheadError(ErrorCodes.OBJECT_NOT_FOUND, `there is no store at ${store.location}`, {
      hint: 'check the --store path; `bulkhead image import` creates a store',
    });
  }
  return scanCatalog(store);
}

export interface VerifyReport {
  ok: boolean;
  manifest: string;
  name: string;
  version: string;
  chunks: number;
  missing: string[];
  corrupt: string[];
  packs: { from: string; ok: boolean; problem?: string }[];
  file?: { path: string; ok: boolean; sha256: string };
}

/**
 * Checks an image version in a store end to end: signature, index, every chunk (present,
 * decompresses, matches its digest), every pack from its parent, and optionally a local file
 * against the manifest's image digest.
 */
export async function verifyImage(
  store: ChunkStore,
  name: string,
  version: string,
  trusted: readonly PublicKeyInfo[],
  options: { file?: string; onProgress?: (done: number, total: number) => void } = {},
): Promise<VerifyReport> {
  const m = await readManifest(store, name, version, trusted);
  const entries = await readIndex(store, m.body);
  const unique = uniqueChunks(entries);
  const missing: string[] = [];
  const corrupt: string[] = [];
  let done = 0;
  await forEachLimit([...unique], 8, async ([digest, length]) => {
    try {
      await readChunk(store, digest, length);
    } catch (err) {
      if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) missing.push(digest);
      else if (isBulkheadError(err, ErrorCodes.CHUNK_CORRUPT)) corrupt.push(digest);
      else throw err;
    }
    options.onProgress?.(++done, unique.size);
  });
  const packs: VerifyReport['packs'] = [];
  if (m.body.parent) {
    const from = m.body.parent.version;
    // The index of `from`, read once if the pack's references or the index delta need it; null
    // when `from` is gone from the store, and then what needs it is reported.
    let fromRead: Promise<ChunkEntry[] | null> | undefined;
    const fromEntries = () =>
      (fromRead ??= inspectAndIndex(store, name, from, trusted).then(
        (a) => a.entries,
        (err: unknown) => {
          if (isBulkheadError(err, ErrorCodes.IMAGE_NOT_FOUND)) return null;
          throw err;
        },
      ));
    const index = await readPackIndex(store, name, version, from, entries);
    if (index) {
      // Chunks of `from` that frames are compressed against.
      const needsFrom = index.frames.some((f) => f.refs.length > 0);
      const fromLengths = uniqueChunks((needsFrom ? await fromEntries() : null) ?? []);
      packs.push({ from, ...(await verifyPack(store, m.body, from, index, unique, fromLengths)) });
    }
    const problem = await verifyIndexDelta(store, m.body, from, fromEntries);
    if (problem !== null) {
      const pack = packs.find((p) => p.from === from);
      if (pack?.ok) Object.assign(pack, { ok: false, problem });
      else if (!pack) packs.push({ from, ok: false, problem });
    }
  }
  let file: VerifyReport['file'];
  if (options.file) {
    const path = options.file;
    const sha256 = await sha256File(path).catch((err: unknown) => {
      throw new BulkheadError(
        ErrorCodes.INPUT_UNREADABLE,
        `cannot read ${path}: ${errnoCode(err) ?? String(err)}`,
        {
          cause: err,
          hint: 'check the path given with --file',
        },
      );
    });
    file = { path: options.file, ok: sha256 === m.body.sha256, sha256 };
  }
  const ok =
    missing.length === 0 && corrupt.length === 0 && packs.every((p) => p.ok) && (file?.ok ?? true);
  return {
    ok,
    manifest: m.id,
    name,
    version,
    chunks: unique.size,
    missing,
    corrupt,
    packs,
    ...(file ? { file } : {}),
  };
}

/** What is wrong with the index's delta against `from`, if the store holds one. */
async function verifyIndexDelta(
  store: ChunkStore,
  body: ManifestBody,
  from: string,
  fromEntries: () => Promise<ChunkEntry[] | null>,
): Promise<string | null> {
  if (!(await store.has(indexDeltaKey(body.name, body.version, from)))) return null;
  const parent = await fromEntries();
  if (!parent) return null;
  let problem: string | null = null;
  const rebuilt = await readIndexFromParent(store, body, [parent], (w) => (problem = w));
  return rebuilt ? null : (problem ?? `the index's delta against ${from} was not read`);
}

async function verifyPack(
  store: ChunkStore,
  body: ManifestBody,
  from: string,
  index: NonNullable<Awaited<ReturnType<typeof readPackIndex>>>,
  lengths: Map<string, number>,
  fromLengths: ReadonlyMap<string, number>,
): Promise<{ ok: boolean; problem?: string }> {
  const key = packKey(body.name, body.version, from);
  const prefixes = refPrefixes(fromLengths.keys());
  for (const f of index.frames) {
    // A frame compressed against chunks of `from` needs them, from the store, to decode.
    const refs: Buffer[] = [];
    for (const p of f.refs) {
      const d = prefixes.get(p);
      const length = d ? fromLengths.get(d) : undefined;
      if (!d || length === undefined) {
        return {
          ok: false,
          problem: `frame at ${f.offset} is compressed against chunk ${p}…, which ${from} does not hold`,
        };
      }
      try {
        refs.push(await readChunk(store, d, length));
      } catch (err) {
        if (!isBulkheadError(err)) throw err;
        return { ok: false, problem: `frame at ${f.offset}: ${err.message}` };
      }
    }
    let raw: Buffer;
    try {
      raw = zstdDecompressSync(await store.readRange(key, f.offset, f.bytes), {
        maxOutputLength: Math.max(1, f.rawBytes),
        ...(refs.length > 0 ? { dictionary: Buffer.concat(refs) } : {}),
      });
    } catch {
      return { ok: false, problem: `frame at ${f.offset} does not decompress` };
    }
    let pos = 0;
    for (const digest of f.chunks) {
      const length = lengths.get(digest);
      if (length === undefined)
        return { ok: false, problem: `frame at ${f.offset} holds a chunk the image does not use` };
      if (
        createHash('sha256')
          .update(raw.subarray(pos, pos + length))
          .digest('hex') !== digest
      ) {
        return {
          ok: false,
          problem: `chunk ${digest.slice(0, 16)}… in the frame at ${f.offset} is corrupt`,
        };
      }
      pos += length;
    }
  }
  return { ok: true };
}

export interface DiffReport {
  from: string;
  to: string;
  /** Distinct chunks of `to` that `from` does not have. */
  newChunks: number;
  newRawBytes: number;
  /** What a holder of `from` downloads: manifest + index + pack frames + single chunks. */
  downloadBytes: number;
  manifestBytes: number;
  indexBytes: number;
  packBytes: number;
  singleChunkBytes: number;
  /** Whether a pack from `from` exists and was used in the estimate. */
  usesPack: boolean;
}

/** The bytes a PC holding version A must download to get version B, from a directory store. */
export async function diffImages(
  store: DirectoryStore,
  name: string,
  from: string,
  to: string,
  trusted: readonly PublicKeyInfo[],
): Promise<DiffReport> {
  const a = await inspectAndIndex(store, name, from, trusted);
  const b = await inspectAndIndex(store, name, to, trusted);
  const have = new Set(a.entries.map((e) => e.digest));
  const wanted = uniqueChunks(b.entries);
  for (const d of [...wanted.keys()]) if (have.has(d)) wanted.delete(d);
  const missing = new Set(wanted.keys());
  const newRawBytes = [...wanted.values()].reduce((n, l) => n + l, 0);
  const manifestBytes = await store.sizeOf(manifestKey(name, to));
  const indexBytes = await store.sizeOf(indexKey(b.body.index.digest));
  let packBytes = 0;
  let usesPack = false;
  const pack =
    b.body.parent?.version === from ? await readPackIndex(store, name, to, from, b.entries) : null;
  if (pack) {
    // A holder of `from` has every chunk a frame can be compressed against.
    const held = refPrefixes(a.entries.flatMap((e) => (e.digest ? [e.digest] : [])));
    const decodable = pack.frames.filter((f) => f.refs.every((p) => held.get(p)));
    for (const f of chooseFrames(decodable, missing, wanted)) {
      usesPack = true;
      packBytes += f.bytes;
      for (const d of f.chunks) missing.delete(d);
    }
  }
  let singleChunkBytes = 0;
  for (const d of missing) singleChunkBytes += await store.sizeOf(chunkKey(d));
  return {
    from,
    to,
    newChunks: wanted.size,
    newRawBytes,
    downloadBytes: manifestBytes + indexBytes + packBytes + singleChunkBytes,
    manifestBytes,
    indexBytes,
    packBytes,
    singleChunkBytes,
    usesPack,
  };
}

async function inspectAndIndex(
  store: ChunkStore,
  name: string,
  version: string,
  trusted: readonly PublicKeyInfo[],
) {
  const { body } =
    trusted.length > 0
      ? await readManifest(store, name, version, trusted)
      : await inspectImage(store, name, version, []);
  return { body, entries: await readIndex(store, body) };
}

function uniqueChunks(entries: ChunkEntry[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of entries) if (e.digest !== null) m.set(e.digest, e.length);
  return m;
}
