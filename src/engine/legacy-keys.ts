import { open, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir } from '../durable/index.ts';
import { errnoCode } from '../protocol/index.ts';
import type { Log } from './log.ts';

/*
 * Engines before wrapped keys kept the signed desired state as it came, the work VM's data key
 * in the clear (`dataKey`) inside it, and later ones (for a while) with the wrapped key inside
 * (`wrappedDataKey`). Today's Engine keeps the document with key digests only and each wrapped
 * key in its own file (wrapped-keys.ts), so such a file must not stay on the disk after an
 * upgrade: the current document, its `.bak` and any `.corrupt-…` copy that still holds a key is
 * overwritten and removed when Engine starts. The next contact with Center brings the document
 * again (with no stored document the poll carries no ETag); until then the work VM waits.
 */

const STORED = /^desired-state\.json(\.bak|\.corrupt-.+)?$/;
const KEY_FIELDS = ['"dataKey"', '"wrappedDataKey"'];

/** Overwrites `path` with zeros, flushes it and unlinks it. */
async function overwriteAndRemove(path: string): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    const { size } = await handle.stat();
    await handle.write(Buffer.alloc(size), 0, size, 0);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rm(path, { force: true });
}

/**
 * Removes, from `dataDir`, every stored desired state written by an older Engine that holds a
 * data key (in the clear or wrapped) inside the document; returns the names removed.
 */
export async function removeLegacyKeyFiles(dataDir: string, log: Log): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dataDir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
  const removed: string[] = [];
  for (const name of names.filter((n) => STORED.test(n)).sort()) {
    const path = join(dataDir, name);
    const text = await readFile(path, 'utf8').catch(() => '');
    if (!KEY_FIELDS.some((field) => text.includes(field))) continue;
    await overwriteAndRemove(path);
    removed.push(name);
  }
  if (removed.length > 0) {
    await fsyncDir(dataDir);
    log.warn(
      { component: 'engine', files: removed },
      'removed a desired state an older Engine kept with a data key inside; the next contact with Center brings it again',
    );
  }
  return removed;
}
