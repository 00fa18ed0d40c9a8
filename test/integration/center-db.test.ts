import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import type { Kysely } from 'kysely';
import {
  type CenterDatabase,
  constraintViolation,
  type Database,
  type DatabaseDialect,
  type DatabaseLog,
  migrateToLatest,
  newId,
  type NewRow,
  openDatabase,
} from '../../src/center/db/index.ts';
import { isBulkheadError } from '../../src/protocol/errors.ts';
import { forEachDatabase } from '../support/databases.ts';

/** URLs of the right form that cannot be opened, each with a part the error must show. */
const UNOPENABLE: Record<
  DatabaseDialect,
  (emptyUrl: string) => { url: string; shows: string; isRetryable: boolean }[]
> = {
  sqlite: () => [
    {
      url: 'sqlite:/nonexistent-bulkhead-dir/center.db',
      shows: '/nonexistent-bulkhead-dir/center.db',
      isRetryable: false,
    },
  ],
  postgres: (emptyUrl) => {
    const missing = new URL(emptyUrl);
    missing.pathname = '/no_such_database';
    return [
      { url: missing.href, shows: 'no_such_database', isRetryable: false },
      // Nothing listens on port 1; the password must not appear in the message.
      {
        url: 'postgres://center:hunter2@127.0.0.1:1/center',
        shows: 'postgres://center:***@127.0.0.1:1/center',
        isRetryable: true,
      },
    ];
  },
};

const EXPECTED_TABLES = [
  'admin_users',
  'api_tokens',
  'apps',
  'audit_log',
  'commands',
  'device_apps',
  'device_events',
  'device_groups',
  'device_profiles',
  'devices',
  'enrolment_tokens',
  'fleet_version_snapshots',
  'image_versions',
  'images',
  'login_throttle',
  'profile_apps',
  'profile_images',
  'profiles',
  'publisher_keys',
  'rate_limit_windows',
  'rollout_devices',
  'rollouts',
];

const NOW = Date.parse('2025-06-01T12:00:00Z');

