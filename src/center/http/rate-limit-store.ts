import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../db/index.ts';

/*
 * A store for @fastify/rate-limit: fixed windows per (route, key), a key being a client address,
 * timed by Center's injected clock (the plugin's own LocalStore reads Date.now()). Windows are
 * aligned to multiples of their length, so that every replica counts the same window.
 *
 * Requests are counted in this process's memory. With `shared` (PostgreSQL, several replicas),
 * every `flushEveryMs` the increments counted since the last flush go to the table
 * `rate_limit_windows` in one batched upsert that adds them to the row of their window and
 * returns the totals every replica has flushed; a request is judged on the last total read plus
 * the increments not yet flushed. So the replicas share the limit within about one flush
 * interval, and a flood of requests costs one write a flush, not one a request. A failed flush
 * is logged and its increments are kept, to be sent with the next one: requests are never
 * failed for it. Not @fastify/rate-limit's RedisStore: Center has no Redis, and its database
 * is what the replicas share.
 *
 * At most `maxKeys` keys per route: the least recently seen is forgotten first, so a flood of
 * distinct addresses costs bounded memory (and bounded flushes), and a forgotten address only
 * starts its window afresh, from the shared total at its next flush.
 */

/** How many rows one upsert statement carries (PostgreSQL takes at most 65535 parameters). */
const ROWS_PER_STATEMENT = 1000;
/** How often (at most) a process deletes the rows of ended windows. */
const PRUNE_EVERY_MS = 60_000;

interface Window {
  readonly startMs: number;
  readonly endMs: number;
  /** The total of every replica, as last read from the table. */
  shared: number;
  /** Counted here and on their way to the table in a flush not yet answered. */
  sending: number;
  /** Counted here since the last flush began. */
  local: number;
}

export interface RateLimitStoreOptions {
  now: () => Date;
  /** Keys kept per route. */
  maxKeys: number;
  /** The table the replicas share, when there are replicas (PostgreSQL); memory only without. */
  shared?: {
    db: Kysely<Database>;
    log: Pick<Logger, 'warn'>;
    /** How often the counts are flushed, in real milliseconds (the timer is unref'd); null: never by itself. */
    flushEveryMs: number | null;
  };
}

export interface RateLimitStore {
  /** What @fastify/rate-limit's `store` option takes. */
  Store: FastifyRateLimitStoreCtor;
  /**
   * Sends the increments counted so far and reads back the totals now, after any flush under
   * way; resolves when this replica judges by them (also on failure, which is logged). A no-op
   * without `shared`.
   */
  flush(): Promise<void>;
  /** Stops the timer and waits for a flush under way. */
  close(): Promise<void>;
}

