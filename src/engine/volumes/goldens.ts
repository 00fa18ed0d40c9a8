import { createPublicKey } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { exists, removeFile, replaceJsonFile } from '../../durable/index.ts';
import { keyIdOf, type PublicKeyInfo } from '../../signing/index.ts';
import {
  HttpStore,
  pullImage,
  sha256File,
  type ChunkStore,
  type PullProgress,
  type WorkerPool,
} from '../../image/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  isBulkheadError,
  isValidName,
  type PublicKeyRef,
  type VolumeRef,
} from '../../protocol/index.ts';
import { ThrottledStore, TokenBucket } from './throttle.ts';

/*
 * Golden images: the verified, read-only raw volumes VMs boot overlays on (DESIGN §2). One file
 * per version at `<dir>/<image>/<versionId>.raw`, with `<versionId>.json` beside it. The meta
 * file is written only after the image was verified and made read-only, so a golden without
 * one is either being pulled or was interrupted right after its verified rename.
 */

export interface GoldenMeta {
  image: string;
  version: string;
  versionId: string;
  manifestId: string;
  sha256: string;
  size: number;
}

export interface Golden extends GoldenMeta {
  path: string;
}

export interface EnsureGoldenOptions {
  /** Chunk store base URLs, tried in order. */
  mirrors: readonly string[];
  /** Keys the manifest must be signed by one of. */
  publishers: readonly PublicKeyRef[];
  /** Download cap for this pull; none when absent. */
  bandwidthBytesPerSec?: number;
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
  onWarning?: (message: string) => void;
  /** Opens a mirror; tests pass a directory store. Default: an HttpStore. */
  openStore?: (url: string) => ChunkStore;
}

export interface EnsureGoldenResult {
  golden: Golden;
  /** False when the golden was already here. */
  pulled: boolean;
  downloadedBytes: number;
  reusedBytes: number;
  /** The mirror it came from. */
  mirror?: string;
}

/** Volumes are named `<image>/<versionId>` on disk; both must be safe path segments. */
function checkRef(ref: Pick<VolumeRef, 'image' | 'versionId'>): void {
  for (const [field, value] of [
    ['image', ref.image],
    ['versionId', ref.versionId],
  ] as const) {
    if (!isValidName(value)) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `volume ${field} ${JSON.stringify(value)} is not a valid name`,
        { hint: 'the desired state names a volume Engine cannot store; check the image at Center' },
      );
    }
  }
}

/** Turns the desired state's publisher list into verification keys; a key whose id lies is dropped. */
export function trustedKeys(publishers: readonly PublicKeyRef[]): PublicKeyInfo[] {
  const keys: PublicKeyInfo[] = [];
  for (const p of publishers) {
    try {
      const key = createPublicKey(p.publicKey);
      if (keyIdOf(key) === p.keyid) keys.push({ key, keyid: p.keyid });
    } catch {
      // An unreadable key trusts nothing; a manifest signed only by it is refused.
    }
  }
  return keys;
}

export class GoldenStore {
  readonly dir: string;
  private readonly pool: WorkerPool | undefined;

  constructor(options: { dir: string; pool?: WorkerPool }) {
    this.dir = options.dir;
    this.pool = options.pool;
  }

  path(ref: Pick<VolumeRef, 'image' | 'versionId'>): string {
    checkRef(ref);
    return join(this.dir, ref.image, `${ref.versionId}.raw`);
  }

  private metaPath(ref: Pick<VolumeRef, 'image' | 'versionId'>): string {
    return join(this.dir, ref.image, `${ref.versionId}.json`);
  }

  /** The golden for `ref` when it is here, complete and of the same manifest; else null. */
  async get(ref: VolumeRef): Promise<Golden | null> {
    const meta = await readMeta(this.metaPath(ref));
    if (!meta || meta.manifestId !== ref.manifestId) return null;
    return { ...meta, path: this.path(ref) };
  }

  /** Every complete golden on this machine. */
  async list(): Promise<Golden[]> {
    const out: Golden[] = [];
    for (const image of await readdirOrEmpty(this.dir)) {
      if (!isValidName(image)) continue;
      for (const file of await readdirOrEmpty(join(this.dir, image))) {
        if (!file.endsWith('.json')) continue;
        const meta = await readMeta(join(this.dir, image, file));
        if (meta && meta.image === image && `${meta.versionId}.json` === file)
          out.push({ ...meta, path: join(this.dir, image, `${meta.versionId}.raw`) });
      }
    }
    return out;
  }