forEachDatabase("Center's database", async (t, databases) => {
  /** Runs `use` on a new, migrated database, closed when the subtest ends. */
  async function withDatabase(
    st: TestContext,
    use: (c: CenterDatabase) => Promise<void>,
    options: { log?: DatabaseLog; migrate?: boolean } = {},
  ): Promise<void> {
    const c = await databases.open(st, options);
    assert.equal(c.dialect, databases.dialect);
    await use(c);
  }

  await t.test('migrations create every table once; running them again does nothing', (st) =>
    withDatabase(
      st,
      async ({ db }) => {
        assert.deepEqual(await migrateToLatest(db), {
          applied: [
            '0001_initial',
            '0002_publishers_and_releases',
            '0004_fleet',
            '0005_rollouts',
            '0006_login_throttle',
            '0007_rate_limit_windows',
            '0008_admin_user_disabled',
            '0009_rollout_release',
            '0010_profile_machine',
            '0011_device_encryption_key',
            '0012_profile_user_apps',
            '0013_personal_profiles',
            '0014_console',
          ],
          latest: '0014_console',
        });
        assert.deepEqual(await migrateToLatest(db), {
          applied: [],
          latest: '0014_console',
        });
        const tables = (await db.introspection.getTables()).map((table) => table.name).sort();
        assert.deepEqual(tables, EXPECTED_TABLES);
      },
      { migrate: false },
    ),
  );

  await t.test('every table takes rows and gives them back unchanged', async (st) => {
    const logged: Record<string, unknown>[] = [];
    const log: DatabaseLog = {
      debug: (fields) => logged.push(fields),
      warn: (fields) => logged.push(fields),
    };
    await withDatabase(
      st,
      async ({ db }) => {
        const rows = seedRows();
        await insertAll(db, rows);
        for (const table of INSERT_ORDER) {
          const stored = await db.selectFrom(table).selectAll().execute();
          assert.deepEqual(sortRows(stored), sortRows(rows[table]), `table ${table}`);
        }
        // bigint columns come back as numbers on both databases, even past 2^32.
        const version = await db
          .selectFrom('image_versions')
          .select(['size'])
          .executeTakeFirstOrThrow();
        assert.equal(version.size, 5_000_000_000);
        const count = await db
          .selectFrom('devices')
          .select((eb) => eb.fn.countAll<number>().as('n'))
          .executeTakeFirstOrThrow();
        assert.equal(count.n, 2);
      },
      { log },
    );
    assert.ok(logged.some((fields) => typeof fields['sql'] === 'string'));
    const text = JSON.stringify(logged);
    assert.ok(!text.includes('scrypt$'), 'parameter values (a password hash) are never logged');
  });

  await t.test('a device cannot record the same event twice', (st) =>
    withDatabase(st, async ({ db }) => {
      const rows = seedRows();
      await insertAll(db, rows);
      const [first] = rows.device_events;
      assert.ok(first);
      await assert.rejects(
        db
          .insertInto('device_events')
          .values({ ...first, payload: '{"replayed":true}' })
          .execute(),
        (err) => constraintViolation(err) === 'unique',
      );
      // Ingestion inserts batches that may overlap what arrived before: only new events land.
      const result = await db
        .insertInto('device_events')
        .values([first, { ...first, event_id: 'evt-3', received_at: NOW + 5 }])
        .onConflict((oc) => oc.columns(['device_id', 'event_id']).doNothing())
        .executeTakeFirst();
      assert.equal(result.numInsertedOrUpdatedRows, 1n);
      // Event ids are the device's own: another device may use the same one.
      const [, other] = rows.devices;
      assert.ok(other);
      await db
        .insertInto('device_events')
        .values({ ...first, device_id: other.id })
        .execute();
      const events = await db
        .selectFrom('device_events')
        .select(['device_id', 'event_id', 'payload'])
        .orderBy('device_id')
        .orderBy('event_id')
        .execute();
      assert.equal(events.length, 4);
      assert.equal(
        events.find((e) => e.device_id === first.device_id && e.event_id === first.event_id)
          ?.payload,
        first.payload,
        'the first copy of an event is the one kept',
      );
    }),
  );

  await t.test('keyset pagination returns each of 5,000 devices once, in order', (st) =>
    withDatabase(st, async ({ db }) => {
      const rows = seedRows();
      await insertAll(db, rows);
      const [groupA, groupB] = rows.device_groups.map((g) => g.id);
      assert.ok(groupA && groupB);
      const devices: NewRow<'devices'>[] = [];
      for (let i = 0; i < 5000; i++) {
        devices.push({
          id: newId(NOW - 100_000 + i),
          name: `pc-${i}`,
          public_key: `key-${i}`,
          inventory: '{}',
          group_id: i % 3 === 0 ? groupB : groupA,
          current_versions: '{}',
          state: i % 4 === 0 ? 'locked' : 'active',
          enrolled_at: NOW - 100_000,
          // Only 700 distinct times: many devices share one, so the id must break ties.
          last_contact_at: NOW - ((i * 7919) % 700) * 1000,
          updated_at: NOW,
        });
      }
      for (let i = 0; i < devices.length; i += 500) {
        await db
          .insertInto('devices')
          .values(devices.slice(i, i + 500))
          .execute();
      }

      type Filter = { group_id?: string; state?: 'active' | 'locked' };
      const filters: Filter[] = [{}, { state: 'locked' }, { group_id: groupA, state: 'active' }];
      for (const filter of filters) {
        const base = () => {
          let q = db.selectFrom('devices').select(['id', 'last_contact_at']);
          if (filter.group_id !== undefined) q = q.where('group_id', '=', filter.group_id);
          if (filter.state !== undefined) q = q.where('state', '=', filter.state);
          return q.orderBy('last_contact_at', 'desc').orderBy('id', 'desc');
        };
        const seen: { id: string; last_contact_at: number }[] = [];
        let cursor: { last_contact_at: number; id: string } | undefined;
        for (let pages = 0; ; pages++) {
          assert.ok(pages <= 60, 'pagination ends');
          let q = base().limit(100);
          if (cursor) {
            const after = cursor;
            q = q.where((eb) =>
              eb(
                eb.refTuple('last_contact_at', 'id'),
                '<',
                eb.tuple(after.last_contact_at, after.id),
              ),
            );
          }
          const page = await q.execute();
          seen.push(...page);
          const last = page.at(-1);
          if (page.length < 100 || last === undefined) break;
          cursor = last;
        }
        const wanted = [...rows.devices, ...devices].filter(
          (d) =>
            (filter.group_id === undefined || d.group_id === filter.group_id) &&
            (filter.state === undefined || d.state === filter.state),
        );
        const label = JSON.stringify(filter);
        assert.equal(seen.length, wanted.length, `${label}: every device once`);
        assert.equal(new Set(seen.map((d) => d.id)).size, seen.length, `${label}: no repeats`);
        assert.deepEqual(
          new Set(seen.map((d) => d.id)),
          new Set(wanted.map((d) => d.id)),
          `${label}: the right devices`,
        );
        for (let i = 1; i < seen.length; i++) {
          assert.ok(seen[i - 1]!.last_contact_at >= seen[i]!.last_contact_at, `${label}: order`);
        }
        // The pages, joined, are the one ordered list the database itself gives.
        assert.deepEqual(seen, await base().execute(), `${label}: the database's own order`);
      }
    }),
  );

  await t.test('foreign keys and checks hold', (st) =>
    withDatabase(st, async ({ db }) => {
      const rows = seedRows();
      await insertAll(db, rows);
      const [device] = rows.devices;
      const [group] = rows.device_groups;
      const [admin] = rows.admin_users;
      assert.ok(device && group && admin);
      const violates = (kind: string) => (err: unknown) => {
        assert.equal(constraintViolation(err), kind, String(err));
        return true;
      };

      await assert.rejects(
        db
          .insertInto('devices')
          .values({ ...device, id: newId(NOW), public_key: 'k', group_id: 'no-such-group' })
          .execute(),
        violates('foreign-key'),
      );
      await assert.rejects(
        db.deleteFrom('device_groups').where('id', '=', group.id).execute(),
        violates('foreign-key'),
        'a group with devices cannot be deleted',
      );
      // The work profile offers only the office app, and only the work profile offers it.
      const [, personal] = rows.profiles;
      const [office] = rows.apps;
      assert.ok(personal && office);
      await assert.rejects(
        db
          .insertInto('device_apps')
          .values({ device_id: device.id, profile_id: personal.id, app_id: office.id })
          .execute(),
        violates('foreign-key'),
        'a device can choose only apps its profile offers',
      );
      await assert.rejects(
        db
          .updateTable('devices')
          .set({ state: 'lost' as never })
          .where('id', '=', device.id)
          .execute(),
        violates('check'),
      );
      await assert.rejects(
        db
          .insertInto('rollouts')
          .values({ ...rows.rollouts[0]!, id: newId(NOW), group_id: null, profile_id: null })
          .execute(),
        violates('check'),
        'a rollout targets a group or a profile',
      );
      await assert.rejects(
        db
          .updateTable('rollouts')
          .set({ on_completion: 'publish' as never })
          .execute(),
        violates('check'),
        'completing a rollout releases its version or keeps the released one',
      );
      await assert.rejects(
        db.updateTable('enrolment_tokens').set({ uses_left: -1 }).execute(),
        violates('check'),
      );

      // Deleting a device takes everything that is only about it.
      await db.deleteFrom('devices').where('id', '=', device.id).execute();
      for (const table of [
        'device_profiles',
        'device_apps',
        'device_events',
        'rollout_devices',
        'commands',
      ] as const) {
        const left = await db
          .selectFrom(table)
          .select('device_id')
          .where('device_id', '=', device.id)
          .execute();
        assert.equal(left.length, 0, `${table} rows of a deleted device`);
      }
      // Deleting an admin revokes their API tokens but keeps what they created.
      await db.deleteFrom('admin_users').where('id', '=', admin.id).execute();
      assert.equal((await db.selectFrom('api_tokens').selectAll().execute()).length, 0);
      const token = await db
        .selectFrom('enrolment_tokens')
        .select('created_by')
        .executeTakeFirstOrThrow();
      assert.equal(token.created_by, null);
    }),
  );

  await t.test('a URL that cannot be opened fails naming it', async (st) => {
    const emptyUrl = await databases.emptyUrl(st);
    for (const bad of [
      ...UNOPENABLE[databases.dialect](emptyUrl),
      { url: 'mysql://center:hunter2@db/center', shows: 'mysql://center:***@db/center' },
      { url: 'sqlite://host/center.db', shows: 'sqlite://host/center.db' },
    ]) {
      await assert.rejects(openDatabase({ url: bad.url }), (err) => {
        assert.ok(isBulkheadError(err), String(err));
        assert.equal(
          err.code,
          'isRetryable' in bad ? 'ERR_DATABASE' : 'ERR_DATABASE_URL',
          err.message,
        );
        assert.ok(err.message.includes(bad.shows), err.message);
        assert.ok(!err.message.includes('hunter2'), 'passwords are masked');
        if ('isRetryable' in bad) assert.equal(err.retryable, bad.isRetryable, err.message);
        return true;
      });
    }
  });
});

