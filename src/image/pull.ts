import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import {
  appendFile,
  copyFile,
  open,
  readFile,
  rename,
  rm,
  stat,
  type FileHandle,
} from 'node:fs/promises';
import {
  BulkheadError,
  ErrorCodes,
  errnoCode,
  isBulkheadError,
  type ManifestBody,
} from '../protocol/index.ts';
import type { ChunkEntry } from './chunk-index.ts';
import { forEachLimit, sha256File } from './digest-file.ts';
import { writeError } from './fs-errors.ts';
import type { PublicKeyInfo } from '../signing/index.ts';
import { chooseFrames } from './pack-plan.ts';
import { WorkerPool } from './pool.ts';
import {
  corruptChunk,
  decompress,
  readChunk,
  readIndex,
  readManifest,
  readPackIndex,
  zstdBound,
} from './read.ts';
import { scanImage } from './scan.ts';
import { detectFormat } from './source.ts';
import { packKey, type ChunkStore } from './store/index.ts';

export interface PullProgress {
  phase: 'seed' | 'download' | 'assemble' | 'verify';
  doneBytes: number;
  totalBytes: number;
}

export interface PullOptions {
  store: ChunkStore;
  name: string;
  version: string;
  /** Publisher keys a manifest may be signed by. */
  trusted: readonly PublicKeyInfo[];
  /** The manifest id the caller expects (from a signed desired state); another is refused. */
  manifestId?: string;
  /** Final path of the image. Written to `<out>.partial` first, then renamed. */
  out: string;
  /** Raw images already on this machine whose chunks need not be downloaded. */
  seeds?: readonly string[];
  /** Replace `out` if it exists. */
  force?: boolean;
  /** Requests in flight at once. */
  parallel?: number;
  /** Attempts per request for transient faults (dropped connections, 5xx). */
  attempts?: number;
  pool?: WorkerPool;
  onProgress?: (p: PullProgress) => void;
  /** Told about conditions worth a line in a log (a bad pack, a retried request). */
  onWarning?: (message: string) => void;
}

export interface PullResult {
  manifest: string;
  name: string;
  version: string;
  size: number;
  sha256: string;
  /** Bytes received from the store: manifest, index, pack frames and chunks. */
  downloadedBytes: number;
  /** Bytes of the image taken from seeds or from an earlier interrupted pull. */
  reusedBytes: number;
  chunksDownloaded: number;
  chunksReused: number;
  packFrames: number;
  /** Whether the output started as a reflink copy of a seed (shared extents, no copying). */
  reflinked: boolean;
  /** Whether an interrupted earlier pull was resumed. */
  resumed: boolean;
  seconds: number;
}

/** Where a chunk can be read locally. */
interface LocalCopy {
  path: string;
  offset: number;
}

interface Journal {
  manifest: string;
  base: string | null;
}

const JOURNAL_SUFFIX = '.journal';

/**
 * Rebuilds an image version from seeds plus the chunks they lack, verifying everything:
 * the manifest's signature, every chunk's digest before use, the whole image's digest before
 * the file appears at `out`. An interrupted pull leaves `<out>.partial` and a journal of the
 * chunks verified into it, and the next pull of the same version picks up from there.
 */
