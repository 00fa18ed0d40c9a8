import type { Stats } from 'node:fs';
import { rename, rm, stat, type FileHandle } from 'node:fs/promises';
import {
  BulkheadError,
  ErrorCodes,
  REF_PREFIX_HEX,
  isBulkheadError,
  type ManifestBody,
} from '../protocol/index.ts';
import { exists } from '../durable/index.ts';
import type { PublicKeyInfo } from '../signing/index.ts';
import { forEachLimit, sha256File } from './digest-file.ts';
import { workerWriteError, writeError } from './fs-errors.ts';
import { consistentFrames } from './pack-plan.ts';
import {
  JOURNAL_SUFFIX,
  cloneFile,
  createPartial,
  loadJournal,
  openPartial,
  writeAt,
  writeJournalHeader,
  writeZeros,
} from './partial-file.ts';
import {
  planPull,
  reuseOf,
  type Placement,
  type PullAction,
  type PullFacts,
  type PullStep,
  type SeedCopy,
  type SeedScan,
} from './pull-plan.ts';
import { WorkerPool } from './pool.ts';
import {
  corruptChunk,
  readChunk,
  readIndex,
  readIndexFromParent,
  readManifest,
  readPackIndex,
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

/**
 * Rebuilds an image version from seeds plus the chunks they lack, verifying everything:
 * the manifest's signature, every chunk's digest before use, the whole image's digest before
 * the file appears at `out`. An interrupted pull leaves `<out>.partial` and a journal of the
 * chunks verified into it, and the next pull of the same version picks up from there.
 *
 * The work is planned (pull-plan.ts) and applied by one executor per step until the plan is empty.
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

  const pool = opts.pool ?? new WorkerPool();
  const partial = `${out}.partial`;
  const journalPath = partial + JOURNAL_SUFFIX;
  const ctx: PullContext = {
    opts,
    body,
    manifestId: manifest.id,
    partial,
    journalPath,
    withRetry,
    facts: {
      target: [],
      seeds: [],
      journal: null,
      partial: null,
      placed: new Set(),
      hasParent: body.parent !== null,
      pack: null,
    },
    lengthOf: new Map(),
    pool,
    seedStats: new Map(),
    files: null,
    resumed: false,
    chunksDownloaded: 0,
    packFrames: 0,
    download: null,
  };
  try {
    for (const seed of opts.seeds ?? []) {
      // A seed that cannot be read is reported by the scan, with the reason.
      const st = await stat(seed).catch(() => undefined);
      if (st) ctx.seedStats.set(seed, st);
    }
    ctx.facts.seeds = await scanSeeds(opts.seeds ?? [], body, pool, opts.onProgress);
    // A PC holding the parent rebuilds its index from its copy and fetches only the delta.
    const seedEntries = ctx.facts.seeds.map((s) => s.entries);
    const entries = await withRetry(
      'chunk index',
      async () =>
        (await readIndexFromParent(store, body, seedEntries, opts.onWarning)) ??
        (await readIndex(store, body)),
    );
    ctx.facts.target = entries;
    ctx.lengthOf = new Map(
      entries.flatMap((e) => (e.digest === null ? [] : [[e.digest, e.length] as const])),
    );
    ctx.facts.journal = await loadJournal(journalPath, partial, manifest.id, body.size);
    await applyPlan(ctx);
    await closeFiles(ctx, true);

    // The assembled image must be exactly the signed one before it may be used.
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
    const reused = reuseOf(ctx.facts);
    return {
      manifest: manifest.id,
      name,
      version,
      size: body.size,
      sha256,
      downloadedBytes: store.bytesRead - startBytes,
      reusedBytes: reused.bytes,
      chunksDownloaded: ctx.chunksDownloaded,
      chunksReused: reused.chunks,
      packFrames: ctx.packFrames,
      reflinked: (ctx.facts.partial?.clonedFrom ?? null) !== null,
      resumed: ctx.resumed,
      seconds: (performance.now() - started) / 1000,
    };
  } catch (err) {
    await closeFiles(ctx, false);
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

/**
 * A pull needs four rounds at most: set up the partial file; zeros, seed copies and the pack
 * index; pack frames and single chunks; what the pack did not deliver. More means a planner bug.
 */
const MAX_ROUNDS = 8;

/** Bytes of seed copies one worker request makes. */
const COPY_BATCH = 16 * 1024 * 1024;

/** Plans and executes until the plan is empty. */
async function applyPlan(ctx: PullContext): Promise<void> {
  const executors = createPullExecutors(ctx);
  for (let round = 1; ; round++) {
    const steps = planPull(ctx.facts);
    if (steps.length === 0) return;
    if (round > MAX_ROUNDS) throw new Error(`pull plan still has ${steps.length} steps`);
    // Download progress runs over all the first round with downloads plans to fetch; a later
    // round only fetches what a pack frame of it failed to deliver.
    ctx.download ??= startDownloadProgress(steps);
    for (const step of steps) {
      await (executors[step.action] as (s: PullStep) => Promise<void>)(step);
    }
  }
}

function startDownloadProgress(steps: readonly PullStep[]): PullContext['download'] {
  let total = 0;
  for (const step of steps) {
    if (step.action === 'fetchFrames' || step.action === 'fetchChunks') {
      for (const c of step.chunks) total += c.length;
    }
  }
  return total > 0 ? { done: 0, total } : null;
}

/** What the executors of one pull share. */
interface PullContext {
  opts: PullOptions;
  body: ManifestBody;
  manifestId: string;
  partial: string;
  journalPath: string;
  withRetry: <T>(what: string, fn: () => Promise<T>) => Promise<T>;
  /** What the planner sees; the executors record in it what they did. */
  facts: PullFacts & { placed: Set<number> };
  /** Length of every data chunk of the target, from its signed index. */
  lengthOf: ReadonlyMap<string, number>;
  pool: WorkerPool;
  /** Each seed as it was before it was scanned. */
  seedStats: Map<string, Stats>;
  /** The partial file and its journal, open once the partial file is set up. */
  files: { image: FileHandle; journal: FileHandle } | null;
  resumed: boolean;
  chunksDownloaded: number;
  packFrames: number;
  download: { done: number; total: number } | null;
}

type StepOf<A extends PullAction> = Extract<PullStep, { action: A }>;
/** One executor per action; a missing one is a compile error. */
type PullExecutors = { readonly [A in PullAction]: (step: StepOf<A>) => Promise<void> };

function createPullExecutors(ctx: PullContext): PullExecutors {
  const { opts, facts, partial, journalPath } = ctx;
  const filesOf = () => {
    if (!ctx.files) throw new Error('the partial file is not open');
    return ctx.files;
  };
  const write = async (c: Placement, data: Buffer) => {
    const { image } = filesOf();
    for (const i of c.at) await writeAt(image, data, facts.target[i]!.offset, partial);
    for (const i of c.at) facts.placed.add(i);
  };
  // Downloaded chunks are journaled once written, so a retry need not fetch them again; seed
  // copies are cheap to redo and are not. (The final digest check covers both.)
  const recordDownloaded = async (chunks: readonly Placement[]) => {
    if (chunks.length === 0) return;
    await filesOf()
      .journal.write(chunks.map((c) => `${c.digest}\n`).join(''))
      .catch((err: unknown) => {
        throw writeError(err, journalPath);
      });
    for (const c of chunks) {
      for (const i of c.at) facts.placed.add(i);
      ctx.chunksDownloaded++;
      if (ctx.download) ctx.download.done += c.length;
    }
    if (ctx.download) {
      opts.onProgress?.({
        phase: 'download',
        doneBytes: ctx.download.done,
        totalBytes: ctx.download.total,
      });
    }
  };
  const writeDownloaded = async (c: Placement, data: Buffer) => {
    await write(c, data);
    await recordDownloaded([c]);
  };

  return {
    async resumePartial(step) {
      facts.partial = { clonedFrom: step.clonedFrom, done: step.done };
      ctx.resumed = true;
      ctx.files = await openPartial(partial, journalPath);
    },
    async startPartial(step) {
      await rm(partial, { force: true });
      await rm(journalPath, { force: true });
      const reflinked = step.base !== null && (await cloneFile(step.base, partial));
      await createPartial(partial, ctx.body.size, !reflinked);
      const clonedFrom = reflinked ? step.base : null;
      await writeJournalHeader(journalPath, { manifest: ctx.manifestId, base: clonedFrom });
      facts.partial = { clonedFrom, done: new Set() };
      ctx.files = await openPartial(partial, journalPath);
    },
    async zeroHoles(step) {
      const { image } = filesOf();
      for (const i of step.at) {
        const e = facts.target[i]!;
        await writeZeros(image, e.offset, e.length, partial);
        facts.placed.add(i);
      }
    },
    async copyFromSeeds(step) {
      let copied = 0;
      let total = 0;
      for (const c of step.chunks) total += c.length;
      // In batches of about COPY_BATCH bytes per seed, on the workers: a read and a write per
      // chunk are system calls there, not round trips through this thread.
      const batches: { seed: string; chunks: SeedCopy[]; bytes: number }[] = [];
      const filling = new Map<string, (typeof batches)[number]>();
      for (const c of step.chunks) {
        let b = filling.get(c.seed);
        if (!b || b.bytes >= COPY_BATCH) {
          b = { seed: c.seed, chunks: [], bytes: 0 };
          batches.push(b);
          filling.set(c.seed, b);
        }
        b.chunks.push(c);
        b.bytes += c.length;
      }
      await forEachLimit(batches, ctx.pool.size * 2, async (b) => {
        const spans = new Float64Array(
          b.chunks.flatMap((c) =>
            c.at.flatMap((i) => [c.offset, facts.target[i]!.offset, c.length]),
          ),
        );
        await ctx.pool
          .run({ op: 'copy', from: b.seed, to: partial, spans })
          .catch((err: unknown) => {
            throw workerWriteError(err, partial);
          });
        for (const c of b.chunks) for (const i of c.at) facts.placed.add(i);
        copied += b.bytes;
        opts.onProgress?.({ phase: 'assemble', doneBytes: copied, totalBytes: total });
      });
      // The copies are not hashed again: the final image digest covers them. A seed that
      // changed since it was scanned is named here, before that digest fails.
      for (const seed of new Set(step.chunks.map((c) => c.seed))) {
        if (!sameFile(ctx.seedStats.get(seed), await stat(seed))) {
          throw new BulkheadError(
            ErrorCodes.INPUT_UNREADABLE,
            `seed ${seed} changed while it was in use`,
            { hint: 'use a seed that nothing is writing to (shut its VM down first)' },
          );
        }
      }
    },
    async readPackIndex() {
      const from = ctx.body.parent!.version;
      const index = await ctx.withRetry('pack index', () =>
        readPackIndex(opts.store, ctx.body.name, ctx.body.version, from, ctx.facts.target),
      );
      const frames = index ? consistentFrames(index.frames, ctx.lengthOf) : [];
      if (index && frames.length < index.frames.length) {
        opts.onWarning?.(
          `pack index of ${ctx.body.name}@${ctx.body.version} from ${from} does not match the image; using only its consistent frames`,
        );
      }
      facts.pack = frames;
    },
    async fetchFrames(step) {
      const key = packKey(ctx.body.name, ctx.body.version, ctx.body.parent!.version);
      const wanted = new Map(step.chunks.map((c) => [c.digest, c]));
      const refs = new Map(step.refs.map((r) => [r.digest.slice(0, REF_PREFIX_HEX), r]));
      await forEachLimit(step.frames, opts.parallel ?? 4, async (f) => {
        let data: Buffer;
        try {
          data = await ctx.withRetry(`pack frame at ${f.offset}`, () =>
            opts.store.readRange(key, f.offset, f.bytes),
          );
        } catch (err) {
          // A pack is an optimisation: when it cannot be read, its chunks come one by one.
          if (!isBulkheadError(err)) throw err;
          opts.onWarning?.(
            `cannot read the frame at byte ${f.offset} of ${key} (${err.message}); fetching its chunks one by one`,
          );
          return;
        }
        ctx.packFrames++;
        // Wanted once: a chunk that two frames hold is written from the first to arrive.
        const mine = f.chunks.map((d) => {
          const c = wanted.get(d);
          if (c) wanted.delete(d);
          return c;
        });
        // A worker decodes the frame against the seed's copies of its references, checks each
        // chunk's digest and writes it in place. A seed that changed since it was scanned only
        // spoils the frame: its chunks fail their digests and come one by one.
        const r = await ctx.pool
          .run({
            op: 'unpack',
            frame: data,
            rawBytes: f.rawBytes,
            refs: f.refs.map((p) => {
              const at = refs.get(p)!;
              return { path: at.seed, offset: at.offset, length: at.length };
            }),
            digests: f.chunks,
            lengths: f.chunks.map((d) => ctx.lengthOf.get(d)!),
            at: mine.map((c) => (c ? c.at.map((i) => facts.target[i]!.offset) : [])),
            out: partial,
          })
          .catch((err: unknown) => {
            throw workerWriteError(err, partial);
          });
        if (r.damaged) {
          opts.onWarning?.(
            `pack frame at byte ${f.offset} of ${key} is damaged; fetching its chunks one by one`,
          );
          return;
        }
        const done: Placement[] = [];
        mine.forEach((c, k) => {
          if (!c) return;
          if (r.written[k] === 1) done.push(c);
          else opts.onWarning?.(corruptChunk(c.digest, `pack ${key}`).message);
        });
        await recordDownloaded(done);
      });
      // Used: what it did not deliver comes from the store chunk by chunk.
      facts.pack = [];
    },
    async fetchChunks(step) {
      await forEachLimit(step.chunks, opts.parallel ?? 8, async (c) => {
        const data = await ctx.withRetry(`chunk ${c.digest.slice(0, 12)}`, () =>
          readChunk(opts.store, c.digest, c.length),
        );
        await writeDownloaded(c, data);
      });
    },
  };
}

/** Closes the partial file and its journal; after a complete plan, the image is synced first. */
async function closeFiles(ctx: PullContext, isComplete: boolean): Promise<void> {
  const files = ctx.files;
  if (!files) return;
  ctx.files = null;
  try {
    if (isComplete) {
      try {
        await files.image.sync();
      } catch (err) {
        throw writeError(err, ctx.partial);
      }
    }
  } finally {
    await files.image.close();
    await files.journal.close();
  }
}

/** Cuts every seed with the target's chunker, so its chunks can stand in for the target's. */
async function scanSeeds(
  seeds: readonly string[],
  body: ManifestBody,
  pool: WorkerPool,
  onProgress: PullOptions['onProgress'],
): Promise<SeedScan[]> {
  const seedBytes = await seedSizes(seeds);
  const totalBytes = sum(seedBytes.values());
  const scans: SeedScan[] = [];
  let seedDone = 0;
  for (const seed of seeds) {
    const size = seedBytes.get(seed)!;
    const entries = await scanImage(seed, size, body.chunker, pool, (p) => {
      if (p.phase === 'digest')
        onProgress?.({ phase: 'seed', doneBytes: seedDone + p.doneBytes, totalBytes });
    });
    seedDone += size;
    scans.push({ path: seed, entries });
  }
  return scans;
}

/** Whether `after` is still the file `before` was, unmodified. */
function sameFile(before: Stats | undefined, after: Stats): boolean {
  return (
    before !== undefined &&
    before.dev === after.dev &&
    before.ino === after.ino &&
    before.size === after.size &&
    before.mtimeMs === after.mtimeMs &&
    before.ctimeMs === after.ctimeMs
  );
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
