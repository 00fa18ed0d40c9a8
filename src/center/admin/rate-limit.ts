/**
 * Counts failed logins per key (username + client address) in a sliding window, in this
 * process's memory: each Center replica keeps its own count, so behind a load balancer with N
 * replicas an attacker gets up to N × `maxFailures` tries per window. That bound is still what
 * makes online guessing hopeless; a shared limiter would need the database on every failure.
 */
export interface LoginLimiter {
  /** Seconds until the key may try again; 0 when it may now. */
  retryAfter(key: string): number;
  /** Records a failed attempt. */
  fail(key: string): void;
  /** Forgets the key's failures (after a successful login). */
  reset(key: string): void;
}

export function createLoginLimiter(options: {
  now: () => Date;
  maxFailures?: number;
  windowMs?: number;
  /** Most keys remembered; the oldest are forgotten first, so memory stays bounded. */
  maxKeys?: number;
}): LoginLimiter {
  const maxFailures = options.maxFailures ?? 5;
  const windowMs = options.windowMs ?? 15 * 60_000;
  const maxKeys = options.maxKeys ?? 10_000;
  const failures = new Map<string, number[]>();

  const recent = (key: string, at: number): number[] => {
    const times = (failures.get(key) ?? []).filter((t) => t > at - windowMs);
    if (times.length === 0) failures.delete(key);
    else failures.set(key, times);
    return times;
  };

  return {
    retryAfter(key) {
      const at = options.now().getTime();
      const times = recent(key, at);
      if (times.length < maxFailures) return 0;
      // The window frees a slot when the oldest failure that still counts leaves it.
      const oldest = times[times.length - maxFailures]!;
      return Math.max(1, Math.ceil((oldest + windowMs - at) / 1000));
    },
    fail(key) {
      const at = options.now().getTime();
      const times = recent(key, at);
      times.push(at);
      failures.delete(key); // re-insert: Map order is then least recently failed first
      failures.set(key, times.slice(-maxFailures));
      while (failures.size > maxKeys) failures.delete(failures.keys().next().value!);
    },
    reset(key) {
      failures.delete(key);
    },
  };
}
