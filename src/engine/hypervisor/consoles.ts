import { readdir, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';

/*
 * Each boot's serial console log, kept per VM beside its run directory (`vms/<vm>/consoles/`),
 * so the console of a version that failed its health check survives the rollback boot that
 * follows it. One file per boot, named by boot time and version so that the names sort by
 * time: `2026-11-27T19-20-00-123Z-os@2.log`. Only the last few are kept.
 */

/** Boots whose console log is kept per VM. */
export const CONSOLES_KEPT = 5;

const LOG = /^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d{3}Z-.*\.log$/;

/** The file name of the console log of a boot at `at` (ms) of `version` (`os@2`). */
export function consoleLogName(at: number, version: string | undefined): string {
  const time = new Date(at).toISOString().replace(/[:.]/g, '-');
  // Versions are store path segments already; anything else is kept out of the file name.
  const label = (version ?? 'unknown').replace(/[^A-Za-z0-9@+._-]/g, '_').slice(0, 120);
  return `${time}-${label}.log`;
}

/** The console logs in `dir`, oldest first (file names only); none when there is no `dir`. */
export async function listConsoleLogs(dir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.filter((n) => LOG.test(n)).sort();
}

/**
 * Removes the oldest console logs in `dir` until at most `keep` are left; answers the names
 * removed. Files that are not console logs are left alone.
 */
export async function pruneConsoleLogs(dir: string, keep: number): Promise<string[]> {
  const logs = await listConsoleLogs(dir);
  const removed = logs.slice(0, Math.max(0, logs.length - keep));
  for (const name of removed) await rm(join(dir, name), { force: true });
  return removed;
}

/**
 * Most bytes a guest's log (serial console, firmware debug port) may hold. What a guest writes
 * there is the guest's to choose: one that writes without end would otherwise fill the PC's
 * disk. Boot messages take kilobytes.
 */
export const GUEST_LOG_CAP = 16 * 1024 * 1024;

/**
 * Empties the log at `path` when it holds more than `cap` bytes; answers whether it did. QEMU
 * opens these logs for appending, so its next write starts the file over. Missing: nothing.
 */
export async function capGuestLog(path: string, cap = GUEST_LOG_CAP): Promise<boolean> {
  try {
    if ((await stat(path)).size <= cap) return false;
    await truncate(path, 0);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
