import { open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { isAlive } from './hypervisor/alive.ts';

/*
 * One `engine run` per data directory: two would both reconcile the same VMs, write the same
 * state files and start the same QEMUs. The lock is a file holding the owner's pid, created
 * exclusively; a lock whose pid is no longer alive (the owner was killed) is taken over.
 */

export interface DataDirLock {
  path: string;
  /** Removes the lock file if it is still this process's. */
  release(): Promise<void>;
}

export function lockPath(dataDir: string): string {
  return join(dataDir, 'engine.lock');
}

async function readOwner(path: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(path, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Takes the data directory's lock for this process.
 * @throws BulkheadError ERR_IN_USE naming the pid of the live `engine run` that holds it.
 */
export async function lockDataDir(dataDir: string): Promise<DataDirLock> {
  const path = lockPath(dataDir);
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const file = await open(path, 'wx', 0o600);
      try {
        await file.writeFile(`${process.pid}\n`);
        await file.sync();
      } finally {
        await file.close();
      }
      return {
        path,
        release: async () => {
          if ((await readOwner(path)) === process.pid) await rm(path, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const owner = await readOwner(path);
    if (owner !== undefined && owner !== process.pid && isAlive(owner)) {
      throw new BulkheadError(
        ErrorCodes.IN_USE,
        `another engine run (pid ${owner}) is using the data directory ${dataDir}`,
        { hint: `stop it first (kill ${owner}), or give this one another --data directory` },
      );
    }
    // Stale (its owner died, or it was left half-written). Moved aside under a name of our
    // own first, so that of two Engines taking it over at once only one removes it; the other
    // then finds the new owner's lock. What was moved is checked again: if another Engine
    // took the lock over in between, it is put back and we try again (and find that Engine).
    const aside = `${path}.stale-${process.pid}`;
    try {
      await rename(path, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      continue;
    }
    const moved = await readOwner(aside);
    if (moved !== undefined && moved !== owner && isAlive(moved)) {
      await rename(aside, path);
      continue;
    }
    await rm(aside, { force: true });
  }
  throw new BulkheadError(ErrorCodes.IN_USE, `could not lock the data directory ${dataDir}`, {
    hint: 'is another engine run starting on it?',
  });
}