  /**
   * Makes the golden of `ref` present: pulls it from the first mirror that serves it intact
   * (seeded by every golden already here, resuming an interrupted pull), checks the manifest
   * is the one the desired state names and is signed by a trusted publisher, then makes it
   * read-only. Throws the last mirror's error when none served it; that error is retryable
   * when any mirror failed for a transient reason.
   */
  async ensure(ref: VolumeRef, options: EnsureGoldenOptions): Promise<EnsureGoldenResult> {
    const existing = await this.get(ref);
    if (existing) return { golden: existing, pulled: false, downloadedBytes: 0, reusedBytes: 0 };
    const out = this.path(ref);
    await mkdir(join(this.dir, ref.image), { recursive: true });
    if (await exists(out)) {
      // Only a verified pull renames onto this name: the crash came before the meta file.
      return {
        golden: await this.seal(ref, out),
        pulled: false,
        downloadedBytes: 0,
        reusedBytes: 0,
      };
    }
    if (options.mirrors.length === 0) {
      throw new BulkheadError(
        ErrorCodes.STORE_UNAVAILABLE,
        `no mirror to fetch ${ref.image}@${ref.version} from`,
        { retryable: true },
      );
    }
    const trusted = trustedKeys(options.publishers);
    const seeds = (await this.list())
      .filter((g) => g.path !== out)
      // Goldens of the same image first: they hold most of the target at the same offsets.
      .sort((a, b) => Number(b.image === ref.image) - Number(a.image === ref.image))
      .map((g) => g.path);
    const bucket =
      options.bandwidthBytesPerSec !== undefined
        ? new TokenBucket(options.bandwidthBytesPerSec)
        : undefined;
    const failures: BulkheadError[] = [];
    for (const mirror of options.mirrors) {
      options.signal?.throwIfAborted();
      const inner = (
        options.openStore ??
        ((url: string) =>
          new HttpStore(url, options.signal === undefined ? {} : { signal: options.signal }))
      )(mirror);
      const store = new ThrottledStore(inner, bucket, options.signal);
      try {
        const result = await pullImage({
          store,
          name: ref.image,
          version: ref.version,
          manifestId: ref.manifestId,
          trusted,
          out,
          seeds,
          ...(this.pool ? { pool: this.pool } : {}),
          ...(options.onProgress ? { onProgress: options.onProgress } : {}),
          ...(options.onWarning ? { onWarning: options.onWarning } : {}),
        });
        if (result.size !== ref.size) {
          await rm(out, { force: true });
          throw new BulkheadError(
            ErrorCodes.MANIFEST_MISMATCH,
            `${ref.image}@${ref.version} is ${result.size} bytes, the desired state says ${ref.size}`,
          );
        }
        return {
          golden: await this.seal(ref, out, result.sha256),
          pulled: true,
          downloadedBytes: result.downloadedBytes,
          reusedBytes: result.reusedBytes,
          mirror,
        };
      } catch (err) {
        if (!isBulkheadError(err) || err.code === ErrorCodes.DISK_FULL) throw err;
        failures.push(err);
        options.onWarning?.(`mirror ${mirror}: ${err.message}`);
      } finally {
        await store.close();
      }
    }
    const last = failures.at(-1)!;
    throw new BulkheadError(
      last.code,
      failures.length === 1
        ? last.message
        : `no mirror served ${ref.image}@${ref.version} intact: ${failures.map((f) => f.message).join('; ')}`,
      {
        cause: last,
        retryable: failures.some((f) => f.retryable || isTransient(f)),
        hint: last.hint,
      },
    );
  }

  /** Makes a verified golden read-only, then records its meta (the mark of completeness). */
  private async seal(ref: VolumeRef, path: string, sha256?: string): Promise<Golden> {
    await chmod(path, 0o444);
    const size = (await stat(path)).size;
    const meta: GoldenMeta = {
      image: ref.image,
      version: ref.version,
      versionId: ref.versionId,
      manifestId: ref.manifestId,
      sha256: sha256 ?? (await sha256File(path, size)),
      size,
    };
    await replaceJsonFile(this.metaPath(ref), meta, { mode: 0o644 });
    return { ...meta, path };
  }

  /**
   * Deletes every golden (and partial pull) not in `keep`. The caller keeps, for each VM, the
   * current and previous versions and the one being staged.
   */
  async gc(keep: Iterable<Pick<VolumeRef, 'image' | 'versionId'>>): Promise<string[]> {
    const kept = new Set([...keep].map((r) => `${r.image}/${r.versionId}`));
    const removed: string[] = [];
    for (const image of await readdirOrEmpty(this.dir)) {
      if (!isValidName(image)) continue;
      for (const file of await readdirOrEmpty(join(this.dir, image))) {
        const versionId = /^(.+?)\.(json|raw(\.partial(\.journal)?)?)$/.exec(file)?.[1];
        if (versionId === undefined || kept.has(`${image}/${versionId}`)) continue;
        // The meta goes first: a golden without it is no longer offered as complete.
        const path = join(this.dir, image, file);
        await removeFile(path);
        removed.push(path);
      }
    }
    return removed;
  }
}

function isTransient(err: BulkheadError): boolean {
  return err.code === ErrorCodes.STORE_UNAVAILABLE || err.code === ErrorCodes.IMAGE_NOT_FOUND;
}

/** A golden's meta file, or null when it is missing or unreadable (the golden is then not offered). */
async function readMeta(path: string): Promise<GoldenMeta | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as GoldenMeta;
  } catch {
    return null;
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch {
    return [];
  }
}
