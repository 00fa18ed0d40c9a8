import type { Clock, Log } from '../../src/engine/index.ts';

/** A log that drops everything but keeps its warnings' messages, for tests to assert on. */
export function recordingLog(): Log & { warnings: string[] } {
  const warnings: string[] = [];
  return {
    warnings,
    debug: () => {},
    info: () => {},
    warn: (_fields, msg) => warnings.push(msg),
    error: () => {},
  };
}

/** A clock standing at `ms` until a test moves it; sleeping takes no time. */
export function fixedClock(ms = Date.parse('2026-03-02T09:15:00Z')): Clock & { ms: number } {
  const clock = { ms, now: () => clock.ms, sleep: async () => {} };
  return clock;
}
