import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import type { Kysely } from 'kysely';
import {
  chunkKey,
  encodeManifest,
  indexKey,
  manifestId,
  manifestKey,
  parseManifest,
  readIndex,
  rebuildCatalog,
  trustedSignatures,
  verifyManifest,
  type DirectoryStore,
} from '../../image/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  MAX_CHUNK_BYTES,
  MAX_INDEX_BYTES,
  MAX_MANIFEST_BYTES,
  isBulkheadError,
  type ImageKindName,
  type ManifestBody,
  type MissingResponse,
  type PushVersionResponse,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { runCommand } from '../changes/index.ts';
import { constraintViolation, newId, type Database, type Row } from '../db/index.ts';
import { countChunks } from './chunk-counts.ts';
import { imageInfo, insertImage, presentVersion, versionRow } from './images.ts';
import { publisherTrust } from './publishers.ts';

const unzstd = promisify(zstdDecompress);

/** What the upload commands work on: Center's database and its chunk store. */
export interface UploadContext {
  db: Kysely<Database>;
  store: DirectoryStore;
}

/** Runs `fn` over `items`, at most `limit` at a time. */
async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** The asked chunks and indexes the store lacks, each once, in the order asked. */
export async function findMissing(
  store: DirectoryStore,
  query: { chunks: readonly string[]; indexes: readonly string[] },
): Promise<MissingResponse> {
  const chunks = [...new Set(query.chunks)];
  const indexes = [...new Set(query.indexes)];
  const chunkPresent = new Map<string, boolean>();
  await eachLimit(chunks, 64, async (d) => {
    chunkPresent.set(d, await store.has(chunkKey(d)));
  });
  const indexPresent = new Map<string, boolean>();
  await eachLimit(indexes, 16, async (d) => {
    indexPresent.set(d, await store.has(indexKey(d)));
  });
  return {
    missing: chunks.filter((d) => !chunkPresent.get(d)),
    missingIndexes: indexes.filter((d) => !indexPresent.get(d)),
  };
}

/**
 * Decompresses an uploaded object (a zstd frame, as the store keeps it) within `maxRaw` bytes
 * and checks that the SHA-256 of its content is `digest`.
 * @throws BulkheadError `ERR_CHUNK_DIGEST_MISMATCH` for anything else.
 */
async function verifyCompressed(
  what: 'chunk' | 'index',
  digest: string,
  body: Buffer,
  maxRaw: number,
): Promise<void> {
  let raw: Buffer;
  try {
    raw = await unzstd(body, { maxOutputLength: maxRaw });
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.CHUNK_DIGEST_MISMATCH,
      `the ${what} body is not zstd-compressed data of at most ${maxRaw} bytes`,
      { cause: err },
    );
  }
  if (raw.length === 0) {
    throw new BulkheadError(ErrorCodes.CHUNK_DIGEST_MISMATCH, `the ${what} body is empty`);
  }
  const actual = createHash('sha256').update(raw).digest('hex');
  if (actual !== digest) {
    throw new BulkheadError(
      ErrorCodes.CHUNK_DIGEST_MISMATCH,
      `the ${what}'s content has SHA-256 ${actual}, not ${digest}: it was damaged or mislabelled`,
    );
  }
}

/**
 * Stores one chunk, as the store keeps it (zstd-compressed), after checking its content's digest.
 * A chunk the store already holds is not written again.
 */
export async function putChunk(
  store: DirectoryStore,
  digest: string,
  body: Buffer,
): Promise<{ digest: string; created: boolean }> {
  await verifyCompressed('chunk', digest, body, MAX_CHUNK_BYTES);
  const key = chunkKey(digest);
  if (await store.has(key)) return { digest, created: false };
  // Atomic (temp file + rename): a reader never sees part of a chunk.
  await store.write(key, body);
  return { digest, created: true };
}

/** Stores one chunk index (zstd-compressed), after checking its content's digest. */
export async function putIndex(
  store: DirectoryStore,
  digest: string,
  body: Buffer,
): Promise<{ digest: string; created: boolean }> {
  await verifyCompressed('index', digest, body, MAX_INDEX_BYTES);
  const key = indexKey(digest);
  if (await store.has(key)) return { digest, created: false };
  await store.write(key, body);
  return { digest, created: true };
}

