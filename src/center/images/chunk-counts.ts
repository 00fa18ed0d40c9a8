import type { Kysely } from 'kysely';
import {
  chunkKey,
  manifestKey,
  parseManifest,
  readIndex,
  type DirectoryStore,
} from '../../image/index.ts';
import { isBulkheadError, MAX_MANIFEST_BYTES, type ManifestBody } from '../../protocol/index.ts';
import type { Database } from '../db/index.ts';

/*
 * What a version adds over its parent, as the console shows it: its chunk count, and the chunks
 * (and their stored bytes) a PC holding the parent lacks. Counted once, when the version is
 * pushed, and kept in its row; reading the index of a large image is too slow for a request.
 */

/** The counts kept in an `image_versions` row. */
export interface ChunkCounts {
  chunks: number;
  added_chunks: number;
  added_bytes: number;
}

/** Distinct stored chunks of a version (holes are not chunks). */
async function chunkDigests(store: DirectoryStore, body: ManifestBody): Promise<Set<string>> {
  const entries = await readIndex(store, body);
  return new Set(entries.flatMap((e) => (e.digest === null ? [] : [e.digest])));
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/**
 * The counts of the version `body` describes, its index and chunks in `store`. A parent whose
 * manifest or index the store does not hold (pushed elsewhere, or removed) counts as none: then
 * every chunk is added, which is what a PC without it downloads.
 */
export async function countChunks(
  store: DirectoryStore,
  body: ManifestBody,
  digests?: ReadonlySet<string>,
): Promise<ChunkCounts> {
  const own = digests ?? (await chunkDigests(store, body));
  let parent = new Set<string>();
  if (body.parent !== null) {
    try {
      const key = manifestKey(body.name, body.parent.version);
      const manifest = parseManifest(await store.read(key, MAX_MANIFEST_BYTES));
      parent = await chunkDigests(store, manifest.signed);
    } catch (err) {
      if (!isBulkheadError(err) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  const added = [...own].filter((d) => !parent.has(d));
  let bytes = 0;
  await eachLimit(added, 64, async (d) => {
    // Read first, then add: `bytes += await …` would add to the total read before the wait.
    const size = await store.sizeOf(chunkKey(d));
    bytes += size;
  });
  return { chunks: own.size, added_chunks: added.length, added_bytes: bytes };
}

/**
 * Counts the versions of an image pushed before Center kept counts (migration 0014), once: the
 * next listing finds none left to count. A version whose manifest is gone from the store is
 * counted as empty rather than failing the listing.
 */
export async function fillChunkCounts(
  db: Kysely<Database>,
  store: DirectoryStore,
  imageId: string,
): Promise<void> {
  const rows = await db
    .selectFrom('image_versions as v')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .select(['v.id', 'v.version', 'i.name'])
    .where('v.image_id', '=', imageId)
    .where('v.chunks', 'is', null)
    .execute();
  for (const row of rows) {
    let counts: ChunkCounts = { chunks: 0, added_chunks: 0, added_bytes: 0 };
    try {
      const key = manifestKey(row.name, row.version);
      const manifest = parseManifest(await store.read(key, MAX_MANIFEST_BYTES));
      counts = await countChunks(store, manifest.signed);
    } catch (err) {
      if (!isBulkheadError(err) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await db.updateTable('image_versions').set(counts).where('id', '=', row.id).execute();
  }
}
