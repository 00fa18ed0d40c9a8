import {
  BulkheadError,
  CatalogSchema,
  ErrorCodes,
  MAX_CATALOG_BYTES,
  MAX_MANIFEST_BYTES,
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

export type CatalogEntry = Catalog['images'][number];

/**
 * Every image version a writable store holds, read from its manifests (the truth; the catalog
 * is derived from them). A damaged manifest is left out, not fatal: `image verify` reports it.
 */
export async function scanCatalog(store: WritableChunkStore): Promise<CatalogEntry[]> {
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
        if (isBulkheadError(err)) continue;
        throw err;
      }
      const packs = (await store.list(`packs/${name}/${version}`))
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
  return images.sort((a, b) =>
    a.name === b.name ? a.created.localeCompare(b.created) : a.name.localeCompare(b.name),
  );
}

/**
 * Rebuilds `catalog.json` from the manifests: two imports that finish together both leave a
 * catalog listing every version.
 */
export async function rebuildCatalog(store: WritableChunkStore): Promise<Catalog> {
  const images = await scanCatalog(store);
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
