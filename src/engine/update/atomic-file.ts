import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errnoCode } from '../../protocol/index.ts';

/**
 * Writes `value` as JSON so that a crash at any point leaves either the old file or the new one:
 * a temp file beside it, fsync, rename over, fsync of the directory (so the rename itself is on
 * stable storage before anything that depends on it happens).
 */
export async function writeJsonAtomic(path: string, value: unknown, mode = 0o600): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(`${JSON.stringify(value, null, 2)}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  await syncDir(dir);
}

/** Removes a file and makes the removal durable; absent is fine. */
export async function removeDurably(path: string): Promise<void> {
  await rm(path, { force: true });
  await syncDir(dirname(path)).catch(() => {});
}

/** Reads a JSON file; null when it does not exist. */
export async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw err;
  }
  return JSON.parse(text) as unknown;
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