/** Tables in an order that satisfies their foreign keys. */
const INSERT_ORDER = [
  'admin_users',
  'api_tokens',
  'device_groups',
  'images',
  'image_versions',
  'apps',
  'profiles',
  'profile_apps',
  'profile_images',
  'devices',
  'device_profiles',
  'device_apps',
  'enrolment_tokens',
  'rollouts',
  'rollout_devices',
  'device_events',
  'commands',
  'audit_log',
  'publisher_keys',
  'login_throttle',
  'rate_limit_windows',
  'fleet_version_snapshots',
] as const satisfies readonly (keyof Database)[];

type SeedRows = { [T in (typeof INSERT_ORDER)[number]]: NewRow<T>[] };

/** A small consistent fleet: one or two rows per table, every column exercised. */
function seedRows(): SeedRows {
  const id = (n: number) => newId(NOW - 1000 + n);
  const admin = id(1);
  const [office, lab] = [id(2), id(3)];
  const [osImage, officeImage] = [id(4), id(5)];
  const [v1, v2] = [id(6), id(7)];
  const [officeApp] = [id(8)];
  const [work, personal] = [id(9), id(10)];
  const [pc1, pc2] = [id(11), id(12)];
  const rollout = id(13);
  const digest = (c: string) => c.repeat(64);
  return {
    admin_users: [
      {
        id: admin,
        username: 'ada',
        password_hash: 'scrypt$16384$8$1$c2FsdA$aGFzaA',
        role: 'admin',
        last_login_at: NOW,
        disabled_at: null,
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    api_tokens: [
      {
        id: id(20),
        user_id: admin,
        name: 'ci',
        token_hash: digest('a'),
        expires_at: null,
        last_used_at: null,
        created_at: NOW,
      },
    ],
    device_groups: [
      { id: office, name: 'office', description: 'Head office', created_at: NOW, updated_at: NOW },
      { id: lab, name: 'lab', description: '', created_at: NOW, updated_at: NOW },
    ],
    images: [
      {
        id: osImage,
        name: 'debian-work',
        kind: 'system',
        description: 'Work desktop',
        release_version_id: v1,
        created_at: NOW,
        updated_at: NOW,
      },
      {
        id: officeImage,
        name: 'office',
        kind: 'app',
        description: '',
        release_version_id: null,
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    image_versions: [
      {
        id: v1,
        image_id: osImage,
        version: '1',
        manifest_id: digest('1'),
        signatures: JSON.stringify([{ keyid: digest('f'), sig: `${'A'.repeat(86)}==` }]),
        size: 5_000_000_000,
        sha256: digest('2'),
        parent_version: null,
        state: 'published',
        created_at: NOW,
        published_at: NOW,
        retired_at: null,
        chunks: 120_000,
        added_chunks: 120_000,
        added_bytes: 3_000_000_000,
      },
      {
        id: v2,
        image_id: osImage,
        version: '2',
        manifest_id: digest('3'),
        signatures: '[]',
        size: 2_147_483_648,
        sha256: digest('4'),
        parent_version: '1',
        state: 'draft',
        created_at: NOW,
        published_at: null,
        retired_at: null,
        chunks: null,
        added_chunks: null,
        added_bytes: null,
      },
    ],
    apps: [
      {
        id: officeApp,
        name: 'office',
        display_name: 'Office suite',
        description: '',
        image_id: officeImage,
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    profiles: [
      {
        id: work,
        name: 'work',
        description: 'Managed work desktop',
        system_image_id: osImage,
        isolation_policy: JSON.stringify({ network: 'vpn-only', clipboard: false }),
        health_check: JSON.stringify({
          timeoutSeconds: 120,
          command: ['systemctl', 'is-system-running'],
        }),
        lease_days: 30,
        cpus: 2,
        memory_mib: 4096,
        reset_policy: 'on-boot',
        firmware: 'uefi',
        secure_boot: 'on',
        tpm: 'on',
        guest_os: 'windows',
        guest_devices: 'compat',
        user_apps: 'on',
        kind: 'work',
        created_at: NOW,
        updated_at: NOW,
      },
      {
        id: personal,
        name: 'personal',
        description: '',
        system_image_id: osImage,
        isolation_policy: '{}',
        health_check: JSON.stringify({ timeoutSeconds: 60 }),
        lease_days: 365,
        cpus: 1,
        memory_mib: 2048,
        reset_policy: 'on-update',
        firmware: 'bios',
        secure_boot: 'off',
        tpm: 'off',
        guest_os: 'linux',
        guest_devices: 'virtio',
        user_apps: 'off',
        kind: 'personal',
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    profile_apps: [{ profile_id: work, app_id: officeApp, mode: 'optional' }],
    profile_images: [{ profile_id: personal, image_id: osImage }],
    devices: [
      {
        id: pc1,
        name: 'pc-1',
        public_key: 'MCowBQYDK2VwAyEA',
        encryption_key: 'bW9jayB4MjU1MTkga2V5IGZvciB0aGUgdGVzdCBkYg==',
        inventory: '{}',
        group_id: office,
        current_versions: '{}',
        state: 'active',
        enrolled_at: NOW - 5000,
        last_contact_at: NOW,
        updated_at: NOW,
        update_status: 'updating',
        lease_expires_at: NOW + 30 * 86_400_000,
      },
      {
        id: pc2,
        name: 'pc-2',
        public_key: 'MCowBQYDK2VwAyEB',
        // Enrolled before devices had encryption keys (migration 0011).
        encryption_key: null,
        inventory: JSON.stringify({ cpu: 'i5', memoryMiB: 16384 }),
        group_id: office,
        current_versions: JSON.stringify({ work: { system: '1', apps: {} } }),
        state: 'locked',
        enrolled_at: NOW - 4000,
        last_contact_at: NOW - 60_000,
        updated_at: NOW,
        update_status: 'failed',
        lease_expires_at: null,
      },
    ],
    device_profiles: [
      { device_id: pc1, profile_id: work, system_version_id: v1 },
      { device_id: pc1, profile_id: personal, system_version_id: null },
      { device_id: pc2, profile_id: work, system_version_id: null },
    ],
    device_apps: [{ device_id: pc1, profile_id: work, app_id: officeApp }],
    enrolment_tokens: [
      {
        id: id(21),
        token_hash: digest('b'),
        group_id: office,
        uses_left: 10,
        expires_at: NOW + 86_400_000,
        created_by: admin,
        note: 'laptops batch 3',
        created_at: NOW,
      },
    ],
    rollouts: [
      {
        id: rollout,
        image_version_id: v1,
        group_id: office,
        profile_id: work,
        phases: '[1,10,50,100]',
        current_phase: 0,
        phase_started_at: null,
        soak_ms: 3_600_000,
        failure_threshold: 0.05,
        min_reports: 1,
        state: 'running',
        state_reason: null,
        on_completion: 'release',
        released_at: null,
        created_by: admin,
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    rollout_devices: [
      {
        rollout_id: rollout,
        device_id: pc1,
        phase: 0,
        status: 'pending',
        reason: null,
        updated_at: NOW,
      },
      {
        rollout_id: rollout,
        device_id: pc2,
        phase: 1,
        status: 'rolled-back',
        reason: 'guest agent did not answer within 120 s',
        updated_at: NOW,
      },
    ],
    device_events: [
      {
        device_id: pc1,
        event_id: 'evt-1',
        type: 'staged',
        payload: JSON.stringify({ profile: 'work', version: '1' }),
        occurred_at: NOW - 100,
        received_at: NOW,
      },
      {
        device_id: pc1,
        event_id: 'evt-2',
        type: 'healthy',
        payload: '{}',
        occurred_at: NOW - 50,
        received_at: NOW,
      },
    ],
    commands: [
      {
        id: id(22),
        device_id: pc2,
        kind: 'lock',
        profile_id: null,
        state: 'pending',
        result: null,
        created_by: admin,
        created_at: NOW,
        updated_at: NOW,
      },
      {
        id: id(23),
        device_id: pc1,
        kind: 'restart-vm',
        profile_id: work,
        state: 'done',
        result: '{"ok":true}',
        created_by: null,
        created_at: NOW,
        updated_at: NOW,
      },
    ],
    audit_log: [
      {
        id: id(24),
        actor: 'user:ada',
        action: 'device.lock',
        target_type: 'device',
        target_id: pc2,
        before: '{"state":"active"}',
        after: '{"state":"locked"}',
        at: NOW,
      },
    ],
    publisher_keys: [
      {
        keyid: digest('d'),
        name: 'build-server',
        public_key: '-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n',
        created_by: admin,
        created_at: NOW,
        revoked_at: null,
      },
    ],
    login_throttle: [
      {
        username: 'root',
        source: '2001:db8:1:2::',
        failures: 7,
        blocked_until: NOW + 2000,
        last_attempt_at: NOW,
      },
    ],
    rate_limit_windows: [
      {
        route: 'POST /api/v1/admin/login',
        source: '2001:db8:1:2::',
        window_start: NOW - 60_000,
        window_end: NOW,
        count: 2_000_000_000,
      },
    ],
    fleet_version_snapshots: [
      { at: NOW - 3_600_000, version_id: v1, devices: 100_000 },
      { at: NOW, version_id: v1, devices: 1 },
    ],
  };
}

async function insertAll(db: Kysely<Database>, rows: SeedRows): Promise<void> {
  for (const table of INSERT_ORDER) {
    // Each table's rows are checked against its type where `rows` is built; a loop over
    // tables cannot carry the pairing of table and row type, hence the cast.
    await db
      .insertInto(table)
      .values(rows[table] as never)
      .execute();
  }
}

/** Rows in an order that depends only on their content, for comparing sets of rows. */
function sortRows(rows: readonly object[]): object[] {
  const key = (row: object) =>
    JSON.stringify(Object.entries(row).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return [...rows].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
}
