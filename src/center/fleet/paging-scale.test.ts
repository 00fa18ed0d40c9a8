import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CompiledQuery, sql, type Kysely } from 'kysely';
import { testDatabases } from '../../../test/support/databases.ts';
import { DeviceListQuerySchema } from '../../protocol/index.ts';
import type { Database } from '../db/index.ts';
import { deviceListQuery, listDevices } from './devices.ts';
import { fleetSummary } from './summary.ts';

/*
 * The device list stays a bounded index range scan at 100,000 devices: the database's own plan
 * says which index it walks and that it sorts nothing, and a page deep in the list costs what
 * the first one does.
 */

const DEVICES = 100_000;
const START = Date.UTC(2026, 0, 1);
const GROUPS = ['00000000-0000-7000-8000-00000000000a', '00000000-0000-7000-8000-00000000000b'];
const PROFILE = '00000000-0000-7000-8000-0000000000f1';

/** Device number i: two groups, one in fifty locked, enrolled one per second, some at once. */
const deviceId = (i: number) => `00000000-0000-7000-8000-${i.toString(16).padStart(12, '0')}`;

async function seed(db: Kysely<Database>, bulk: (db: Kysely<Database>) => Promise<void>) {
  for (const id of GROUPS) {
    await db
      .insertInto('device_groups')
      .values({ id, name: id, description: '', created_at: START, updated_at: START })
      .execute();
  }
  await db
    .insertInto('images')
    .values({
      id: PROFILE,
      name: 'img',
      kind: 'system',
      description: '',
      release_version_id: null,
      created_at: START,
      updated_at: START,
    })
    .execute();
  await db
    .insertInto('profiles')
    .values({
      id: PROFILE,
      name: 'work',
      description: '',
      system_image_id: PROFILE,
      isolation_policy: '{}',
      health_check: '{}',
      lease_days: 30,
      cpus: 2,
      memory_mib: 2048,
      reset_policy: 'on-update',
      firmware: 'bios',
      secure_boot: 'off',
      tpm: 'off',
      guest_os: 'linux',
      guest_devices: 'virtio',
      created_at: START,
      updated_at: START,
    })
    .execute();
  await bulk(db);
}

const queries = {
  all: { sort: 'enrolled' },
  group: { sort: 'enrolled', groupId: GROUPS[1] },
  state: { sort: 'enrolled', state: 'locked' },
  groupAndState: { sort: 'enrolled', groupId: GROUPS[0], state: 'active' },
  profile: { sort: 'enrolled', profileId: PROFILE },
  name: { sort: 'enrolled', q: 'pc-9' },
};
/** The index each filter shape must walk. */
const expectedIndex: Record<keyof typeof queries, string> = {
  all: 'devices_enrolled',
  group: 'devices_group_enrolled',
  state: 'devices_state_enrolled',
  groupAndState: 'devices_group_state_enrolled',
  profile: 'devices_enrolled',
  name: 'devices_enrolled',
};

const DAY = 86_400_000;
/** One device in a hundred failed its update, one is updating. */
const updateStatusOf = (i: number) =>
  i % 100 === 1 ? ('failed' as const) : i % 100 === 2 ? ('updating' as const) : ('idle' as const);

/** Now, for the status words: an hour after the last device's last contact. */
const CLOCK = { nowMs: START + DEVICES * 1000 + 3600_000, onlineWindowMs: 18 * 60_000 };

/** A cursor in the middle of the list, as the API makes them. */
const middleCursor = Buffer.from(
  JSON.stringify([START + 50_000 * 1000, deviceId(50_000)]),
).toString('base64url');

