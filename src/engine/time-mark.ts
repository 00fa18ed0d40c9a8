import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import { AtomicJsonFile } from '../durable/index.ts';
import { isBulkheadError, ErrorCodes } from '../protocol/index.ts';
import type { Clock } from './clock.ts';
import type { Log } from './log.ts';

/*
 * The latest time Engine has seen, so that setting the PC's clock back does not extend a lease.
 *
 * Engine keeps a high-water mark of every time it trusted: its own clock at each reconcile pass
 * and the `generatedAt` of every desired state whose signature verified. The mark only moves
 * forward and is written durably (`time-mark.json`) at each document and at most once a
 * minute otherwise, so a restart begins from it. While Engine runs, the running time since the
 * mark was last taken (performance.now, a monotonic clock the wall clock does not move) is
 * added to it, so a clock set back while Engine runs is noticed at once, not only once a later
 * time was written.
 *
 * Lease checks use `now()`: the later of the PC's clock and the mark (plus running time).
 *
 * A mark file that is corrupt with no usable backup (src/durable keeps one) is not guessed at:
 * an attacker could corrupt it and set the clock back. The safe choice is that every lease
 * counts as expired until a verified desired state from Center renews it: `now()` is then
 * +Infinity, the error names the file, and the next document from Center sets the mark again.
 */

export const TimeMarkSchema = z.strictObject({
  version: z.literal(1),
  /** Milliseconds since the epoch: the latest time Engine trusted. */
  mark: z.number().int().min(0),
  /** What moved the mark last (`clock`, `center`, `disk`). */
  source: z.string().max(32),
});
export type StoredTimeMark = z.infer<typeof TimeMarkSchema>;

export const TIME_MARK_FILE = 'time-mark.json';

/** The mark is written at most this often when only the clock moves it. */
export const TIME_MARK_PERSIST_MS = 60_000;

export interface TimeMarkDeps {
  dataDir: string;
  clock: Clock;
  log: Log;
  /** Running time in ms (default performance.now); never moves back. */
  monotonic?: () => number;
  /** Default TIME_MARK_PERSIST_MS. */
  persistEveryMs?: number;
}

export interface TimeMark {
  /** Reads the stored mark (call once at start); a corrupt file makes the mark unknown. */
  load(): Promise<void>;
  /** The trusted time: max(clock, mark + running time since); +Infinity while unknown. */
  now(): number;
  /**
   * Takes a time Engine trusts: a verified document's `generatedAt` (`center` or `disk`) or the
   * clock (`clock`). Written at once for a document, at most once a minute for the clock. Only
   * a document from Center ends an unknown mark.
   */
  observe(time: number, source: 'clock' | 'center' | 'disk'): Promise<void>;
  /** True while the mark file was corrupt and no document from Center came since. */
  isUnknown(): boolean;
  /** The file the mark is kept in. */
  readonly path: string;
}

export function timeMarkFile(dataDir: string, deps: { clock?: Clock; log?: Log } = {}) {
  return new AtomicJsonFile<StoredTimeMark>({
    path: join(dataDir, TIME_MARK_FILE),
    schema: TimeMarkSchema,
    what: 'the time mark (the latest time Engine has seen)',
    hint: 'leases count as expired until Engine reaches Center; remove the file only once it has',
    ...deps,
  });
}

export function createTimeMark(deps: TimeMarkDeps): TimeMark {
  const monotonic = deps.monotonic ?? (() => performance.now());
  const persistEveryMs = deps.persistEveryMs ?? TIME_MARK_PERSIST_MS;
  const file = timeMarkFile(deps.dataDir, { clock: deps.clock, log: deps.log });
  /** The mark and the running time it was taken at. */
  let base = { mark: 0, at: monotonic() };
  let written = -Infinity;
  let unknown = false;
  let chain: Promise<unknown> = Promise.resolve();

  const current = () => base.mark + Math.max(0, monotonic() - base.at);

  const persist = (source: string) => {
    const mark = Math.floor(base.mark);
    const run = chain.then(async () => {
      if (mark <= written) return;
      await file.write({ version: 1, mark, source });
      written = mark;
    });
    chain = run.catch(() => {});
    return run;
  };

  return {
    path: file.path,
    async load() {
      try {
        const stored = await file.read();
        if (stored !== undefined) {
          base = { mark: stored.mark, at: monotonic() };
          written = stored.mark;
        }
      } catch (err) {
        if (!isBulkheadError(err, ErrorCodes.STATE_CORRUPT)) throw err;
        unknown = true;
        deps.log.error(
          { component: 'sync', file: file.path, err },
          `${err.message}: every lease counts as expired until a desired state from Center renews it`,
        );
      }
      const now = deps.clock.now();
      if (now > base.mark) base = { mark: now, at: monotonic() };
    },
    now() {
      if (unknown) return Number.POSITIVE_INFINITY;
      return Math.max(deps.clock.now(), current());
    },
    async observe(time, source) {
      const wasUnknown = unknown;
      if (source === 'center') unknown = false;
      const previous = current();
      base = { mark: Math.max(previous, time, deps.clock.now()), at: monotonic() };
      if (source !== 'clock' || wasUnknown || base.mark - written >= persistEveryMs) {
        await persist(source);
      }
    },
    isUnknown: () => unknown,
  };
}
