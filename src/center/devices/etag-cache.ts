/*
 * The ETags Center last answered each device with, kept in memory so that a poll whose
 * If-None-Match still matches is answered 304 without touching the database.
 *
 * Correctness rests on one rule the rest of Center already keeps: whoever changes what a
 * device should run calls the push bus's `notify` after committing (that is how online devices
 * learn within a second). The cache watches the same bus and forgets the devices named, or
 * everything on `'all'`. On PostgreSQL the bus relays notifications between replicas, so a
 * change made through one replica empties the others' entries too; when the relay loses its
 * connection it reports `'all'` on reconnecting, since notifications may have been missed.
 *
 * An entry also records the hour window its document was generated in (`generatedAt` moves to
 * the next window every hour, and the ETag with it), and is trusted for at most `maxAgeMs`
 * (default 15 minutes), which bounds the staleness a missed notification could cause. Beyond
 * `maxEntries` the oldest entries go first.
 */

interface Entry {
  etag: string;
  window: number;
  storedAt: number;
}

export interface EtagCacheOptions {
  maxEntries?: number;
  maxAgeMs?: number;
}

export class EtagCache {
  readonly #entries = new Map<string, Entry>();
  readonly #maxEntries: number;
  readonly #maxAgeMs: number;

  constructor(options: EtagCacheOptions = {}) {
    this.#maxEntries = options.maxEntries ?? 1_000_000;
    this.#maxAgeMs = options.maxAgeMs ?? 15 * 60_000;
  }

  /** The ETag last answered to `deviceId` in `window`, if still trusted at `nowMs`. */
  get(deviceId: string, window: number, nowMs: number): string | undefined {
    const entry = this.#entries.get(deviceId);
    if (entry === undefined) return undefined;
    if (entry.window !== window || nowMs - entry.storedAt > this.#maxAgeMs) {
      this.#entries.delete(deviceId);
      return undefined;
    }
    return entry.etag;
  }

  /** Remembers the ETag just computed from the database for `deviceId`. */
  set(deviceId: string, etag: string, window: number, nowMs: number): void {
    this.#entries.delete(deviceId);
    if (this.#entries.size >= this.#maxEntries) {
      // Map keeps insertion order: the first key is the oldest entry.
      this.#entries.delete(this.#entries.keys().next().value as string);
    }
    this.#entries.set(deviceId, { etag, window, storedAt: nowMs });
  }

  /** Forgets the devices named (their state changed), or every device. */
  invalidate(deviceIds: readonly string[] | 'all'): void {
    if (deviceIds === 'all') this.#entries.clear();
    else for (const id of deviceIds) this.#entries.delete(id);
  }

  get size(): number {
    return this.#entries.size;
  }
}
