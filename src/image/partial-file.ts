import { constants } from 'node:fs';
import { appendFile, copyFile, open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import { errnoCode } from '../protocol/index.ts';
import { writeError } from './fs-errors.ts';
import type { Journal } from './pull-plan.ts';

/*
 * What an interrupted pull leaves for the next one: `<out>.partial`, the image being assembled,
 * and beside it a journal whose first line names the manifest and the seed the file is a reflink
 * of, and each further line a chunk verified and written into it.
 */

export const JOURNAL_SUFFIX = '.journal';

/** The first line of a journal: which pull it belongs to. Each later line is a digest written. */
export interface JournalHeader {
  manifest: string;
  base: string | null;
}

/** Reflink copy (shared extents, instant); false where the file system cannot. */
export async function cloneFile(from: string, to: string): Promise<boolean> {
  try {
    await copyFile(from, to, constants.COPYFILE_FICLONE_FORCE);
    return true;
  } catch (err) {
    await rm(to, { force: true });
    const code = errnoCode(err);
    if (code === 'ENOSPC' || code === 'EDQUOT') throw writeError(err, to);
    return false;
  }
}

/** Sizes the partial file; a fresh one is sparse, so the image's holes are never written. */
export async function createPartial(path: string, size: number, isFresh: boolean): Promise<void> {
  try {
    const fh = await open(path, isFresh ? 'w' : 'r+', 0o644);
    try {
      await fh.truncate(size);
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw writeError(err, path);
  }
}

export async function writeJournalHeader(path: string, journal: JournalHeader): Promise<void> {
  try {
    await appendFile(path, `${JSON.stringify(journal)}\n`, { flag: 'w' });
  } catch (err) {
    throw writeError(err, path);
  }
}

export async function loadJournal(
  journalPath: string,
  partial: string,
  manifestId: string,
  size: number,
): Promise<Journal | null> {
  try {
    const text = await readFile(journalPath, 'utf8');
    if ((await stat(partial)).size !== size) return null;
    const [head, ...lines] = text.split('\n');
    const journal = JSON.parse(head ?? '') as JournalHeader;
    if (journal.manifest !== manifestId) return null;
    return { base: journal.base, done: new Set(lines.filter((l) => /^[0-9a-f]{64}$/.test(l))) };
  } catch {
    return null;
  }
}

export async function writeAt(
  fh: FileHandle,
  data: Buffer,
  offset: number,
  path: string,
): Promise<void> {
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  } catch (err) {
    throw writeError(err, path);
  }
}

const ZEROS = Buffer.alloc(1 << 20);

export async function writeZeros(
  fh: FileHandle,
  offset: number,
  length: number,
  path: string,
): Promise<void> {
  for (let done = 0; done < length; done += ZEROS.length) {
    await writeAt(
      fh,
      ZEROS.subarray(0, Math.min(ZEROS.length, length - done)),
      offset + done,
      path,
    );
  }
}

export async function openPartial(
  partial: string,
  journalPath: string,
): Promise<{ image: FileHandle; journal: FileHandle }> {
  const image = await open(partial, 'r+').catch((err: unknown) => {
    throw writeError(err, partial);
  });
  const journal = await open(journalPath, 'a').catch(async (err: unknown) => {
    await image.close();
    throw writeError(err, journalPath);
  });
  return { image, journal };
}