export async function pullImage(opts: PullOptions): Promise<PullResult> {
  const started = performance.now();
  const { store, name, version, out } = opts;
  const startBytes = store.bytesRead;
  const attempts = opts.attempts ?? 4;
  const withRetry = <T>(what: string, fn: () => Promise<T>) =>
    retry(what, fn, attempts, opts.onWarning);

  if (!opts.force && (await exists(out))) {
    throw new BulkheadError(ErrorCodes.OUTPUT_EXISTS, `${out} already exists`, {
      hint: 'choose another --out, or pass --force to replace it',
    });
  }
  const manifest = await withRetry('manifest', () =>
    readManifest(store, name, version, opts.trusted),
  );
  if (opts.manifestId !== undefined && manifest.id !== opts.manifestId) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MISMATCH,
      `the manifest of ${name}@${version} at ${store.location} has id ${manifest.id.slice(0, 16)}…, expected ${opts.manifestId.slice(0, 16)}…`,
      { hint: 'the store or mirror serves another manifest under this name; use another one' },
    );
  }
  const body = manifest.body;
  const entries = await withRetry('chunk index', () => readIndex(store, body));

  const pool = opts.pool ?? new WorkerPool();
  const partial = `${out}.partial`;
  const journalPath = partial + JOURNAL_SUFFIX;
  try {
    // Where every chunk we could use already lives on this machine.
    const local = new Map<string, LocalCopy>();
    const seedScans: { path: string; entries: ChunkEntry[] }[] = [];
    const seedBytes = await seedSizes(opts.seeds ?? []);
    let seedDone = 0;
    for (const seed of opts.seeds ?? []) {
      const size = seedBytes.get(seed)!;
      const seedEntries = await scanImage(seed, size, body.chunker, pool, (p) => {
        if (p.phase === 'digest')
          opts.onProgress?.({
            phase: 'seed',
            doneBytes: seedDone + p.doneBytes,
            totalBytes: sum(seedBytes.values()),
          });
      });
      seedDone += size;
      seedScans.push({ path: seed, entries: seedEntries });
      for (const e of seedEntries)
        if (e.digest !== null && !local.has(e.digest))
          local.set(e.digest, { path: seed, offset: e.offset });
    }

    // The seed that already holds the most of the target at the right offsets is the base:
    // reflinked where the file system allows, so unchanged ranges are never copied.
    const base = chooseBase(entries, seedScans);
    const resumed = await loadJournal(journalPath, partial, manifest.id, body.size);
    // Only a pull of the same version onto the same base may continue from a partial file.
    const canResume = resumed !== null && (resumed.base === null || resumed.base === base?.path);
    let reflinked: boolean;
    if (canResume) {
      reflinked = resumed.base !== null;
    } else {
      await rm(partial, { force: true });
      await rm(journalPath, { force: true });
      reflinked = base !== null && (await cloneFile(base.path, partial));
      await createPartial(partial, body.size, !reflinked);
      await writeJournalHeader(journalPath, {
        manifest: manifest.id,
        base: reflinked ? base!.path : null,
      });
    }
    // Target entries whose bytes are already right in the partial file: in a sparse fresh
    // file every hole; in a clone what the base holds at the same offsets; after an
    // interruption, every chunk the journal lists.
    const inPlace = new Set<number>(reflinked ? base!.inPlace : []);
    entries.forEach((e, i) => {
      if (e.digest === null ? !reflinked : canResume && resumed.done.has(e.digest)) inPlace.add(i);
    });

    const fh = await open(partial, 'r+').catch((err: unknown) => {
      throw writeError(err, partial);
    });
    const journal = await open(journalPath, 'a').catch(async (err: unknown) => {
      await fh.close();
      throw writeError(err, journalPath);
    });
    let chunksDownloaded = 0;
    let packFrames = 0;
    let reusedBytes = 0;
    try {
      // Group target entries by digest: a chunk is fetched once and written wherever it occurs.
      const positions = new Map<string, ChunkEntry[]>();
      entries.forEach((e, i) => {
        if (e.digest === null || inPlace.has(i)) return;
        const list = positions.get(e.digest);
        if (list) list.push(e);
        else positions.set(e.digest, [e]);
      });
      entries.forEach((e, i) => {
        if (e.digest !== null && inPlace.has(i)) reusedBytes += e.length;
      });
      // A clone holds the base's bytes where the target has holes: zero those ranges.
      for (const [i, e] of entries.entries()) {
        if (e.digest === null && !inPlace.has(i)) await writeZeros(fh, e.offset, e.length, partial);
      }
      // Downloaded chunks are journaled once written, so a retry need not fetch them again;
      // seed copies are cheap to redo and are not. (The final digest check covers both.)
      const place = async (digest: string, data: Buffer, isDownload = true) => {
        for (const e of positions.get(digest) ?? []) await writeAt(fh, data, e.offset, partial);
        if (isDownload)
          await journal.write(`${digest}\n`).catch((err: unknown) => {
            throw writeError(err, journalPath);
          });
      };

      // 1. Copy what seeds hold.
      const fromSeeds = [...positions.keys()].filter((d) => local.has(d));
      const seedFiles = new Map<string, FileHandle>();
      try {
        for (const s of seedScans) seedFiles.set(s.path, await open(s.path, 'r'));
        let copied = 0;
        const total = sum(fromSeeds.map((d) => positions.get(d)![0]!.length));
        await forEachLimit(fromSeeds, 8, async (digest) => {
          const at = local.get(digest)!;
          const list = positions.get(digest)!;
          const length = list[0]!.length;
          const data = Buffer.allocUnsafe(length);
          await seedFiles.get(at.path)!.read(data, 0, length, at.offset);
          // The final image digest covers seed bytes; checking here too names the culprit.
          if (createHash('sha256').update(data).digest('hex') !== digest) {
            throw new BulkheadError(
              ErrorCodes.INPUT_UNREADABLE,
              `seed ${at.path} changed while it was in use (at byte ${at.offset})`,
              {
                hint: 'use a seed that nothing is writing to',
              },
            );
          }
          await place(digest, data, false);
          reusedBytes += length * list.length;
          copied += length;
          opts.onProgress?.({ phase: 'assemble', doneBytes: copied, totalBytes: total });
        });
      } finally {
        for (const h of seedFiles.values()) await h.close();
      }

      // 2. Download the rest: frames of a pack where that is cheaper, single chunks otherwise.
      const missing = new Set([...positions.keys()].filter((d) => !local.has(d)));
      const lengthOf = new Map([...missing].map((d) => [d, positions.get(d)![0]!.length]));
      const totalMissing = sum(lengthOf.values());
      let fetched = 0;
      const report = (bytes: number) => {
        fetched += bytes;
        opts.onProgress?.({ phase: 'download', doneBytes: fetched, totalBytes: totalMissing });
      };
      if (body.parent && missing.size > 0) {
        const got = await fetchFromPack(
          store,
          body,
          missing,
          new Map(
            entries.flatMap((e) => (e.digest === null ? [] : [[e.digest, e.length] as const])),
          ),
          place,
          withRetry,
          opts.onWarning,
          opts.parallel ?? 4,
          report,
        );
        packFrames = got.frames;
        chunksDownloaded += got.chunks;
      }
      await forEachLimit([...missing], opts.parallel ?? 8, async (digest) => {
        const length = lengthOf.get(digest)!;
        const data = await withRetry(`chunk ${digest.slice(0, 12)}`, () =>
          readChunk(store, digest, length),
        );
        await place(digest, data);
        missing.delete(digest);
        chunksDownloaded++;
        report(length);
      });

      try {
        await fh.sync();
      } catch (err) {
        throw writeError(err, partial);
      }
    } finally {
      await fh.close();
      await journal.close();
    }

    // 3. The assembled image must be exactly the signed one before it may be used.
    opts.onProgress?.({ phase: 'verify', doneBytes: 0, totalBytes: body.size });
    const sha256 = await sha256File(partial, body.size, (n) =>
      opts.onProgress?.({ phase: 'verify', doneBytes: n, totalBytes: body.size }),
    );
    if (sha256 !== body.sha256) {
      await rm(partial, { force: true });
      await rm(journalPath, { force: true });
      throw new BulkheadError(
        ErrorCodes.IMAGE_DIGEST_MISMATCH,
        `the assembled ${name}@${version} has SHA-256 ${sha256.slice(0, 16)}…, the signed manifest says ${body.sha256.slice(0, 16)}…; it was discarded`,
        {
          hint: 'a seed may have changed during the pull; run the command again',
        },
      );
    }
    try {
      await rename(partial, out);
    } catch (err) {
      throw writeError(err, out);
    }
    await rm(journalPath, { force: true });
    return {
      manifest: manifest.id,
      name,
      version,
      size: body.size,
      sha256,
      downloadedBytes: store.bytesRead - startBytes,
      reusedBytes,
      chunksDownloaded,
      chunksReused: entries.filter(
        (e, i) => e.digest !== null && (inPlace.has(i) || local.has(e.digest)),
      ).length,
      packFrames,
      reflinked,
      resumed: canResume,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (err) {
    // Keep the partial image only where a retry can use it: after a fault of the store or the
    // network. Anything else (a full disk, a bad seed) starts over next time.
    const keep =
      isBulkheadError(err) &&
      (err.retryable ||
        err.code === ErrorCodes.CHUNK_CORRUPT ||
        err.code === ErrorCodes.STORE_UNAVAILABLE);
    if (!keep) {
      await rm(partial, { force: true });
      await rm(journalPath, { force: true });
    }
    throw err;
  } finally {
    if (!opts.pool) await pool.close();
  }
}

async function fetchFromPack(
  store: ChunkStore,
  body: ManifestBody,
  missing: Set<string>,
  /** Length of every data chunk of the target, from its signed index. */
  lengthOf: ReadonlyMap<string, number>,
  place: (digest: string, data: Buffer) => Promise<void>,
  withRetry: <T>(what: string, fn: () => Promise<T>) => Promise<T>,
  onWarning: ((m: string) => void) | undefined,
  parallel: number,
  report: (bytes: number) => void,
): Promise<{ frames: number; chunks: number }> {
  const from = body.parent!.version;
  const index = await withRetry('pack index', () =>
    readPackIndex(store, body.name, body.version, from),
  );
  if (!index) return { frames: 0, chunks: 0 };
  // The pack index is not signed: believe a frame only when its claims agree with the signed
  // chunk index, which also bounds what we download and inflate for it.
  const consistent = index.frames.filter((f) => {
    let raw = 0;
    for (const d of f.chunks) {
      const length = lengthOf.get(d);
      if (length === undefined) return false;
      raw += length;
    }
    return raw === f.rawBytes && f.bytes <= zstdBound(f.rawBytes);
  });
  if (consistent.length < index.frames.length) {
    onWarning?.(
      `pack index of ${body.name}@${body.version} from ${from} does not match the image; using only its consistent frames`,
    );
  }
  const chosen = chooseFrames(consistent, missing, lengthOf);
  let frames = 0;
  let chunks = 0;
  const key = packKey(body.name, body.version, from);
  await forEachLimit(chosen, parallel, async (f) => {
    let data: Buffer;
    try {
      data = await withRetry(`pack frame at ${f.offset}`, () =>
        store.readRange(key, f.offset, f.bytes),
      );
    } catch (err) {
      // A pack is an optimisation: when it cannot be read, its chunks come one by one.
      if (!isBulkheadError(err)) throw err;
      onWarning?.(
        `cannot read the frame at byte ${f.offset} of ${key} (${err.message}); fetching its chunks one by one`,
      );
      return;
    }
    frames++;
    let raw: Buffer;
    try {
      raw = decompress(
        data,
        f.rawBytes,
        () => new BulkheadError(ErrorCodes.PACK_CORRUPT, 'frame does not decompress'),
      );
    } catch {
      onWarning?.(
        `pack frame at byte ${f.offset} of ${key} is damaged; fetching its chunks one by one`,
      );
      return;
    }
    let pos = 0;
    for (const digest of f.chunks) {
      const length = lengthOf.get(digest)!;
      const slice = raw.subarray(pos, pos + length);
      pos += length;
      if (!missing.has(digest)) continue;
      if (createHash('sha256').update(slice).digest('hex') !== digest) {
        onWarning?.(corruptChunk(digest, `pack ${key}`).message);
        continue;
      }
      await place(digest, Buffer.from(slice));
      missing.delete(digest);
      chunks++;
      report(length);
    }
  });
  return { frames, chunks };
}

interface Base {
  path: string;
  /** Target entry indexes whose bytes the seed holds at the same offset. */
  inPlace: number[];
  bytes: number;
}

function chooseBase(
  target: ChunkEntry[],
  seeds: { path: string; entries: ChunkEntry[] }[],
): Base | null {
  let best: Base | null = null;
  for (const s of seeds) {
    const at = new Map(s.entries.map((e) => [e.offset, e]));
    const inPlace: number[] = [];
    let bytes = 0;
    target.forEach((e, i) => {
      const o = at.get(e.offset);
      // Holes count too: in a fresh file they are free, in a clone they must already be zero.
      if (o && o.length === e.length && o.digest === e.digest) {
        inPlace.push(i);
        bytes += e.length;
      }
    });
    if (!best || bytes > best.bytes) best = { path: s.path, inPlace, bytes };
  }
  return best && best.bytes > 0 ? best : null;
}

/** Reflink copy (shared extents, instant); false where the file system cannot. */
async function cloneFile(from: string, to: string): Promise<boolean> {
  try {
    await copyFile(from, to, constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch (err) {
    await rm(to, { force: true });
    const code = errnoCode(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') throw writeError(err, to);
    return false;
  }
}

/** Sizes the partial file; a fresh one is sparse, so the image's holes are never written. */
async function createPartial(path: string, size: number, isFresh: boolean): Promise<void> {
  try {
    const fh = await open(path, isFresh ? 'w' : 'r+', 0o644);
    try {
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw writeError(err, path);
  }
}

async function writeJournalHeader(path: string, journal: Journal): Promise<void> {
  try {
    await appendFile(path, `${JSON.stringify(journal)}\n`, { flag: 'w' });
  } catch (err) {
    throw writeError(err, path);
  }
}

async function loadJournal(
  journalPath: string,
  partial: string,
  manifestId: string,
  size: number,
): Promise<{ base: string | null; done: Set<string> } | null> {
  try {
    const text = await readFile(journalPath, 'utf8');
    if ((await stat(partial)).size !== size) return null;
    const [head, ...lines] = text.split('\n');
    const journal = JSON.parse(head ?? '') as Journal;
    if (journal.manifest !== manifestId) return null;
    return { base: journal.base, done: new Set(lines.filter((l) => /^[0-9a-f]{64}$/.test(l))) };
  } catch {
    return null;
  }
}

async function writeAt(fh: FileHandle, data: Buffer, offset: number, path: string): Promise<void> {
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  } catch (err) {
    throw writeError(err, path);
  }
}

const ZEROS = Buffer.alloc(1 << 20);

async function writeZeros(
  fh: FileHandle,
  offset: number,
  length: number,
  path: string,
): Promise<void> {
  for (let done = 0; done < length; done += ZEROS.length) {
    await writeAt(
      fh,
      ZEROS.subarray(0, Math.min(ZEROS.length, length - done)),
      offset + done,
      path,
    );
  }
}

async function retry<T>(
  what: string,
  fn: () => Promise<T>,
  attempts: number,
  onWarning?: (m: string) => void,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isBulkheadError(err) || !err.retryable || attempt >= attempts) throw err;
      onWarning?.(`${what}: ${err.message}; retrying (${attempt}/${attempts - 1})`);
      await new Promise((r) =>
        setTimeout(r, Math.min(2000, 100 * 2 ** attempt) * (0.5 + Math.random())),
      );
    }
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function seedSizes(seeds: readonly string[]): Promise<Map<string, number>> {
  const sizes = new Map<string, number>();
  for (const seed of seeds) {
    const { format, size } = await detectFormat(seed);
    if (format !== 'raw') {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `seed ${seed} is a ${format} image; seeds must be raw images`,
        {
          hint: 'convert it with `qemu-img convert -O raw`, or leave it out',
        },
      );
    }
    sizes.set(seed, size);
  }
  return sizes;
}

function sum(values: Iterable<number>): number {
  let n = 0;
  for (const v of values) n += v;
  return n;
}
