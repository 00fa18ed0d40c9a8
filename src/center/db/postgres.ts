import pg from 'pg';
import type { DatabaseLog } from './log.ts';

const INT8_OID = 20;

/**
 * A pg connection pool for `url`, set up so rows look the same as SQLite's. pg returns `bigint`
 * (int8) values as strings, because they may exceed 2^53; Center's bigint columns are epoch
 * milliseconds, byte sizes and counts, all far below it, and SQLite returns them as numbers, so
 * this pool parses them as numbers. (`count(*)` is int8 too.) The parser is the pool's own, not
 * pg's global one, so nothing else in the process changes.
 */
export function createPostgresPool(
  url: string,
  options: { maxConnections: number; log: DatabaseLog | undefined },
): pg.Pool {
  const types = new pg.TypeOverrides();
  types.setTypeParser(INT8_OID, 'text', Number);
  const pool = new pg.Pool({
    connectionString: url,
    max: options.maxConnections,
    types,
    application_name: 'bulkhead-center',
    // pg waits forever for a connection by default; a server that never answers should fail a
    // request, not hang it.
    connectionTimeoutMillis: 10_000,
  });
  // An idle pooled connection that breaks (the server restarted, say) is reported here; without
  // a listener the 'error' event would crash the process. The pool replaces the connection.
  pool.on('error', (err) => options.log?.warn({ err }, 'idle database connection failed'));
  return pool;
}
