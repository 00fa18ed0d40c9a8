import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { FastifyRateLimitStore } from '@fastify/rate-limit';
import { forEachDatabase } from '../../../test/support/databases.ts';
import { migrateToLatest, type CenterDatabase } from '../db/index.ts';
import { createRateLimitStore, type RateLimitStoreOptions } from './rate-limit-store.ts';

const MINUTE = 60_000;
/** A whole minute, so that fixed windows start on it. */
const START = Date.UTC(2026, 2, 2, 9, 0);

function incr(store: FastifyRateLimitStore, key: string) {
  let result: { current: number; ttl: number } | undefined;
  store.incr(
    key,
    (err, r) => {
      assert.equal(err, null);
      result = r;
    },
    MINUTE,
    10,
  );
  return result!;
}

/** The store of the route `POST url`, as the plugin makes it. */
function route(options: RateLimitStoreOptions, url = '/login') {
  const store = createRateLimitStore(options);
  const root = new store.Store({});
  return {
    ...store,
    on: (path = url) => root.child({ routeInfo: { method: 'POST', url: path } } as never),
  };
}

test('a fixed window per key on the injected clock, aligned to its length', () => {
  let at = START;
  const { on } = route({ now: () => new Date(at), maxKeys: 100 });
  const store = on();
  assert.deepEqual(incr(store, 'a'), { current: 1, ttl: MINUTE });
  at += 20_000;
  assert.deepEqual(incr(store, 'a'), { current: 2, ttl: 40_000 });
  assert.deepEqual(incr(store, 'b'), { current: 1, ttl: 40_000 }, 'the window every key shares');
  at += 40_000;
  assert.deepEqual(incr(store, 'a'), { current: 1, ttl: MINUTE }, 'a new window');
  assert.deepEqual(incr(on('/other'), 'b'), { current: 1, ttl: MINUTE }, 'each route counts apart');
});

test('a flood of distinct keys keeps the least recently seen out, not the whole table', () => {
  const store = route({ now: () => new Date(0), maxKeys: 1000 }).on();
  for (let i = 0; i < 5; i++) incr(store, 'steady');
  for (let i = 0; i < 100_000; i++) {
    incr(store, `flood-${i}`);
    // The steady client keeps coming back, so it stays among the most recently seen.
    if (i % 500 === 0) incr(store, 'steady');
  }
  assert.equal(incr(store, 'steady').current, 5 + 200 + 1, 'its count survived the flood');
  assert.equal(incr(store, 'flood-0').current, 1, 'long-gone keys were forgotten');
});