test(`the device list walks an index at ${DEVICES} devices on SQLite`, async (t) => {
  const database = await (await testDatabases(t, 'sqlite')).open(t);
  const seeded = performance.now();
  await seed(database.db, (db) =>
    db.transaction().execute(async (trx) => {
      for (let from = 0; from < DEVICES; from += 1000) {
        const devices = [];
        const profiles = [];
        for (let i = from; i < from + 1000; i += 1) {
          devices.push({
            id: deviceId(i),
            name: `pc-${i}`,
            public_key: `key-${i}`,
            inventory: '{}',
            group_id: GROUPS[i % 2]!,
            current_versions: '{}',
            state: i % 50 === 0 ? ('locked' as const) : ('active' as const),
            // Pairs of devices enrol in the same millisecond: the id breaks the tie.
            enrolled_at: START + Math.floor(i / 2) * 2000,
            last_contact_at: START + i * 1000,
            updated_at: START,
            update_status: updateStatusOf(i),
            lease_expires_at: START + i * 1000 + 30 * DAY,
          });
          if (i % 3 === 0) {
            profiles.push({
              device_id: deviceId(i),
              profile_id: PROFILE,
              system_version_id: `version-${i % 4}`,
            });
          }
        }
        await trx.insertInto('devices').values(devices).execute();
        await trx.insertInto('device_profiles').values(profiles).execute();
      }
    }),
  );
  t.diagnostic(`seeded in ${Math.round(performance.now() - seeded)} ms`);
  await sql`analyze`.execute(database.db);

  for (const [shape, filter] of Object.entries(queries) as [keyof typeof queries, object][]) {
    const query = DeviceListQuerySchema.parse({ ...filter, limit: 100, cursor: middleCursor });
    const compiled = deviceListQuery(database.db, query, CLOCK).compile();
    const plan = await database.db.executeQuery<{ detail: string }>(
      CompiledQuery.raw(`explain query plan ${compiled.sql}`, [...compiled.parameters]),
    );
    const details = plan.rows.map((r) => r.detail).join('\n');
    assert.match(
      details,
      new RegExp(`^SEARCH devices USING (COVERING )?INDEX ${expectedIndex[shape]} \\(`, 'm'),
      `${shape}: ${details}`,
    );
    assert.doesNotMatch(details, /TEMP B-TREE/, `${shape} sorts nothing: ${details}`);

    // A page from the middle of the list, by the API's own code, against a generous bound of
    // CPU time: SQLite runs in this process, and unlike the wall clock its CPU time does not grow
    // when a busy machine makes it wait for a core.
    const began = process.cpuUsage();
    const page = await listDevices(database.db, query, CLOCK);
    const spent = process.cpuUsage(began);
    const ms = (spent.user + spent.system) / 1000;
    assert.ok(page.devices.length > 0, shape);
    assert.ok(ms < 250, `${shape}: a page took ${ms.toFixed(1)} ms of CPU`);
  }

  // Walking pages: ordered, no duplicates, and the same count as the table.
  let cursor: string | undefined;
  let seen = 0;
  let last = '';
  const began = performance.now();
  do {
    const page = await listDevices(
      database.db,
      DeviceListQuerySchema.parse({ sort: 'enrolled', groupId: GROUPS[0], limit: 500, cursor }),
      CLOCK,
    );
    for (const d of page.devices) {
      const key = `${String(d.enrolledAt).padStart(16, '0')}/${d.id}`;
      assert.ok(key > last, 'strictly ascending');
      last = key;
    }
    seen += page.devices.length;
    cursor = page.next ?? undefined;
  } while (cursor !== undefined);
  assert.equal(seen, DEVICES / 2);
  t.diagnostic(`100 pages of 500 in ${Math.round(performance.now() - began)} ms`);

  // The console's orders and status words walk their own indexes, and the total is exact.
  const expectations: [object, RegExp, number][] = [
    [{}, /INDEX devices_name\b/, DEVICES],
    [{ groupId: GROUPS[1] }, /INDEX devices_group_name\b/, DEVICES / 2],
    [{ status: 'locked' }, /INDEX devices_state_name\b/, DEVICES / 50],
    [{ status: 'failed' }, /INDEX devices_status_name\b/, DEVICES / 100],
    // An hour after the last contact, every active idle device is offline.
    [{ status: 'offline', sort: 'lastContact' }, /INDEX devices_status_contact\b/, 96_000],
    [{ sort: 'lastContact' }, /INDEX devices_contact\b/, DEVICES],
  ];
  for (const [filter, index, total] of expectations) {
    const query = DeviceListQuerySchema.parse({ ...filter, limit: 100 });
    const compiled = deviceListQuery(database.db, query, CLOCK).compile();
    const plan = await database.db.executeQuery<{ detail: string }>(
      CompiledQuery.raw(`explain query plan ${compiled.sql}`, [...compiled.parameters]),
    );
    const details = plan.rows.map((r) => r.detail).join('\n');
    const what = JSON.stringify(filter);
    assert.match(details, index, `${what}: ${details}`);
    assert.doesNotMatch(details, /TEMP B-TREE/, `${what} sorts nothing: ${details}`);
    const began = process.cpuUsage();
    const page = await listDevices(database.db, query, CLOCK);
    const spent = process.cpuUsage(began);
    const ms = (spent.user + spent.system) / 1000;
    assert.equal(page.total, total, what);
    assert.ok(ms < 250, `${what}: a page and its total took ${ms.toFixed(1)} ms of CPU`);
    t.diagnostic(`${what}: a page and its total in ${ms.toFixed(1)} ms of CPU`);
  }
  // Pages by name, from a cursor deep in the list.
  const deep = await listDevices(
    database.db,
    DeviceListQuerySchema.parse({ limit: 2, q: 'pc-9999' }),
    CLOCK,
  );
  assert.deepEqual(
    deep.devices.map((d) => d.name),
    ['pc-9999', 'pc-99990'],
  );
  assert.equal(deep.total, 11);

  const began2 = process.cpuUsage();
  const summary = await fleetSummary(database.db, CLOCK);
  const spent = process.cpuUsage(began2);
  const summaryMs = (spent.user + spent.system) / 1000;
  t.diagnostic(`the fleet summary in ${summaryMs.toFixed(1)} ms of CPU`);
  assert.ok(summaryMs < 500, `the fleet summary took ${summaryMs.toFixed(1)} ms of CPU`);
  assert.equal(summary.devices.total, DEVICES);
  assert.equal(summary.devices.locked, DEVICES / 50);
  assert.equal(summary.devices.failed, DEVICES / 100);
  assert.equal(summary.devices.updating, DEVICES / 100);
  assert.equal(summary.devices.offline, 96_000);
  assert.equal(summary.devices.online, 0);
  assert.equal(
    summary.versionsByProfile[0]!.versions.reduce((n, v) => n + v.devices, 0),
    // Every third device holds the profile; locked ones count, killed and retired would not.
    Math.ceil(DEVICES / 3),
  );
});

