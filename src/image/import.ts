import { randomBytes, createHash, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { constants, zstdCompress } from 'node:zlib';
import {
  BulkheadError,
  ErrorCodes,
  isBulkheadError,
  type ChunkerParams,
  type ManifestBody,
  REF_PREFIX_HEX,
  type PackFrame,
  type PackIndex,
} from '../protocol/index.ts';
import { rebuildCatalog, scanCatalog } from './catalog.ts';
import { encodeChunkIndex, type ChunkEntry } from './chunk-index.ts';
import { DEFAULT_CHUNKER } from './chunker.ts';
import { forEachLimit } from './digest-file.ts';
import { workerWriteError, writeError } from './fs-errors.ts';
import { encodeManifest, manifestId, parseManifest, signManifest } from './manifest.ts';
import { WorkerPool, type WorkerRequest } from './pool.ts';
import { readChunk, readIndex, readManifestBytes, refPrefixes } from './read.ts';
import { MAX_DICTIONARY_BYTES } from './resemblance.ts';
import {
  chooseReferences,
  readSketches,
  sketchFromFile,
  sketchFromStore,
  storedChunks,
  writeSketches,
  type Sketches,
} from './sketches.ts';
import { scanImage } from './scan.ts';
import { openRawSource } from './source.ts';
import {
  chunkKey,
  indexDeltaKey,
  indexKey,
  manifestKey,
  packIndexKey,
  packKey,
  type WritableChunkStore,
} from './store/index.ts';

export interface ImportProgress {
  phase: 'scan' | 'digest' | 'store' | 'pack';
  doneBytes: number;
  totalBytes: number;
}

export interface ImportOptions {
  /** The image file: raw, or any format qemu-img reads. */
  file: string;
  store: WritableChunkStore;
  name: string;
  version: string;
  /** Publisher key that signs the manifest. */
  key: { key: KeyObject; keyid: string };
  /**
   * Version this one follows. `undefined`: the newest version of the same name in the store;
   * `null`: none. A pack of the new chunks since the parent is built when there is one.
   */
  parent?: string | null;
  chunker?: ChunkerParams;
  /** Input format; detected from the file's magic bytes when absent. */
  format?: string;
  /** Build the pack from the parent (default true); without it PCs fetch new chunks singly. */
  pack?: boolean;
  /** zstd level of chunks stored one by one (fast: it bounds import throughput). */
  chunkLevel?: number;
  /** zstd level of pack frames; default DEFAULT_PACK_LEVEL. */
  packLevel?: number;
  /** Raw bytes per pack frame: bigger compresses better, smaller wastes less on a partial fetch. */
  packFrameBytes?: number;
  /**
   * Compress each pack frame against the parent's chunks its chunks resemble (default true): a
   * PC holding the parent has them, and most of a patch's new chunks are near-copies of them.
   */
  delta?: boolean;
  tempDir?: string;
  pool?: WorkerPool;
  now?: () => Date;
  onProgress?: (p: ImportProgress) => void;
}

export interface ImportResult {
  manifest: string;
  name: string;
  version: string;
  size: number;
  sha256: string;
  format: string;
  chunks: number;
  uniqueChunks: number;
  dataBytes: number;
  zeroBytes: number;
  /** Chunks the store did not hold before. */
  newChunks: number;
  newBytes: number;
  /** Compressed bytes written for new chunks. */
  storedBytes: number;
  indexBytes: number;
  /** The index compressed against the parent's, what a PC holding the parent fetches. */
  indexDeltaBytes: number | null;
  parent: string | null;
  pack: {
    from: string;
    chunks: number;
    rawBytes: number;
    bytes: number;
    frames: number;
    /** Chunks compressed against a resembling chunk of the parent, and those references. */
    deltaChunks: number;
    refs: number;
    seconds: number;
  } | null;
  seconds: number;
}

const BATCH_BYTES = 16 * 1024 * 1024;

/**
 * zstd level of packs, chosen by the trade-off curve of bench/RESULTS.md. Frames compressed
 * against the chunks they resemble get most of their gain from the references: on a desktop
 * image's monthly upgrade level 9 is within 1 % of level 12's bytes at half its time, while
 * level 6 sends 44 % more; the levels above 12 cost several times the import for a few %.
 */
export const DEFAULT_PACK_LEVEL = 9;

/**
 * zstd levels of the chunk index: its digests do not compress, so level 19 saved 3 % over level
 * 9 at 25 times the time (1.4 s on a 2 GiB desktop image). Against the parent's index, level 12
 * is within 2 % of level 19 at a sixth of its time.
 */
const INDEX_LEVEL = 9;
const INDEX_DELTA_LEVEL = 12;

const zstdCompressAsync = promisify(zstdCompress);

/**
 * Compresses a chunk index on libuv's threads while the import goes on: alone, or with the
 * parent's raw index as its dictionary (window enough for both, up to what decoders accept).
 */
function compressIndex(raw: Buffer, level: number, parentRaw?: Buffer): Promise<Buffer> {
  const params: Record<number, number> = { [constants.ZSTD_c_compressionLevel]: level };
  if (!parentRaw) return zstdCompressAsync(raw, { params });
  const span = Math.ceil(Math.log2(raw.length + parentRaw.length + 1));
  params[constants.ZSTD_c_windowLog] = Math.min(27, Math.max(20, span));
  return zstdCompressAsync(raw, { params, dictionary: parentRaw });
}

export async function importImage(opts: ImportOptions): Promise<ImportResult> {
  const started = performance.now();
  const { store, name, version } = opts;
  const chunker = opts.chunker ?? DEFAULT_CHUNKER;
  const now = opts.now ?? (() => new Date());
  const mKey = manifestKey(name, version);
  if (await store.has(mKey)) {
    throw new BulkheadError(
      ErrorCodes.IMAGE_EXISTS,
      `${name}@${version} is already in the store ${store.location}`,
      {
        hint: 'image versions are immutable: import under a new version',
      },
    );
  }
  const parent = await resolveParent(store, name, opts.parent);
  const tempDir = opts.tempDir ?? tmpdir();
  const source = await openRawSource(opts.file, tempDir, opts.format);
  const pool = opts.pool ?? new WorkerPool();
  try {
    const { path, size } = source;
    const progress = opts.onProgress;
    // The whole-image digest streams on a thread of its own while the workers chunk: this one
    // has the store's files to write.
    const digestPool = new WorkerPool(1);
    const imageDigest = digestPool
      .run({ op: 'sha256', path, size })
      .then((r) => r.sha256)
      .finally(() => digestPool.close());
    imageDigest.catch(() => {});
    const entries = await scanImage(path, size, chunker, pool, (p) => progress?.({ ...p }));

    // Chunks of the parent are in the store and whole: its manifest was published only after
    // they were on stable storage. Others found there are checked before being trusted.
    const parentEntries = parent ? await readIndex(store, parent.body) : [];
    const published = new Set(parentEntries.map((e) => e.digest));
    // The index is known from here on: it compresses beside the work below.
    const indexBytes = encodeChunkIndex(entries);
    const compressedIndex = compressIndex(indexBytes, INDEX_LEVEL);
    const indexDelta =
      parent && opts.pack !== false
        ? compressIndex(indexBytes, INDEX_DELTA_LEVEL, encodeChunkIndex(parentEntries))
        : null;
    for (const p of [compressedIndex, indexDelta]) p?.catch(() => {});
    // What each chunk resembles: for this pack's references and the next version's.
    const sketches =
      opts.delta !== false
        ? sketchVersion(store, pool, path, name, parent?.body.version ?? null, entries)
        : null;
    // Awaited below; a failure before then must not go unhandled.
    sketches?.catch(() => {});
    const missing = await missingChunks(entries, store, published);
    const singles = new SingleWriter(store, missing, progress);
    // The pack's chunks are stored singly from the same read as their frame (each new chunk is
    // read and hashed once); the rest of what the store lacks, on its own.
    const packed = parent && opts.pack !== false ? chunksSince(entries, parentEntries) : null;
    const inPack = new Set(packed?.map((e) => e.digest));
    const [, pack] = await Promise.all([
      storeChunks(
        missing.filter((e) => !inPack.has(e.digest)),
        path,
        pool,
        opts.chunkLevel ?? 3,
        singles,
      ),
      parent && packed
        ? buildPack({
            store,
            pool,
            path,
            name,
            version,
            from: parent.body.version,
            entries,
            parentEntries,
            wanted: packed,
            level: opts.packLevel ?? DEFAULT_PACK_LEVEL,
            singleLevel: opts.chunkLevel ?? 3,
            singles,
            frameBytes: opts.packFrameBytes ?? 8 * 1024 * 1024,
            sketches,
            tempDir,
            onProgress: progress,
          })
        : null,
    ]);
    const stored = singles.done();
    const sha256 = await imageDigest;
    if (sketches) await writeSketches(store, name, version, (await sketches).own);

    const indexDigest = createHash('sha256').update(indexBytes).digest('hex');
    const indexObject = await compressedIndex;
    await store.write(indexKey(indexDigest), indexObject);
    // Written only where it saves bytes; a PC without it fetches the whole index.
    const delta = await indexDelta;
    const keepDelta = parent !== null && delta !== null && delta.length < indexObject.length;
    if (keepDelta) await store.write(indexDeltaKey(name, version, parent.body.version), delta);

    const dataEntries = entries.filter((e) => e.digest !== null);
    const body: ManifestBody = {
      type: 'bulkhead.image-manifest',
      formatVersion: 1,
      name,
      version,
      size,
      sha256,
      created: now().toISOString(),
      chunker,
      index: { digest: indexDigest, bytes: indexBytes.length, entries: entries.length },
      stats: {
        chunks: dataEntries.length,
        uniqueChunks: new Set(dataEntries.map((e) => e.digest)).size,
        dataBytes: dataEntries.reduce((n, e) => n + e.length, 0),
        zeroBytes: entries.reduce((n, e) => n + (e.digest === null ? e.length : 0), 0),
      },
      parent: parent ? { version: parent.body.version, manifest: parent.id } : null,
    };
    // Point of publication: every chunk, the index and the pack are on stable storage before
    // the manifest that names them appears. A crash before here leaves only unreferenced files.
    await store.sync();
    await store.write(mKey, encodeManifest(signManifest(body, opts.key)), { durable: true });
    await rebuildCatalog(store);
    return {
      manifest: manifestId(body),
      name,
      version,
      size,
      sha256,
      format: source.format,
      chunks: body.stats.chunks,
      uniqueChunks: body.stats.uniqueChunks,
      dataBytes: body.stats.dataBytes,
      zeroBytes: body.stats.zeroBytes,
      newChunks: stored.newChunks,
      newBytes: stored.newBytes,
      storedBytes: stored.storedBytes,
      indexBytes: indexObject.length,
      indexDeltaBytes: keepDelta ? delta.length : null,
      parent: parent?.body.version ?? null,
      pack,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    if (!opts.pool) await pool.close();
    await source.dispose();
  }
}

/** The parent's manifest: the one asked for, or by default the newest of the same name. */
async function resolveParent(
  store: WritableChunkStore,
  name: string,
  wanted: string | null | undefined,
): Promise<{ body: ManifestBody; id: string } | null> {
  if (wanted === null) return null;
  const version =
    wanted ?? (await scanCatalog(store)).filter((i) => i.name === name).at(-1)?.version;
  if (version === undefined) return null;
  const bytes = await readManifestBytes(store, name, version).catch((err: unknown) => {
    throw new BulkheadError(
      ErrorCodes.IMAGE_NOT_FOUND,
      `parent ${name}@${version} is not in the store ${store.location}`,
      {
        cause: err,
        hint: 'import the parent first, or leave out --parent',
      },
    );
  });
  const body = parseManifest(bytes).signed;
  return { body, id: manifestId(body) };
}

/**
 * The distinct chunks of the image the store lacks, first occurrence of each. Chunks are written
 * in place (not via rename), so one already in the store that no published manifest vouches for
 * counts only when it reads back right: a partial file from a crash is found here and rewritten.
 */
async function missingChunks(
  entries: ChunkEntry[],
  store: WritableChunkStore,
  published: ReadonlySet<string | null>,
): Promise<ChunkEntry[]> {
  const unique = firstOfEach(entries).filter((e) => !published.has(e.digest));
  // In a local store a file's absence is told without a failed open and its error object for
  // each of a patch's new chunks.
  const local = store.localPath?.bind(store);
  const present = new Array<boolean>(unique.length).fill(false);
  await forEachLimit(unique, 64, async (e, i) => {
    if (local && !existsSync(local(chunkKey(e.digest!)))) return;
    try {
      await readChunk(store, e.digest!, e.length);
      present[i] = true;
    } catch (err) {
      const healable =
        isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND) ||
        isBulkheadError(err, ErrorCodes.CHUNK_CORRUPT);
      if (!healable) throw err;
    }
  });
  return unique.filter((_, i) => !present[i]);
}

/** The error for a chunk whose bytes changed between the scan and a later read. */
function inputChanged(e: ChunkEntry): BulkheadError {
  return new BulkheadError(
    ErrorCodes.INPUT_UNREADABLE,
    `the input image changed while it was being imported (at byte ${e.offset})`,
    {
      hint: 'import an image that nothing is writing to (shut its VM down first)',
    },
  );
}

/** Writes the chunks the store lacks, each compressed on its own, and counts them. */
class SingleWriter {
  private readonly store: WritableChunkStore;
  private readonly missing: readonly ChunkEntry[];
  private readonly progress: ImportOptions['onProgress'];
  private readonly wanted: Set<string>;
  private readonly totalBytes: number;
  private doneBytes = 0;
  private storedBytes = 0;

  constructor(
    store: WritableChunkStore,
    missing: readonly ChunkEntry[],
    progress: ImportOptions['onProgress'],
  ) {
    this.store = store;
    this.missing = missing;
    this.progress = progress;
    this.wanted = new Set(missing.map((e) => e.digest!));
    this.totalBytes = missing.reduce((n, e) => n + e.length, 0);
  }

  /** Whether the store lacks this chunk. */
  has(digest: string): boolean {
    return this.wanted.has(digest);
  }

  /**
   * Runs a compress request over `batch` and stores the chunks it marks as single (all of them
   * unless it is a joined frame). In a local store the worker writes their files itself, with no
   * round trip through this thread per chunk. Returns the joined frame, if any.
   */
  async compress(
    pool: WorkerPool,
    req: Omit<Extract<WorkerRequest, { op: 'compress' }>, 'files' | 'fileDigests'>,
    batch: readonly ChunkEntry[],
    options: { background?: boolean } = {},
  ): Promise<Uint8Array | undefined> {
    const own = req.joined ? batch.filter((_, k) => req.singles?.[k] === 1) : batch;
    const forWrite = this.store.localPathForWrite?.bind(this.store);
    const files =
      forWrite && own.length > 0
        ? await Promise.all(own.map((e) => forWrite(chunkKey(e.digest!))))
        : undefined;
    const fileDigests = files && own.map((e) => e.digest!);
    const r = await pool.run({ ...req, files, fileDigests }, options).catch((err: unknown) => {
      throw workerWriteError(err, files ? dirname(files[0]!) : req.path);
    });
    batch.forEach((e, k) => {
      const digest = Buffer.from(r.digests.subarray(k * 32, k * 32 + 32)).toString('hex');
      if (digest !== e.digest) throw inputChanged(e);
    });
    const frame = req.joined ? r.compressed.shift() : undefined;
    if (files) this.storedBytes += r.storedBytes;
    else {
      await forEachLimit(own, 16, async (e, k) => {
        const data = r.compressed[k]!;
        await this.store.write(chunkKey(e.digest!), data, { atomic: false });
        this.storedBytes += data.length;
      });
    }
    this.doneBytes += own.reduce((n, e) => n + e.length, 0);
    this.progress?.({ phase: 'store', doneBytes: this.doneBytes, totalBytes: this.totalBytes });
    return frame;
  }

  done() {
    return {
      newChunks: this.missing.length,
      newBytes: this.totalBytes,
      storedBytes: this.storedBytes,
    };
  }
}

async function storeChunks(
  missing: ChunkEntry[],
  path: string,
  pool: WorkerPool,
  level: number,
  singles: SingleWriter,
): Promise<void> {
  const batches = cutRuns(missing, BATCH_BYTES);
  await forEachLimit(batches, pool.size * 2, async (b) => {
    const spans = new Float64Array(b.flatMap((e) => [e.offset, e.length]));
    await singles.compress(pool, { op: 'compress', path, spans, level, joined: false }, b);
  });
}

interface PackInput {
  store: WritableChunkStore;
  pool: WorkerPool;
  path: string;
  name: string;
  version: string;
  from: string;
  entries: ChunkEntry[];
  parentEntries: ChunkEntry[];
  /** The chunks a holder of `from` lacks, in image order. */
  wanted: ChunkEntry[];
  level: number;
  /** The level of chunks stored singly, and where they go. */
  singleLevel: number;
  singles: SingleWriter;
  frameBytes: number;
  /** Sketches of this version's chunks and its parent's, when the pack is delta-encoded. */
  sketches: Promise<VersionSketches> | null;
  tempDir: string;
  onProgress?: ImportOptions['onProgress'];
}

/**
 * Builds the pack from `from` to this version: the chunks a holder of `from` lacks, in image
 * order (neighbours compress together), cut into zstd frames so a reader can fetch just the
 * frames it needs with HTTP range requests.
 */
async function buildPack(p: PackInput): Promise<NonNullable<ImportResult['pack']>> {
  const started = performance.now();
  const { wanted } = p;
  // Frames of about frameBytes, their count a multiple of the workers so that the last round
  // of compression keeps every core busy.
  const rawTotal = wanted.reduce((n, e) => n + e.length, 0);
  const workers = p.pool.size;
  const count = Math.max(1, Math.ceil(Math.round(rawTotal / p.frameBytes) / workers) * workers);
  const target = Math.ceil(rawTotal / count);
  const frames = cutRuns(wanted, target);
  const refOf = p.sketches ? await referencesOf(p, wanted, await p.sketches) : new Map();

  await mkdir(p.tempDir, { recursive: true });
  const tmp = join(p.tempDir, `pack-${randomBytes(6).toString('hex')}`);
  const fh = await open(tmp, 'w', 0o644).catch((err: unknown) => {
    throw writeError(err, tmp);
  });
  const packHash = createHash('sha256');
  const totalBytes = rawTotal;
  let doneBytes = 0;
  try {
    // The references of each frame: the parent's chunks its chunks resemble, once each, named
    // by a prefix of their digest that no other chunk of the parent shares.
    const prefixes = refPrefixes(p.parentEntries.flatMap((e) => (e.digest ? [e.digest] : [])));
    const frameRefs = frames.map((f) => {
      const refs = new Set<string>();
      let bytes = 0;
      for (const r of f.flatMap((e) => refOf.get(e.digest!) ?? [])) {
        if (refs.has(r.digest!) || bytes + r.length > MAX_DICTIONARY_BYTES) continue;
        if (prefixes.get(r.digest!.slice(0, REF_PREFIX_HEX)) !== r.digest) continue;
        refs.add(r.digest!);
        bytes += r.length;
      }
      return [...refs];
    });
    const lengthOf = new Map(p.parentEntries.map((e) => [e.digest, e.length]));
    // Compress frames in parallel but append them in order.
    // Its chunks the store lacks are stored singly as each frame comes back.
    const compressed = frames.map(async (f, i) => {
      const frame = await p.singles.compress(
        p.pool,
        {
          op: 'compress',
          path: p.path,
          spans: new Float64Array(f.flatMap((e) => [e.offset, e.length])),
          level: p.level,
          joined: true,
          refs: await storedChunks(p.store, frameRefs[i]!, lengthOf),
          singles: Uint8Array.from(f, (e) => (p.singles.has(e.digest!) ? 1 : 0)),
          singleLevel: p.singleLevel,
        },
        f,
        { background: true },
      );
      return frame!;
    });
    // Frames complete in any order; a failure of one must not go unhandled while an earlier
    // one is awaited.
    for (const c of compressed) c.catch(() => {});
    const written: PackFrame[] = [];
    let offset = 0;
    for (let i = 0; i < frames.length; i++) {
      const data = await compressed[i]!;
      try {
        await fh.write(data);
      } catch (err) {
        throw writeError(err, tmp);
      }
      packHash.update(data);
      const f = frames[i]!;
      written.push({
        offset,
        bytes: data.length,
        rawBytes: f.reduce((n, e) => n + e.length, 0),
        chunks: f.map((e) => e.digest!),
        refs: frameRefs[i]!.map((d) => d.slice(0, REF_PREFIX_HEX)),
      });
      offset += data.length;
      doneBytes += written[i]!.rawBytes;
      p.onProgress?.({ phase: 'pack', doneBytes, totalBytes });
    }
    await fh.close();
    const index = packIndex(p, { bytes: offset, sha256: packHash.digest('hex') }, written);
    await p.store.writeFromFile(packKey(p.name, p.version, p.from), tmp);
    await p.store.write(
      packIndexKey(p.name, p.version, p.from),
      Buffer.from(JSON.stringify(index)),
    );
    return {
      from: p.from,
      chunks: wanted.length,
      rawBytes: totalBytes,
      bytes: offset,
      frames: frames.length,
      deltaChunks: refOf.size,
      refs: new Set(frameRefs.flat()).size,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await fh.close().catch(() => {});
    await rm(tmp, { force: true });
  }
}

interface VersionSketches {
  own: Sketches;
  /** The parent's, when it kept them; null: its chunks are sketched from the store as needed. */
  parent: Sketches | null;
}

/**
 * Sketches of every distinct chunk of this version: those the parent had from its sketch file,
 * the rest read from the image.
 */
async function sketchVersion(
  store: WritableChunkStore,
  pool: WorkerPool,
  path: string,
  name: string,
  parent: string | null,
  entries: readonly ChunkEntry[],
): Promise<VersionSketches> {
  const parentSketches = parent ? await readSketches(store, name, parent) : null;
  const unique = firstOfEach(entries);
  const known = parentSketches ?? new Map<string, Uint32Array>();
  const computed = await sketchFromFile(
    pool,
    path,
    unique.filter((e) => !known.has(e.digest!)),
  );
  const own: Sketches = new Map(
    unique.map((e) => [e.digest!, known.get(e.digest!) ?? computed.get(e.digest!)!]),
  );
  return { own, parent: parentSketches };
}

/**
 * The parent's chunks each new chunk resembles. The candidates are the parent's chunks this
 * version no longer holds: the old versions of what changed, which a PC on the parent still has
 * in its golden copy.
 */
async function referencesOf(
  p: PackInput,
  wanted: readonly ChunkEntry[],
  sketches: VersionSketches,
): Promise<Map<string, ChunkEntry[]>> {
  const current = new Set(p.entries.map((e) => e.digest));
  const candidates = firstOfEach(p.parentEntries).filter((e) => !current.has(e.digest));
  const candidateSketches = sketches.parent ?? (await sketchFromStore(p.pool, p.store, candidates));
  return chooseReferences(candidates, candidateSketches, wanted, sketches.own);
}

/** The first entry of each distinct data chunk that `parentEntries` lack, in order. */
function chunksSince(entries: readonly ChunkEntry[], parentEntries: readonly ChunkEntry[]) {
  const have = new Set(parentEntries.map((e) => e.digest));
  return firstOfEach(entries).filter((e) => !have.has(e.digest));
}

/** The first entry of each distinct data chunk, in order. */
function firstOfEach(entries: readonly ChunkEntry[]): ChunkEntry[] {
  const seen = new Set<string>();
  const out: ChunkEntry[] = [];
  for (const e of entries) {
    if (e.digest === null || seen.has(e.digest)) continue;
    seen.add(e.digest);
    out.push(e);
  }
  return out;
}

/**
 * The pack's index. Format 2 when a frame has references, its chunks named by their place in
 * the signed chunk index; format 1 (by digest, readable by every reader) otherwise.
 */
function packIndex(p: PackInput, pack: PackIndex['pack'], frames: PackFrame[]): PackIndex {
  const head = {
    type: 'bulkhead.pack-index' as const,
    name: p.name,
    version: p.version,
    from: p.from,
    pack,
  };
  if (frames.every((f) => f.refs.length === 0)) {
    return {
      ...head,
      formatVersion: 1,
      frames: frames.map(({ offset, bytes, rawBytes, chunks }) => ({
        offset,
        bytes,
        rawBytes,
        chunks,
      })),
    };
  }
  const position = new Map<string, number>();
  p.entries.forEach((e, i) => {
    if (e.digest !== null && !position.has(e.digest)) position.set(e.digest, i);
  });
  return {
    ...head,
    formatVersion: 2,
    frames: frames.map(({ offset, bytes, rawBytes, chunks, refs }) => {
      let last = -1;
      const at = chunks.map((d) => {
        const i = position.get(d)!;
        const step = i - last;
        last = i;
        return step;
      });
      return { offset, bytes, rawBytes, at, refs };
    }),
  };
}

/** Cuts `entries` in order into runs of at least `bytes` bytes each; the last may be shorter. */
function cutRuns(entries: readonly ChunkEntry[], bytes: number): ChunkEntry[][] {
  const runs: ChunkEntry[][] = [];
  let run: ChunkEntry[] = [];
  let runBytes = 0;
  for (const e of entries) {
    run.push(e);
    runBytes += e.length;
    if (runBytes >= bytes) {
      runs.push(run);
      run = [];
      runBytes = 0;
    }
  }
  if (run.length) runs.push(run);
  return runs;
}