/**
 * Checks a signed manifest against the trusted publisher keys of the database and the expected
 * name and version. A signature by a revoked key is refused with that said. Returns the
 * signatures that verified with a trusted key, as the version row keeps them.
 */
async function verifyUpload(
  db: Kysely<Database>,
  bytes: Uint8Array,
  expect: { name: string; version: string },
): Promise<{ body: ManifestBody; id: string; signatures: string }> {
  const manifest = parseManifest(bytes);
  const { trusted, revoked } = await publisherTrust(db);
  const keyids = manifest.signatures.map((s) => s.keyid);
  if (
    keyids.length > 0 &&
    keyids.every((k) => revoked.has(k) && !trusted.some((t) => t.keyid === k))
  ) {
    throw new BulkheadError(
      ErrorCodes.UNTRUSTED_KEY,
      `manifest of ${manifest.signed.name}@${manifest.signed.version} is signed by key ${keyids.map((k) => k.slice(0, 16)).join(', ')}, which was revoked`,
    );
  }
  try {
    const verified = verifyManifest(bytes, trusted, expect);
    // Only the signatures that verify are kept: they name the keys that vouch for the version,
    // which publishing judges again once a key is revoked (`requireTrustedSigner`).
    const vouched = trustedSignatures(manifest, trusted);
    return { ...verified, signatures: JSON.stringify(vouched) };
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.UNTRUSTED_KEY)) {
      throw new BulkheadError(
        ErrorCodes.UNTRUSTED_KEY,
        `${err.message}: register the publisher key first (POST /api/v1/admin/publishers)`,
        { cause: err },
      );
    }
    throw err;
  }
}

/** Every distinct chunk the version's index names must be in the store; returns them. */
async function checkChunks(store: DirectoryStore, body: ManifestBody): Promise<Set<string>> {
  if (!(await store.has(indexKey(body.index.digest)))) {
    throw new BulkheadError(
      ErrorCodes.CHUNKS_MISSING,
      `the chunk index ${body.index.digest} of ${body.name}@${body.version} is not in the store; upload it first (PUT /api/v1/admin/store/indexes/${body.index.digest})`,
    );
  }
  const entries = await readIndex(store, body);
  const digests = [...new Set(entries.flatMap((e) => (e.digest === null ? [] : [e.digest])))];
  const { missing } = await findMissing(store, { chunks: digests, indexes: [] });
  if (missing.length > 0) {
    throw new BulkheadError(
      ErrorCodes.CHUNKS_MISSING,
      `${missing.length} of the ${digests.length} chunks of ${body.name}@${body.version} are not in the store; upload them first (POST /api/v1/admin/store/missing lists them)`,
      { details: { missing: missing.length, total: digests.length } },
    );
  }
  return new Set(digests);
}

async function storedManifestId(
  store: DirectoryStore,
  name: string,
  version: string,
): Promise<string | null> {
  const key = manifestKey(name, version);
  if (!(await store.has(key))) return null;
  try {
    return manifestId(parseManifest(await store.read(key, MAX_MANIFEST_BYTES)).signed);
  } catch (err) {
    // A damaged file under the name holds nothing worth keeping: the upload replaces it.
    if (isBulkheadError(err, ErrorCodes.MANIFEST_MALFORMED)) return null;
    throw err;
  }
}

function conflict(name: string, version: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.IMAGE_EXISTS,
    `${name}@${version} already exists with another manifest; versions are immutable, push under a new version`,
  );
}

/**
 * Records an image version from its signed manifest: verifies it against the trusted publisher
 * keys, checks that its index and every chunk are in the store, then writes the manifest and a
 * `draft` version row (creating the image, of `kind`, if absent) and the audit entry together,
 * and rebuilds the catalog. Pushing the same manifest again changes nothing.
 *
 * @throws BulkheadError `ERR_MANIFEST_*` / `ERR_UNTRUSTED_KEY` for a manifest that does not
 *   verify, `ERR_CHUNKS_MISSING` when the store lacks some of its objects, `ERR_IMAGE_EXISTS`
 *   when the version exists with another manifest or the image is of the other kind.
 */