forEachDatabase('per-address counts shared through the database', async (t, databases) => {
  /** A replica's store on `database`, flushed only when the test says, and its warnings. */
  function replica(st: TestContext, database: CenterDatabase, clock: { ms: number }) {
    const warnings: string[] = [];
    const store = route({
      now: () => new Date(clock.ms),
      maxKeys: 100,
      shared: {
        db: database.db,
        log: {
          warn: (fields: object, message: string) =>
            warnings.push(`${message} ${JSON.stringify(fields)}`),
        } as never,
        // No tick during the test: it flushes by hand.
        flushEveryMs: 3_600_000,
      },
    });
    st.after(() => store.close());
    return { ...store, warnings };
  }
  const rows = (database: CenterDatabase) =>
    database.db
      .selectFrom('rate_limit_windows')
      .select(['route', 'source', 'window_start', 'window_end', 'count'])
      .orderBy('route')
      .orderBy('source')
      .orderBy('window_start')
      .execute();

  await t.test('replicas add up their counts, one statement a flush', async (st) => {
    const statements: string[] = [];
    const database = await databases.open(st, {
      log: { debug: (fields) => statements.push(String(fields['sql'])), warn: () => {} },
    });
    const clock = { ms: START + 5000 };
    const a = replica(st, database, clock);
    const b = replica(st, database, clock);
    const [loginA, enrolA, loginB] = [a.on(), a.on('/enrol'), b.on()];
    for (let i = 0; i < 3; i++) incr(loginA, '192.0.2.1');
    for (let i = 0; i < 2; i++) incr(loginA, '192.0.2.2');
    incr(enrolA, '192.0.2.1');
    statements.length = 0;
    await a.flush();
    const writes = statements.filter((sql) => !/^delete/i.test(sql));
    assert.equal(writes.length, 1, `one upsert for every key: ${writes.join('\n')}`);
    assert.match(writes[0]!, /^insert into "rate_limit_windows".* on conflict .* returning/is);
    const window = { window_start: START, window_end: START + MINUTE };
    assert.deepEqual(await rows(database), [
      { route: 'POST /enrol', source: '192.0.2.1', ...window, count: 1 },
      { route: 'POST /login', source: '192.0.2.1', ...window, count: 3 },
      { route: 'POST /login', source: '192.0.2.2', ...window, count: 2 },
    ]);

    // B knows nothing of A's counts until it flushes a count of its own for the key.
    assert.equal(incr(loginB, '192.0.2.1').current, 1);
    await b.flush();
    assert.equal(incr(loginB, '192.0.2.1').current, 3 + 1 + 1, "A's three and its own two");
    // A still judges on what it read, plus its own since; its next flush reads B's.
    assert.equal(incr(loginA, '192.0.2.1').current, 3 + 1);
    await a.flush();
    // Its own four, B's first (B's second is not flushed yet), and this one.
    assert.equal(incr(loginA, '192.0.2.1').current, 4 + 1 + 1);
    assert.equal(incr(loginA, '192.0.2.2').current, 2 + 1, 'untouched keys keep their own');

    // A flush with nothing new counted writes nothing.
    await a.flush();
    statements.length = 0;
    await b.flush();
    await b.flush();
    assert.deepEqual(
      statements.filter((sql) => !/^delete/i.test(sql)).length,
      1,
      "only B's one unsent count",
    );
  });

  await t.test('rows of ended windows are pruned, at most once a minute', async (st) => {
    const statements: string[] = [];
    const database = await databases.open(st, {
      log: { debug: (fields) => statements.push(String(fields['sql'])), warn: () => {} },
    });
    const clock = { ms: START };
    const a = replica(st, database, clock);
    const login = a.on();
    incr(login, '192.0.2.1');
    await a.flush();
    const ended = (start: number) => ({
      route: 'POST /gone',
      source: '192.0.2.9',
      window_start: start,
      window_end: start + MINUTE,
      count: 5,
    });
    await database.db
      .insertInto('rate_limit_windows')
      .values(ended(START - MINUTE))
      .execute();

    clock.ms = START + MINUTE;
    incr(login, '192.0.2.1');
    statements.length = 0;
    await a.flush();
    assert.equal(statements.filter((sql) => /^delete/i.test(sql)).length, 1);
    assert.deepEqual(
      (await rows(database)).map((r) => [r.route, r.window_start]),
      [['POST /login', START + MINUTE]],
      'the windows that ended are gone; the current one stays',
    );

    // Within the minute, no flush deletes.
    await database.db.insertInto('rate_limit_windows').values(ended(START)).execute();
    clock.ms = START + MINUTE + 30_000;
    incr(login, '192.0.2.1');
    statements.length = 0;
    await a.flush();
    assert.deepEqual(
      statements.filter((sql) => /^delete/i.test(sql)),
      [],
    );
    assert.equal((await rows(database)).length, 2);
    clock.ms = START + 2 * MINUTE;
    incr(login, '192.0.2.1');
    await a.flush();
    assert.deepEqual(
      (await rows(database)).map((r) => [r.route, r.window_start, r.count]),
      [['POST /login', START + 2 * MINUTE, 1]],
    );
  });

  await t.test(
    'a failed flush fails no request, logs, and keeps its counts for the next',
    async (st) => {
      // Not migrated: the table is missing, so every flush fails until it is.
      const database = await databases.open(st, { migrate: false });
      const clock = { ms: START };
      const a = replica(st, database, clock);
      const login = a.on();
      for (let i = 1; i <= 3; i++) assert.equal(incr(login, '192.0.2.1').current, i);
      await a.flush();
      assert.equal(a.warnings.length, 1, 'the failure is logged');
      assert.match(a.warnings[0]!, /could not be shared through the database/);
      assert.doesNotMatch(a.warnings[0]!, /192\.0\.2\.1/, 'no client named');
      assert.equal(incr(login, '192.0.2.1').current, 4, 'still counting on this replica');

      await migrateToLatest(database.db);
      await a.flush();
      assert.deepEqual(
        (await rows(database)).map((r) => r.count),
        [4],
        'the counts of the failed flush went with the next',
      );
      assert.equal(incr(login, '192.0.2.1').current, 5);
      assert.equal(a.warnings.length, 1);
    },
  );
});
