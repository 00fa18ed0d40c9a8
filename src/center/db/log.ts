import type { LogEvent, Logger } from 'kysely';

/**
 * Where the database layer reports. A subset of pino's logger, so a pino child logger can be
 * passed as is; tests pass a stub. Only SQL text and timings are logged, never parameter
 * values: they may hold token hashes, password hashes or device keys.
 */
export interface DatabaseLog {
  /** Routine detail: each query and how long it took. Must not throw. */
  debug(fields: Record<string, unknown>, message: string): void;
  /** Something an operator should look at: a slow query, a broken connection. Must not throw. */
  warn(fields: Record<string, unknown>, message: string): void;
}

/** A Kysely `log` callback: every query at debug, those slower than `slowQueryMs` at warn. */
export function queryLogger(log: DatabaseLog, slowQueryMs: number): Logger {
  return (event: LogEvent) => {
    const fields: Record<string, unknown> = {
      sql: event.query.sql,
      ms: Math.round(event.queryDurationMillis * 10) / 10,
    };
    // A failed query is not necessarily a problem (a duplicate report is expected to collide);
    // the caller decides, so failures are logged as detail only.
    if (event.level === 'error') fields['err'] = event.error;
    if (event.queryDurationMillis >= slowQueryMs) log.warn(fields, 'slow database query');
    else log.debug(fields, event.level === 'error' ? 'database query failed' : 'database query');
  };
}
