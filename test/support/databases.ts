import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  migrateToLatest,
  openDatabase,
  type CenterDatabase,
  type DatabaseDialect,
  type DatabaseLog,
} from '../../src/center/db/index.ts';
import { tempDir, type Cleanups } from './fixtures.ts';
import { createDatabase, startPostgres } from './postgres.ts';

/** The databases Center runs on (DESIGN §5): every database test runs on each. */
export const DIALECTS: readonly DatabaseDialect[] = ['sqlite', 'postgres'];

/** New databases of one dialect for a test and its subtests. */
export interface TestDatabases {
  dialect: DatabaseDialect;
  /** A URL to a new empty database, removed when `t` ends. */
  emptyUrl(t: TestContext): Promise<string>;
  /**
   * A new database, opened and brought to the latest schema (unless `migrate` is false); it is
   * closed, then removed, when `t` ends.
   */
  open(t: TestContext, options?: { log?: DatabaseLog; migrate?: boolean }): Promise<CenterDatabase>;
}

/**
 * Declares the test `NAME on DIALECT` once for each dialect Center supports, and runs `body`
 * with new databases of that dialect: SQLite files in temp dirs, or databases on a throwaway
 * PostgreSQL server (test/support/postgres.ts) that the test and its subtests share.
 */
export function forEachDatabase(
  name: string,
  body: (t: TestContext, databases: TestDatabases) => Promise<void>,
): void {
  for (const dialect of DIALECTS) {
    test(`${name} on ${dialect}`, async (t) => body(t, await testDatabases(t, dialect)));
  }
}

/** Databases of `dialect` for the test `t` and its subtests. */
export async function testDatabases(
  t: TestContext,
  dialect: DatabaseDialect,
): Promise<TestDatabases> {
  // A test's own hooks run in the order they were added; what is made here is released in the
  // reverse order instead, so a database closes before it is dropped, and before its server stops.
  const stacks = new Map<TestContext, (() => unknown)[]>();
  const cleanups = (of: TestContext): Cleanups => {
    let stack = stacks.get(of);
    if (stack === undefined) {
      const made: (() => unknown)[] = [];
      stacks.set(of, made);
      of.after(() => releaseAll(made));
      stack = made;
    }
    const held = stack;
    return { after: (release) => void held.push(release) };
  };

  let emptyUrl: (st: TestContext) => Promise<string>;
  if (dialect === 'sqlite') {
    emptyUrl = async (st) =>
      `sqlite:${join(await tempDir(cleanups(st), 'bulkhead-db-'), 'center.db')}`;
  } else {
    const server = await startPostgres(cleanups(t));
    emptyUrl = (st) => createDatabase(cleanups(st), server);
  }
  return {
    dialect,
    emptyUrl,
    async open(st, options = {}) {
      const url = await emptyUrl(st);
      const database = await openDatabase({ url, log: options.log });
      cleanups(st).after(() => database.close());
      if (options.migrate !== false) await migrateToLatest(database.db);
      return database;
    },
  };
}

/** Runs every release, newest first, even after one fails; then fails with the first error. */
async function releaseAll(releases: (() => unknown)[]): Promise<void> {
  const errors: unknown[] = [];
  for (const release of releases.reverse()) {
    try {
      await release();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
}