export function createRateLimitStore(options: RateLimitStoreOptions): RateLimitStore {
  const { now, maxKeys, shared } = options;
  /** Every route's windows by key, the least recently seen first (Map order). */
  const routes = new Map<string, Map<string, Window>>();
  let prunedAt = Number.NEGATIVE_INFINITY;

  class ClockedStore implements FastifyRateLimitStore {
    readonly #windows: Map<string, Window>;

    constructor(_options?: unknown, route = '') {
      let windows = routes.get(route);
      if (windows === undefined) {
        windows = new Map();
        routes.set(route, windows);
      }
      this.#windows = windows;
    }

    incr(
      key: string,
      callback: (error: Error | null, result?: { current: number; ttl: number }) => void,
      timeWindow: number,
    ): void {
      const at = now().getTime();
      const length = Math.max(1, timeWindow);
      const startMs = at - (((at % length) + length) % length);
      let window = this.#windows.get(key);
      if (window === undefined || window.startMs !== startMs) {
        // A window that ended takes its unsent increments with it: they no longer count.
        window = { startMs, endMs: startMs + length, shared: 0, sending: 0, local: 0 };
      }
      window.local += 1;
      // Re-inserted, the key moves to the end: Map order is least recently seen first.
      this.#windows.delete(key);
      this.#windows.set(key, window);
      if (this.#windows.size > maxKeys) this.#windows.delete(this.#windows.keys().next().value!);
      callback(null, {
        current: window.shared + window.sending + window.local,
        ttl: window.endMs - at,
      });
    }

    /** Each route counts apart, under its method and URL. */
    child(routeOptions: Parameters<FastifyRateLimitStore['child']>[0]): FastifyRateLimitStore {
      // What the plugin passes is the route's merged limits, the route itself under `routeInfo`
      // (its type declares the route's options instead).
      const info =
        (routeOptions as unknown as { routeInfo?: { method?: unknown; url?: unknown } })
          .routeInfo ?? {};
      return new ClockedStore(undefined, `${String(info.method)} ${String(info.url)}`);
    }
  }

  if (shared === undefined) {
    return { Store: ClockedStore, flush: () => Promise.resolve(), close: () => Promise.resolve() };
  }

  const { db, log } = shared;

  /** One flush: every window counted in since the last, sent and read back. */
  const flushOnce = async (): Promise<void> => {
    const at = now().getTime();
    const batch: { route: string; source: string; window: Window; count: number }[] = [];
    for (const [route, windows] of routes) {
      for (const [source, window] of windows) {
        if (window.local === 0 || window.endMs <= at) continue;
        batch.push({ route, source, window, count: window.local });
        window.sending += window.local;
        window.local = 0;
      }
    }
    // The same order on every replica, so that concurrent upserts lock rows in one order.
    batch.sort((a, b) =>
      a.route !== b.route
        ? a.route < b.route
          ? -1
          : 1
        : a.source !== b.source
          ? a.source < b.source
            ? -1
            : 1
          : a.window.startMs - b.window.startMs,
    );
    let sent = 0;
    try {
      if (at - prunedAt >= PRUNE_EVERY_MS) {
        await db.deleteFrom('rate_limit_windows').where('window_end', '<=', at).execute();
        prunedAt = at;
      }
      for (; sent < batch.length; sent += ROWS_PER_STATEMENT) {
        const part = batch.slice(sent, sent + ROWS_PER_STATEMENT);
        const totals = await db
          .insertInto('rate_limit_windows')
          .values(
            part.map((row) => ({
              route: row.route,
              source: row.source,
              window_start: row.window.startMs,
              window_end: row.window.endMs,
              count: row.count,
            })),
          )
          .onConflict((oc) =>
            oc.columns(['route', 'source', 'window_start']).doUpdateSet((eb) => ({
              count: eb('rate_limit_windows.count', '+', eb.ref('excluded.count')),
            })),
          )
          .returning(['route', 'source', 'window_start', 'count'])
          .execute();
        const byRow = new Map(
          totals.map((t) => [`${t.route}\n${t.source}\n${t.window_start}`, Number(t.count)]),
        );
        for (const row of part) {
          const total = byRow.get(`${row.route}\n${row.source}\n${row.window.startMs}`) ?? 0;
          row.window.sending -= row.count;
          row.window.shared = Math.max(row.window.shared, total);
        }
      }
    } catch (err) {
      // Requests go on being judged on what this replica counted; the increments not sent
      // are sent with the next flush. The error names no client and holds no secret.
      for (const row of batch.slice(sent)) {
        row.window.sending -= row.count;
        row.window.local += row.count;
      }
      log.warn(
        {
          err: { message: err instanceof Error ? err.message : String(err) },
          windows: batch.length - sent,
        },
        'rate limit counts could not be shared through the database; counting on this replica until the next flush',
      );
    }
  };

  let queue: Promise<void> = Promise.resolve();
  let busy = false;
  const flush = (): Promise<void> => {
    queue = queue.then(async () => {
      busy = true;
      try {
        await flushOnce();
      } finally {
        busy = false;
      }
    });
    return queue;
  };
  const timer =
    shared.flushEveryMs === null
      ? undefined
      : setInterval(() => {
          // A tick while a slow flush is still under way adds nothing to the queue.
          if (!busy) void flush();
        }, shared.flushEveryMs);
  timer?.unref();

  return {
    Store: ClockedStore,
    flush,
    async close() {
      clearInterval(timer);
      await queue;
    },
  };
}
