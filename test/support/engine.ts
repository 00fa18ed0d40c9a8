import type { Clock, Log } from '../../src/engine/index.ts';

/** One line a recording log kept: its level, message and fields. */
export interface LogEntry {
  level: 'info' | 'warn' | 'error';
  msg: string;
  fields: Record<string, unknown>;
}

/**
 * A log that drops debug lines and keeps the rest, for tests to assert on: `warnings` holds the
 * warnings' messages, `entries` every info, warn and error line in order.
 */
export function recordingLog(): Log & { warnings: string[]; entries: LogEntry[] } {
  const warnings: string[] = [];
  const entries: LogEntry[] = [];
  const keep = (level: LogEntry['level']) => (fields: object, msg: string) => {
    entries.push({ level, msg, fields: { ...fields } });
  };
  return {
    warnings,
    entries,
    debug: () => {},
    info: keep('info'),
    warn: (fields, msg) => {
      warnings.push(msg);
      keep('warn')(fields, msg);
    },
    error: keep('error'),
  };
}

/** A clock standing at `ms` until a test moves it; sleeping takes no time. */
export function fixedClock(ms = Date.parse('2026-03-02T09:15:00Z')): Clock & { ms: number } {
  const clock = { ms, now: () => clock.ms, sleep: async () => {} };
  return clock;
}
