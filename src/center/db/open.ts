import { resolve } from 'node:path';
import { type Dialect, Kysely, PostgresDialect, sql } from 'kysely';
import { BulkheadError, ErrorCodes, errnoCode } from '../../protocol/index.ts';
import { type DatabaseLog, queryLogger } from './log.ts';
import { createPostgresPool } from './postgres.ts';
import type { Database } from './schema.ts';
import { NodeSqliteDatabase, NodeSqliteDialect } from './sqlite.ts';

/** The two databases Center runs on. */
export type DatabaseDialect = 'sqlite' | 'postgres';

/** Where a database URL points. */
export type DatabaseTarget =
  | { dialect: 'sqlite'; /** Absolute file path, or `:memory:`. */ path: string }
  | { dialect: 'postgres'; /** The URL as given, for pg. */ url: string };

export interface OpenDatabaseOptions {
  /**
   * `sqlite:/absolute/path.db`, `sqlite:///absolute/path.db`, `sqlite:relative/path.db`,
   * `sqlite::memory:`, a plain file path (SQLite), or `postgres://…` / `postgresql://…`.
   */
  url: string;
  /** Receives query timings and slow queries; nothing is logged without it. */
  log?: DatabaseLog;
  /** Queries at least this slow are logged at warn (default 200 ms). */
  slowQueryMs?: number;
  /** Most connections the PostgreSQL pool opens (default 10). SQLite always has one. */
  maxConnections?: number;
}

/** An open database. */
export interface CenterDatabase {
  /** The typed query builder; valid until `close()`. */
  readonly db: Kysely<Database>;
  /** Which database it is, for the few places SQL differs (advisory locks, say). */
  readonly dialect: DatabaseDialect;
  /**
   * Closes the connection or pool after queries in flight finish. Idempotent.
   * @throws only what the driver throws while closing, which is rare.
   */
  close(): Promise<void>;
}

/**
 * Opens the database a URL names and checks that it answers, so that a wrong path, host or
 * password stops Center at start-up with the URL in the message (its password masked).
 * The schema is not touched: call `migrateToLatest` next.
 *
 * @throws BulkheadError `ERR_DATABASE_URL` when the URL has an unsupported form;
 *   `ERR_DATABASE` when the database cannot be opened or reached (`retryable` when the server
 *   may just not be up yet).
 */
export async function openDatabase(options: OpenDatabaseOptions): Promise<CenterDatabase> {
  const target = parseDatabaseUrl(options.url);
  const shown = displayUrl(options.url);
  let dialect: Dialect;
  try {
    dialect =
      target.dialect === 'sqlite'
        ? new NodeSqliteDialect(new NodeSqliteDatabase(target.path))
        : new PostgresDialect({
            pool: createPostgresPool(target.url, {
              maxConnections: options.maxConnections ?? 10,
              log: options.log,
            }),
          });
  } catch (err) {
    throw openError(shown, err, target.dialect);
  }
  const db = new Kysely<Database>({
    dialect,
    ...(options.log ? { log: queryLogger(options.log, options.slowQueryMs ?? 200) } : {}),
  });
  try {
    await sql`select 1`.execute(db);
  } catch (err) {
    await db.destroy().catch(() => undefined);
    throw openError(shown, err, target.dialect);
  }
  let closing: Promise<void> | undefined;
  return {
    db,
    dialect: target.dialect,
    close: () => (closing ??= db.destroy()),
  };
}

/**
 * Reads a database URL (forms listed at `OpenDatabaseOptions.url`). Relative SQLite paths are
 * resolved against the working directory now, so logs and errors show the file really used.
 *
 * @throws BulkheadError `ERR_DATABASE_URL` naming the URL and the forms accepted.
 */
export function parseDatabaseUrl(url: string): DatabaseTarget {
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]+):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === 'postgres' || scheme === 'postgresql') {
    if (!url.slice(scheme.length + 1).startsWith('//') || !URL.canParse(url)) {
      throw urlError(url, 'it is not a valid URL');
    }
    return { dialect: 'postgres', url };
  }
  if (scheme === 'sqlite') {
    let path = url.slice('sqlite:'.length);
    if (path.startsWith('//')) {
      // sqlite:///abs/path.db is the URL spelling of sqlite:/abs/path.db; sqlite://x/… would
      // name a host, which a file has not.
      if (!path.startsWith('///')) throw urlError(url, 'a SQLite URL names a file, not a host');
      path = path.slice(2);
    }
    if (path === '') throw urlError(url, 'it names no file');
    return { dialect: 'sqlite', path: path === ':memory:' ? path : resolve(path) };
  }
  if (scheme !== undefined) throw urlError(url, `"${scheme}:" is not a supported database`);
  if (url.trim() === '') throw urlError(url, 'it is empty');
  return { dialect: 'sqlite', path: resolve(url) };
}

/** The URL with any password replaced by `***`, fit for logs and error messages. */
export function displayUrl(url: string): string {
  if (!URL.canParse(url)) return url;
  const parsed = new URL(url);
  if (parsed.password === '') return url;
  parsed.password = '***';
  return parsed.href;
}

function urlError(url: string, reason: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.DATABASE_URL,
    `bad database URL "${displayUrl(url)}": ${reason}`,
    {
      hint: 'Use sqlite:/path/to/center.db, a file path, or postgres://user:password@host:port/database.',
    },
  );
}

// Errors that mean "the server is not there (yet)": trying again later may work.
const TRANSIENT_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'EAI_AGAIN',
]);
// PostgreSQL: the server is starting up or shutting down, or has too many connections.
const TRANSIENT_SQLSTATES = new Set(['57P03', '57P01', '53300']);

function openError(shown: string, err: unknown, dialect: DatabaseDialect): BulkheadError {
  const reason = err instanceof Error ? err.message || errnoCode(err) || err.name : String(err);
  const code = errnoCode(err);
  return new BulkheadError(ErrorCodes.DATABASE, `cannot open database ${shown}: ${reason}`, {
    cause: err,
    retryable: code !== undefined && (TRANSIENT_ERRNOS.has(code) || TRANSIENT_SQLSTATES.has(code)),
    hint:
      dialect === 'sqlite'
        ? "Check that the file's directory exists and that Center's user may write to it."
        : 'Check that the server is running and that the host, port, user, password and database are right.',
  });
}
