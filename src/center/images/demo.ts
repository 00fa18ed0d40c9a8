import type { Kysely } from 'kysely';
import { keyIdOf } from '../../signing/index.ts';
import {
  DirectoryStore,
  chunkKey,
  indexDeltaKey,
  indexKey,
  manifestKey,
  packIndexKey,
  packKey,
  parseManifest,
  readIndex,
  type ChunkStore,
} from '../../image/index.ts';
import { MAX_MANIFEST_BYTES } from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import type { Database } from '../db/index.ts';
import { findImage, publishVersion, releaseVersion } from './images.ts';
import { createPublisher, parsePublisherKey } from './publishers.ts';
import { pushVersion } from './upload.ts';

const DEMO_ACTOR: Actor = { label: 'system' };

/** Copies an object from one local store to another unless the target has it. */
async function copyObject(
  from: DirectoryStore,
  to: DirectoryStore,
  key: Parameters<ChunkStore['read']>[0],
): Promise<void> {
  if (await to.has(key)) return;
  await to.writeFromFile(key, `${from.location}/${key}`);
}

/**
 * Puts image versions from a local store (as `bulkhead image import` made it) into Center as a
 * publisher would: trusts the publisher key (under `publisherName`, once), copies the versions'
 * objects (index, chunks, packs from their parents) into Center's store, records each version
 * through the same path as an upload, publishes them, and releases `release`. Whatever is
 * already there is kept, so it may run at every start.
 */
export async function seedImages(opts: {
  db: Kysely<Database>;
  storeDir: string;
  source: DirectoryStore;
  publisherName: string;
  publicKeyPem: string;
  name: string;
  versions: readonly string[];
  release: string;
  at: number;
}): Promise<void> {
  const { db, source, name, at } = opts;
  const target = new DirectoryStore(opts.storeDir);
  const keyid = keyIdOf(parsePublisherKey(opts.publicKeyPem, 'publisher key'));
  const known = await db
    .selectFrom('publisher_keys')
    .select('keyid')
    .where('keyid', '=', keyid)
    .executeTakeFirst();
  if (!known) {
    const publisher = { name: opts.publisherName, publicKey: opts.publicKeyPem };
    await createPublisher({ db, nowMs: at }, DEMO_ACTOR, publisher);
  }
  for (const version of opts.versions) {
    const bytes = await source.read(manifestKey(name, version), MAX_MANIFEST_BYTES);
    const body = parseManifest(bytes).signed;
    await copyObject(source, target, indexKey(body.index.digest));
    const digests = new Set((await readIndex(source, body)).flatMap((e) => e.digest ?? []));
    for (const d of digests) await copyObject(source, target, chunkKey(d));
    if (body.parent && (await source.has(packIndexKey(name, version, body.parent.version)))) {
      await copyObject(source, target, packKey(name, version, body.parent.version));
      await copyObject(source, target, packIndexKey(name, version, body.parent.version));
      const delta = indexDeltaKey(name, version, body.parent.version);
      if (await source.has(delta)) await copyObject(source, target, delta);
    }
    const pushed = await pushVersion(
      { db, store: target },
      DEMO_ACTOR,
      { name, version, manifest: bytes },
      at,
    );
    // Only drafts: an administrator may have retired a demo version since.
    if (pushed.version.state === 'draft') {
      await publishVersion({ db, nowMs: at }, DEMO_ACTOR, name, version, { release: false });
    }
  }
  const image = await findImage(db, name);
  const released = await db
    .selectFrom('image_versions')
    .select('id')
    .where('image_id', '=', image.id)
    .where('version', '=', opts.release)
    .executeTakeFirst();
  if (image.release_version_id === null && released) {
    await releaseVersion({ db, nowMs: at }, DEMO_ACTOR, name, released.id);
  }
}
