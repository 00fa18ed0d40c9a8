import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit';

/**
 * A store for @fastify/rate-limit: a fixed window per key (a client address) in this process's
 * memory, timed by Center's injected clock (the plugin's own LocalStore reads Date.now()).
 * At most `maxKeys` keys per route: the least recently seen is forgotten first, so a flood of
 * distinct addresses costs bounded memory, and a forgotten address only starts a fresh window
 * of its own limit.
 */
export function clockedRateLimitStore(now: () => Date, maxKeys: number): FastifyRateLimitStoreCtor {
  class ClockedStore implements FastifyRateLimitStore {
    readonly #windows = new Map<string, { startMs: number; count: number }>();

    incr(
      key: string,
      callback: (error: Error | null, result?: { current: number; ttl: number }) => void,
      timeWindow: number,
    ): void {
      const at = now().getTime();
      let window = this.#windows.get(key);
      if (window === undefined || at - window.startMs >= timeWindow) {
        window = { startMs: at, count: 0 };
      }
      window.count += 1;
      // Re-inserted, the key moves to the end: Map order is least recently seen first.
      this.#windows.delete(key);
      this.#windows.set(key, window);
      if (this.#windows.size > maxKeys) this.#windows.delete(this.#windows.keys().next().value!);
      callback(null, { current: window.count, ttl: window.startMs + timeWindow - at });
    }

    /** Each route counts apart. */
    child(): FastifyRateLimitStore {
      return new ClockedStore();
    }
  }
  return ClockedStore;
}
