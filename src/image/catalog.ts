import {
  BulkheadError,
  CatalogSchema,
  ErrorCodes,
  MAX_CATALOG_BYTES,
  isBulkheadError,
  type Catalog,
} from '../protocol/index.ts';
import { parseManifest, manifestId } from './manifest.ts';
import {
  CATALOG_KEY,
  manifestKey,
  type ChunkStore,
  type WritableChunkStore,
} from './store/index.ts';
import { MAX_MANIFEST_BYTES } from '../protocol/index.ts';

export type CatalogEntry = Catalog['images'][number];

/**
 * Rebuilds `catalog.json` from the manifests on disk, which are the truth: two imports that
 * finish together both leave a catalog listing every version. Packs are listed by the
 * versions they start from.
 */
export async function rebuildCatalog(store: WritableChunkStore): Promise<Catalog> {
  const images: CatalogEntry[] = [];
  for (const name of await store.list('manifests')) {
    for (const file of await store.list(`manifests/${name}`)) {
      if (!file.endsWith('.json')) continue;
      const version = file.slice(0, -'.json'.length);
      let body;
      try {
        body = parseManifest(
          await store.read(manifestKey(name, version), MAX_MANIFEST_BYTES),
        ).signed;
      } catch (err) {
        // One damaged manifest must not hide the others; `image verify` reports it.
        if (isBulkheadError(err)) continue;
        throw err;
      }
      const packs = (await store.list(`packs/${name}/${version}`).catch(() => []))
        .filter((f) => f.startsWith('from-') && f.endsWith('.json'))
        .map((f) => f.slice('from-'.length, -'.json'.length));
      images.push({
        name,
        version,
        manifest: manifestId(body),
        size: body.size,
        created: body.created,
        parent: body.parent?.version ?? null,
        packs,
      });
    }
  }
  images.sort((a, b) =>
    a.name === b.name ? a.created.localeCompare(b.created) : a.name.localeCompare(b.name),
  );
  const catalog: Catalog = { type: 'bulkhead.catalog', images };
  await store.write(CATALOG_KEY, Buffer.from(`${JSON.stringify(catalog, null, 2)}\n`), {
    durable: true,
  });
  return catalog;
}

/** Reads a store's catalog; a store with none lists nothing. */
export async function readCatalog(store: ChunkStore): Promise<Catalog> {
  let bytes: Buffer;
  try {
    bytes = await store.read(CATALOG_KEY, MAX_CATALOG_BYTES);
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND))
      return { type: 'bulkhead.catalog', images: [] };
    throw err;
  }
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MALFORMED,
      `catalog.json in ${store.location} is not valid JSON`,
      { cause: err },
    );
  }
  const parsed = CatalogSchema.safeParse(json);
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MALFORMED,
      `catalog.json in ${store.location} is malformed: ${parsed.error.issues[0]?.message}`,
    );
  }
  return parsed.data;
}
