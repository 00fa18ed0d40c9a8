import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, link, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { errnoCode } from '../protocol/index.ts';

/*
 * Files replaced whole or not at all. The new content goes to a temporary file in the same
 * directory (so the rename stays on one filesystem), is fsynced, renamed over the target, and the
 * directory is fsynced after, so the rename itself is on stable storage before anything that
 * depends on it happens. A crash at any moment leaves the old file or the new one, never a mix.
 *
 * Temporary names start with a dot and contain `.tmp-` (`.<name>.tmp-<random>`): directory
 * listings that skip hidden files never see them, and a reader that owns its directory can sweep
 * what a crash left by that mark.
 */

export interface ReplaceOptions {
  /**
   * Fsync the new file and its directory (default true). False keeps the rename (readers never
   * see a partial file) without waiting for the disk: for content that is verified on every
   * read and rewritten when wrong.
   */
  durable?: boolean;
  /** Mode of the new file (default 0600). Ignored by `replaceFileByCopy`, which keeps the source's. */
  mode?: number;
  /**
   * Gives the file being replaced this second name (a hard link, made before the rename), so the
   * previous content survives the replacement and there is no moment without the file.
   */
  keepPreviousAs?: string;
}

/** The temporary name a replacement of `path` is written under. */
function tempPath(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${randomBytes(6).toString('hex')}`);
}

/** Makes a rename, create or removal in `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether anything (file, directory, link target) is at `path`; any error counts as no. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Replaces the file at `path` with `content` (see the file comment for the order of steps). */
export async function replaceFile(
  path: string,
  content: string | Uint8Array,
  options: ReplaceOptions = {},
): Promise<void> {
  const durable = options.durable ?? true;
  await replaceWith(path, options, async (tmp) => {
    const handle = await open(tmp, 'wx', options.mode ?? 0o600);
    try {
      await handle.writeFile(content);
      if (durable) await handle.sync();
    } finally {
      await handle.close();
    }
  });
}

/** Replaces the file at `path` with a copy of `source`, reflinked where the filesystem can. */
export async function replaceFileByCopy(
  path: string,
  source: string,
  options: ReplaceOptions = {},
): Promise<void> {
  const durable = options.durable ?? true;
  await replaceWith(path, options, async (tmp) => {
    await copyFile(source, tmp, constants.COPYFILE_FICLONE | constants.COPYFILE_EXCL);
    if (!durable) return;
    const handle = await open(tmp, 'r');
    await handle.sync().finally(() => handle.close());
  });
}

/** Replaces the file at `path` with `value` as indented JSON and a final newline. */
export async function replaceJsonFile(
  path: string,
  value: unknown,
  options: ReplaceOptions = {},
): Promise<void> {
  await replaceFile(path, `${JSON.stringify(value, null, 2)}\n`, options);
}

/** Removes the file at `path` and makes the removal durable; a missing file is fine. */
export async function removeFile(path: string): Promise<void> {
  await rm(path, { force: true });
  await fsyncDir(dirname(path)).catch(() => {});
}

async function replaceWith(
  path: string,
  options: ReplaceOptions,
  fill: (tmp: string) => Promise<void>,
): Promise<void> {
  const tmp = tempPath(path);
  try {
    await fill(tmp);
    if (options.keepPreviousAs !== undefined) await linkPrevious(path, options.keepPreviousAs);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  if (options.durable ?? true) await fsyncDir(dirname(path));
}

/** Links the current `path` as `as`, replacing an older one; nothing to keep is fine. */
async function linkPrevious(path: string, as: string): Promise<void> {
  const tmp = tempPath(as);
  try {
    await link(path, tmp);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return;
    throw err;
  }
  await rename(tmp, as);
}
