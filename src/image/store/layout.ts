import { BulkheadError, ErrorCodes, isValidDigest, isValidName } from '../../protocol/index.ts';

/**
 * Where each object lives in a store: a plain directory tree that any static HTTP server,
 * CDN or bucket can serve unchanged.
 *
 *   catalog.json                                  what the store holds (a listing for HTTP)
 *   manifests/<name>/<version>.json               signed manifest of one image version
 *   indexes/ab/cd/<sha256>                        zstd-compressed binary chunk index
 *   chunks/ab/cd/<sha256>                         zstd-compressed chunk, named by its raw bytes
 *   packs/<name>/<version>/from-<parent>.pack     the new chunks since <parent>, zstd frames
 *   packs/<name>/<version>/from-<parent>.json     which chunks each frame holds
 *   packs/<name>/<version>/from-<parent>.index    the chunk index, zstd against <parent>'s
 *   sketches/<name>/<version>.bin                 what the chunks resemble (for imports only)
 *
 * Keys are only ever built here from validated names and digests, so no key can climb out of
 * the store (`..`, `/`, absolute paths are impossible by construction).
 */
export type StoreKey = string & { readonly __storeKey: unique symbol };

function checkDigest(digest: string, what: string): void {
  if (!isValidDigest(digest)) {
    throw new BulkheadError(
      ErrorCodes.INVALID_DIGEST,
      `${what} id "${printable(digest)}" is not a SHA-256 digest (64 lower-case hex digits)`,
    );
  }
}

function checkName(value: string, what: string): void {
  if (!isValidName(value)) {
    throw new BulkheadError(
      ErrorCodes.INVALID_NAME,
      `${what} "${printable(value)}" is not valid: use 1-128 characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit`,
    );
  }
}

function printable(value: string): string {
  return JSON.stringify(value.slice(0, 80)).slice(1, -1);
}

const fanout = (digest: string) => `${digest.slice(0, 2)}/${digest.slice(2, 4)}/${digest}`;

export function chunkKey(digest: string): StoreKey {
  checkDigest(digest, 'chunk');
  return `chunks/${fanout(digest)}` as StoreKey;
}

export function indexKey(digest: string): StoreKey {
  checkDigest(digest, 'index');
  return `indexes/${fanout(digest)}` as StoreKey;
}

export function manifestKey(name: string, version: string): StoreKey {
  checkName(name, 'image name');
  checkName(version, 'image version');
  return `manifests/${name}/${version}.json` as StoreKey;
}

export function packKey(name: string, version: string, from: string): StoreKey {
  checkName(name, 'image name');
  checkName(version, 'image version');
  checkName(from, 'parent version');
  return `packs/${name}/${version}/from-${from}.pack` as StoreKey;
}

export function packIndexKey(name: string, version: string, from: string): StoreKey {
  return packKey(name, version, from).replace(/\.pack$/, '.json') as StoreKey;
}

/**
 * The chunk index compressed with the parent's raw index as its zstd dictionary: a PC holding
 * the parent rebuilds that index from its own copy and fetches a fraction of the index's bytes.
 */
export function indexDeltaKey(name: string, version: string, from: string): StoreKey {
  return packKey(name, version, from).replace(/\.pack$/, '.index') as StoreKey;
}

export function sketchesKey(name: string, version: string): StoreKey {
  checkName(name, 'image name');
  checkName(version, 'image version');
  return `sketches/${name}/${version}.bin` as StoreKey;
}

export const CATALOG_KEY = 'catalog.json' as StoreKey;
