/**
 * Fixed-window counter per key (a client address), in this process only: with N replicas the
 * effective limit is N times this, which still bounds guessing. Time comes from the injected
 * clock. Windows are dropped when they end, so memory follows the number of recent clients.
 */
export class RateLimiter {
  readonly #limit: number;
  readonly #windowMs: number;
  readonly #now: () => Date;
  readonly #windows = new Map<string, { startMs: number; count: number }>();

  constructor(options: { limit: number; windowMs: number; now: () => Date }) {
    this.#limit = options.limit;
    this.#windowMs = options.windowMs;
    this.#now = options.now;
  }

  /** Counts one attempt for `key`; false when it is over the limit for the current window. */
  isAllowed(key: string): boolean {
    const nowMs = this.#now().getTime();
    if (this.#windows.size > 10_000) this.#prune(nowMs);
    const current = this.#windows.get(key);
    if (current === undefined || nowMs - current.startMs >= this.#windowMs) {
      this.#windows.set(key, { startMs: nowMs, count: 1 });
      return true;
    }
    current.count += 1;
    return current.count <= this.#limit;
  }

  #prune(nowMs: number): void {
    for (const [key, w] of this.#windows) {
      if (nowMs - w.startMs >= this.#windowMs) this.#windows.delete(key);
    }
  }
}