export async function pushVersion(
  ctx: UploadContext,
  actor: Actor,
  input: { name: string; version: string; kind?: ImageKindName | undefined; manifest: Uint8Array },
  at: number,
): Promise<PushVersionResponse> {
  const { db, store } = ctx;
  const { name, version } = input;
  const verified = await verifyUpload(db, input.manifest, { name, version });
  const { body, id } = verified;

  const existing = await findExisting(db, name, version);
  if (existing) {
    if (existing.version.manifest_id !== id) throw conflict(name, version);
    return {
      image: await imageInfo(db, existing.image),
      version: presentVersion(existing.version, existing.image.release_version_id),
      created: false,
    };
  }
  const inStore = await storedManifestId(store, name, version);
  if (inStore !== null && inStore !== id) throw conflict(name, version);
  const digests = await checkChunks(store, body);
  const counts = await countChunks(store, body, digests);
  // Chunks and the index are on stable storage before the manifest that names them appears.
  await store.sync();

  let result: PushVersionResponse;
  try {
    const spec = { action: 'image.version.upload', target: 'image_version' };
    result = await runCommand({ db, nowMs: at }, actor, spec, async (trx) => {
      let image = await trx
        .selectFrom('images')
        .selectAll()
        .where('name', '=', name)
        .executeTakeFirst();
      if (!image) {
        const info = await insertImage(
          trx,
          actor,
          { name, kind: input.kind ?? 'system', description: '' },
          at,
        );
        image = await trx
          .selectFrom('images')
          .selectAll()
          .where('id', '=', info.id)
          .executeTakeFirstOrThrow();
      } else if (input.kind !== undefined && input.kind !== image.kind) {
        throw new BulkheadError(
          ErrorCodes.IMAGE_EXISTS,
          `image ${name} exists as a ${image.kind} image, not ${input.kind}`,
        );
      }
      const row: Row<'image_versions'> = {
        id: newId(at),
        image_id: image.id,
        version,
        manifest_id: id,
        signatures: verified.signatures,
        size: body.size,
        sha256: body.sha256,
        parent_version: body.parent?.version ?? null,
        state: 'draft',
        created_at: at,
        published_at: null,
        retired_at: null,
        ...counts,
      };
      // The row first: a concurrent push of another manifest for this version fails here,
      // before it could overwrite the file.
      await trx.insertInto('image_versions').values(row).execute();
      if (inStore === null) {
        await store.write(
          manifestKey(name, version),
          encodeManifest(parseManifest(input.manifest)),
          {
            durable: true,
          },
        );
      }
      const info = presentVersion(row, image.release_version_id);
      const result = { image: await imageInfo(trx, image), version: info, created: true };
      return { result, before: null, after: { image: name, ...info }, id: row.id };
    });
  } catch (err) {
    if (constraintViolation(err) !== 'unique') throw err;
    // Another push of this version won the race: the same manifest is then a no-op.
    const winner = await findExisting(db, name, version);
    if (!winner) {
      throw new BulkheadError(
        ErrorCodes.IMAGE_EXISTS,
        `image ${name} was being created by another upload at the same moment; push again`,
        { cause: err, retryable: true },
      );
    }
    if (winner.version.manifest_id !== id) throw conflict(name, version);
    return {
      image: await imageInfo(db, winner.image),
      version: presentVersion(winner.version, winner.image.release_version_id),
      created: false,
    };
  }
  await rebuildCatalog(store);
  return result;
}

async function findExisting(
  db: Kysely<Database>,
  name: string,
  version: string,
): Promise<{ image: Row<'images'>; version: Row<'image_versions'> } | null> {
  const image = await db
    .selectFrom('images')
    .selectAll()
    .where('name', '=', name)
    .executeTakeFirst();
  if (!image) return null;
  const row = await versionRow(db, image.id, version);
  return row ? { image, version: row } : null;
}