test(`the device list walks an index at ${DEVICES} devices on PostgreSQL`, async (t) => {
  const database = await (await testDatabases(t, 'postgres')).open(t);
  await seed(database.db, async (db) => {
    await sql`
      insert into devices (id, name, public_key, inventory, group_id, current_versions, state,
                           enrolled_at, last_contact_at, updated_at, update_status,
                           lease_expires_at)
      select '00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'), 'pc-' || i, 'key-' || i,
             '{}', case when i % 2 = 0 then ${GROUPS[0]} else ${GROUPS[1]} end, '{}',
             case when i % 50 = 0 then 'locked' else 'active' end,
             ${START}::bigint + (i / 2) * 2000, ${START}::bigint + i * 1000, ${START}::bigint,
             case when i % 100 = 1 then 'failed' when i % 100 = 2 then 'updating' else 'idle' end,
             ${START + 30 * DAY}::bigint + i * 1000
      from generate_series(0, ${DEVICES - 1}) as i`.execute(db);
    await sql`
      insert into device_profiles (device_id, profile_id, system_version_id)
      select id, ${PROFILE}, 'version-' || (right(id, 1)) from devices
      where substr(id, 25)::text ~ '[0369]$'`.execute(db);
    await sql`analyze`.execute(db);
  });

  for (const shape of ['all', 'group', 'state', 'groupAndState'] as const) {
    const query = DeviceListQuerySchema.parse({
      ...queries[shape],
      limit: 100,
      cursor: middleCursor,
    });
    const compiled = deviceListQuery(database.db, query, CLOCK).compile();
    const plan = await database.db.executeQuery<{ 'QUERY PLAN': string }>(
      CompiledQuery.raw(`explain ${compiled.sql}`, [...compiled.parameters]),
    );
    const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
    // PostgreSQL weighs selectivity: a filter half the rows match may walk devices_enrolled and
    // filter, which is as cheap; what matters is an index walk in list order, with no sort. A
    // rare state (one in fifty) must take its own index.
    assert.match(
      text,
      /Index (Only )?Scan using devices_(group_|state_|group_state_)?enrolled on devices/,
      `${shape}: ${text}`,
    );
    if (shape === 'state' || shape === 'all') {
      assert.match(text, new RegExp(`using ${expectedIndex[shape]} on`), `${shape}: ${text}`);
    }
    assert.doesNotMatch(text, /\bSort\b/, `${shape} sorts nothing: ${text}`);
    const page = await listDevices(database.db, query, CLOCK);
    assert.equal(page.devices.length, 100, shape);
  }

  // The console's orders and status words: an index walk in list order, no sort.
  for (const filter of [
    {},
    { status: 'failed' },
    { status: 'locked' },
    { sort: 'lastContact', status: 'offline' },
  ]) {
    const query = DeviceListQuerySchema.parse({ ...filter, limit: 100 });
    const compiled = deviceListQuery(database.db, query, CLOCK).compile();
    const plan = await database.db.executeQuery<{ 'QUERY PLAN': string }>(
      CompiledQuery.raw(`explain ${compiled.sql}`, [...compiled.parameters]),
    );
    const text = plan.rows.map((r) => r['QUERY PLAN']).join('\n');
    const what = JSON.stringify(filter);
    assert.match(
      text,
      /Index (Only )?Scan( Backward)? using devices_\w+ on devices/,
      `${what}: ${text}`,
    );
    assert.doesNotMatch(text, /\bSort\b/, `${what} sorts nothing: ${text}`);
    const began = performance.now();
    const page = await listDevices(database.db, query, CLOCK);
    const ms = performance.now() - began;
    t.diagnostic(`${what}: a page and its total in ${ms.toFixed(1)} ms`);
    assert.ok(page.total > 0, what);
  }
  const began = performance.now();
  const summary = await fleetSummary(database.db, CLOCK);
  const ms = performance.now() - began;
  t.diagnostic(`the fleet summary in ${ms.toFixed(1)} ms`);
  // Wall-clock time, with the server on the same two busy cores: a generous bound.
  assert.ok(ms < 2000, `the fleet summary took ${ms.toFixed(1)} ms`);
  assert.equal(summary.devices.total, DEVICES);
  assert.equal(summary.devices.failed, DEVICES / 100);
});
