import { readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import type { z } from 'zod';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { fsyncDir, replaceFile } from './files.ts';

/*
 * Durable JSON files with a schema: a write either lands whole or not at all, whatever moment
 * power fails.
 *
 * write: `replaceFile` (files.ts: temporary file, fsync, rename, directory fsync). Before the
 * rename the current file gets a second name, `<file>.bak`, by a hard link: files are never
 * changed in place, so `.bak` keeps the previous content and there is no moment without the file.
 *
 * read: a file that does not parse or fails its schema (a disk fault, an editor, a bug) is
 * kept for inspection as `<file>.corrupt-<time>` and the previous good copy, `.bak`, is put
 * back; with neither, the error names the file and what to do.
 */

export interface AtomicJsonFileOptions<T> {
  path: string;
  /** Validates what is read and what is written. */
  schema: z.ZodType<T>;
  /** What the file holds, for messages ("the device identity"). */
  what: string;
  /** What to do when neither the file nor its backup is usable. */
  hint: string;
  /** File mode of new files (default 0600: readable by their owner only). */
  mode?: number;
  /** Names the corrupt copies kept aside (default: the system clock). */
  clock?: { now(): number };
  /** Told when a corrupt file is set aside (pino's call shape; default: silent). */
  log?: { warn(obj: object, msg: string): void };
}

export interface ReadOptions {
  /**
   * Move a corrupt file aside and restore the backup (default true). False for readers that
   * must not change anything, like `engine status` while `engine run` owns the files.
   */
  repair?: boolean;
}

type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string };

/** One durable JSON file with a schema. */
export class AtomicJsonFile<T> {
  readonly path: string;
  readonly #schema: z.ZodType<T>;
  readonly #what: string;
  readonly #hint: string;
  readonly #mode: number;
  readonly #clock: { now(): number };
  readonly #log: { warn(obj: object, msg: string): void };

  constructor(options: AtomicJsonFileOptions<T>) {
    this.path = options.path;
    this.#schema = options.schema;
    this.#what = options.what;
    this.#hint = options.hint;
    this.#mode = options.mode ?? 0o600;
    this.#clock = options.clock ?? Date;
    this.#log = options.log ?? { warn: () => {} };
  }

  get backupPath(): string {
    return `${this.path}.bak`;
  }

  /**
   * The file's content, or undefined when there is no file.
   * @throws BulkheadError `ERR_STATE_CORRUPT` when the file and its backup are both unusable.
   */
  async read(options: ReadOptions = {}): Promise<T | undefined> {
    const repair = options.repair ?? true;
    const text = await readText(this.path);
    if (text === undefined) return undefined;
    const current = this.#parse(text);
    if (current.ok) return current.value;

    let keptAs: string | undefined;
    if (repair) {
      keptAs = `${this.path}.corrupt-${new Date(this.#clock.now()).toISOString().replace(/[:.]/g, '-')}`;
      await rename(this.path, keptAs);
      await fsyncDir(dirname(this.path));
    }
    this.#log.warn(
      { component: 'store', file: this.path, reason: current.reason, keptAs },
      `${this.#what} is corrupt`,
    );
    const backupText = await readText(this.backupPath);
    const backup = backupText === undefined ? undefined : this.#parse(backupText);
    if (backup?.ok) {
      if (repair) await this.write(backup.value);
      this.#log.warn(
        { component: 'store', file: this.path, from: this.backupPath },
        `${this.#what}: using the previous good copy`,
      );
      return backup.value;
    }
    throw new BulkheadError(
      ErrorCodes.STATE_CORRUPT,
      `${this.#what} in ${this.path} is corrupt (${current.reason})` +
        (keptAs === undefined ? '' : `; it was kept as ${basename(keptAs)}`) +
        (backup === undefined ? ' and there is no backup' : ' and so is its backup'),
      { hint: this.#hint, details: { file: this.path, keptAs } },
    );
  }

  /** Replaces the file's content durably (see the file comment for the order of steps). */
  async write(value: T): Promise<void> {
    const checked = this.#schema.parse(value);
    await replaceFile(this.path, `${JSON.stringify(checked, null, 2)}\n`, {
      mode: this.#mode,
      keepPreviousAs: this.backupPath,
    });
  }

  /** Removes the file and its backup. */
  async remove(): Promise<void> {
    await rm(this.path, { force: true });
    await rm(this.backupPath, { force: true });
    await fsyncDir(dirname(this.path));
  }

  #parse(text: string): Parsed<T> {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      return { ok: false, reason: 'not JSON' };
    }
    const result = this.#schema.safeParse(json);
    if (result.success) return { ok: true, value: result.data };
    const issue = result.error.issues[0];
    const where = issue && issue.path.length > 0 ? `${issue.path.join('.')}: ` : '';
    return { ok: false, reason: `${where}${issue?.message ?? 'does not match its schema'}` };
  }
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}
