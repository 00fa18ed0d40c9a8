import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import {
  CompiledQuery,
  type DatabaseConnection,
  type DialectAdapter,
  type Driver,
  SqliteAdapter,
  SqliteDialect,
  type SqliteDatabase,
  SqliteDriver,
  type SqliteStatement,
} from 'kysely';

/*
 * SQLite through Node's built-in `node:sqlite`: no native add-on to build, nothing to install.
 * Kysely's SqliteDialect was written for better-sqlite3, so this file adapts `DatabaseSync` to
 * the small part of better-sqlite3's shape that Kysely uses (`SqliteDatabase`), and adjusts two
 * things about Kysely's dialect (see `NodeSqliteDialect`).
 */

/** How long a statement waits for another process's lock on the file before failing. */
const BUSY_TIMEOUT_MS = 5000;

/** Prepared statements kept for reuse; Kysely compiles a query shape to the same SQL each time. */
const STATEMENT_CACHE_SIZE = 256;

/** One prepared statement, in the shape Kysely's SQLite driver calls. */
class NodeSqliteStatement implements SqliteStatement {
  /**
   * True when the statement returns rows (a SELECT, a PRAGMA that answers, or any statement with
   * RETURNING): Kysely then reads them with `all()` instead of counting changes with `run()`.
   */
  readonly reader: boolean;
  readonly #statement: StatementSync;

  constructor(statement: StatementSync) {
    this.#statement = statement;
    this.reader = statement.columns().length > 0;
  }

  /**
   * Runs the statement and returns every row. Parameters must be values SQLite can bind
   * (null, number, bigint, string, Uint8Array); anything else throws a TypeError from Node.
   */
  all(parameters: ReadonlyArray<unknown>): unknown[] {
    // node:sqlite's rows have no prototype; copied into plain objects they are like pg's rows
    // (equal under assert.deepStrictEqual, with the usual Object methods).
    return this.#statement.all(...(parameters as SQLInputValue[])).map((row) => ({ ...row }));
  }

  /** Runs a statement that returns no rows; says how many rows it changed. */
  run(parameters: ReadonlyArray<unknown>): {
    changes: number | bigint;
    lastInsertRowid: number | bigint;
  } {
    return this.#statement.run(...(parameters as SQLInputValue[]));
  }

  /** Runs the statement and yields its rows one at a time (Kysely's `stream()`). */
  *iterate(parameters: ReadonlyArray<unknown>): IterableIterator<unknown> {
    for (const row of this.#statement.iterate(...(parameters as SQLInputValue[]))) {
      yield { ...row };
    }
  }
}

/**
 * A `DatabaseSync` in better-sqlite3's clothes. Kysely prepares a statement per query; this keeps
 * the most recently used ones (a small LRU keyed by SQL text) because preparing is a large part
 * of a simple query's cost. Kysely serialises all use of the one connection, so a cached
 * statement is never run twice at once.
 */
export class NodeSqliteDatabase implements SqliteDatabase {
  readonly #database: DatabaseSync;
  readonly #statements = new Map<string, NodeSqliteStatement>();
  #isOpen = true;

  /**
   * Opens (creating if needed) the database file at `path` (`:memory:` for a private in-memory
   * one) and sets it up for a server: WAL journal, foreign keys enforced, busy timeout.
   *
   * @throws Node's `ERR_SQLITE_ERROR` when the file cannot be opened or is not a database.
   */
  constructor(path: string) {
    this.#database = new DatabaseSync(path, {
      enableForeignKeyConstraints: true,
      timeout: BUSY_TIMEOUT_MS,
    });
    try {
      this.#database.exec(
        // WAL: readers never block the writer, and a commit is one append. synchronous=NORMAL is
        // safe in WAL mode (no corruption on power loss; at worst the last commits before it are
        // lost) and saves an fsync per transaction, which is most of a report batch's cost.
        `pragma journal_mode = wal;
         pragma synchronous = normal;
         pragma foreign_keys = on;
         pragma busy_timeout = ${BUSY_TIMEOUT_MS};`,
      );
    } catch (err) {
      this.#database.close();
      throw err;
    }
  }

  /** A prepared statement for `sql`, reused when the same SQL ran recently. */
  prepare(sql: string): SqliteStatement {
    const cached = this.#statements.get(sql);
    if (cached !== undefined) {
      // Re-insert to mark it most recently used: a Map iterates in insertion order.
      this.#statements.delete(sql);
      this.#statements.set(sql, cached);
      return cached;
    }
    const statement = new NodeSqliteStatement(this.#database.prepare(sql));
    this.#statements.set(sql, statement);
    if (this.#statements.size > STATEMENT_CACHE_SIZE) {
      const oldest = this.#statements.keys().next().value;
      if (oldest !== undefined) this.#statements.delete(oldest);
    }
    return statement;
  }

  /** Closes the database; later calls do nothing. */
  close(): void {
    if (!this.#isOpen) return;
    this.#isOpen = false;
    this.#statements.clear();
    this.#database.close();
  }
}

/**
 * Kysely's driver starts transactions with a plain (deferred) `begin`. A deferred transaction
 * that reads and then writes cannot wait for another process's write lock: SQLite fails it with
 * SQLITE_BUSY at once, busy timeout or not. `begin immediate` takes the write lock up front, so
 * the busy timeout applies. Within this process Kysely already serialises the one connection,
 * so nothing is lost by it.
 */
class ImmediateSqliteDriver extends SqliteDriver {
  override async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin immediate'));
  }
}

/**
 * Kysely assumes SQLite cannot run DDL in a transaction, so its Migrator would apply
 * migrations statement by statement: a crash halfway would leave half a schema. SQLite can,
 * so each migration run is one transaction here, as on PostgreSQL.
 */
class TransactionalDdlSqliteAdapter extends SqliteAdapter {
  override get supportsTransactionalDdl(): boolean {
    return true;
  }
}

/** Kysely's SQLite dialect over a `NodeSqliteDatabase`, with the two changes above. */
export class NodeSqliteDialect extends SqliteDialect {
  readonly #database: NodeSqliteDatabase;

  constructor(database: NodeSqliteDatabase) {
    super({ database });
    this.#database = database;
  }

  override createDriver(): Driver {
    return new ImmediateSqliteDriver({ database: this.#database });
  }

  override createAdapter(): DialectAdapter {
    return new TransactionalDdlSqliteAdapter();
  }
}
