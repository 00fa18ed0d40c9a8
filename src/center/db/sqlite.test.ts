import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { DatabaseSync } from 'node:sqlite';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Kysely, sql } from 'kysely';
import { NodeSqliteDatabase, NodeSqliteDialect } from './sqlite.ts';

interface Db {
  t: { id: number; name: string };
}

test('the node:sqlite adapter reads rows, counts changes and streams', async () => {
  const db = new Kysely<Db>({ dialect: new NodeSqliteDialect(new NodeSqliteDatabase(':memory:')) });
  try {
    await sql`create table t (id integer primary key, name text not null)`.execute(db);
    const inserted = await db
      .insertInto('t')
      .values([
        { id: 1, name: 'a' },
        { id: 2, name: 'b' },
      ])
      .executeTakeFirst();
    assert.equal(inserted.numInsertedOrUpdatedRows, 2n);
    // RETURNING makes an insert a reader.
    assert.deepEqual(
      await db.insertInto('t').values({ id: 3, name: 'c' }).returning(['id', 'name']).execute(),
      [{ id: 3, name: 'c' }],
    );
    const rows = await db.selectFrom('t').selectAll().orderBy('id').execute();
    assert.deepEqual(rows, [
      { id: 1, name: 'a' },
      { id: 2, name: 'b' },
      { id: 3, name: 'c' },
    ]);
    assert.equal(Object.getPrototypeOf(rows[0]), Object.prototype, 'plain objects, as from pg');
    const updated = await db
      .updateTable('t')
      .set({ name: 'z' })
      .where('id', '>', 1)
      .executeTakeFirst();
    assert.equal(updated.numUpdatedRows, 2n);
    const streamed: unknown[] = [];
    for await (const row of db.selectFrom('t').select('id').orderBy('id').stream())
      streamed.push(row);
    assert.deepEqual(streamed, [{ id: 1 }, { id: 2 }, { id: 3 }]);
    // The same query again reuses its prepared statement and still sees new data.
    for (let i = 0; i < 300; i++)
      await db.selectFrom('t').select('id').where('id', '=', i).execute();
    assert.equal((await db.selectFrom('t').selectAll().execute()).length, 3);
  } finally {
    await db.destroy();
  }
});

test('transactions take the write lock at once, so another process waits instead of failing', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-sqlite-'));
  const path = join(dir, 'x.db');
  const db = new Kysely<Db>({ dialect: new NodeSqliteDialect(new NodeSqliteDatabase(path)) });
  try {
    await sql`create table t (id integer primary key, name text not null)`.execute(db);
    assert.equal(
      (await sql<{ journal_mode: string }>`pragma journal_mode`.execute(db)).rows[0]?.journal_mode,
      'wal',
    );
    assert.equal(
      (await sql<{ foreign_keys: number }>`pragma foreign_keys`.execute(db)).rows[0]?.foreign_keys,
      1,
    );
    const other = new DatabaseSync(path, { timeout: 0 });
    try {
      await db.transaction().execute(async () => {
        // No write yet, but the lock is held: another writer is told the database is busy.
        assert.throws(() => other.exec(`insert into t values (9, 'x')`), /locked|busy/i);
      });
      other.exec(`insert into t values (9, 'x')`);
    } finally {
      other.close();
    }
  } finally {
    await db.destroy();
    await rm(dir, { recursive: true, force: true });
  }
});
