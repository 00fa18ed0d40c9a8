import {
  type CreateTableBuilder,
  type Kysely,
  type Migration,
  type MigrationResultSet,
  Migrator,
  sql,
} from 'kysely';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { Database } from './schema.ts';

/*
 * Center's schema history. Migrations live in code, not in files read at run time, so the one
 * process that ships is the one schema it expects, with nothing to copy or lose beside it. They
 * only use what SQLite and PostgreSQL both understand (see schema.ts for the type choices).
 *
 * A migration is history: once released it never changes, and its value lists are spelled out
 * here rather than imported from schema.ts, which describes only the latest state. A change is a
 * new migration with the next number. There are no down migrations: going back is restoring a
 * backup, which is the only rollback that also brings back the data.
 */

// Migrations see the database as it was then, not as `Database` describes it now.
type AnyDb = Kysely<unknown>;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Table = CreateTableBuilder<string, any>;

/** `column IN ('a', 'b')` for a CHECK constraint (DDL cannot take bound parameters). */
function oneOf(column: string, values: readonly string[]) {
  return sql<boolean>`${sql.ref(column)} in (${sql.join(values.map((v) => sql.lit(v)))})`;
}

function id(t: Table): Table {
  return t.addColumn('id', 'text', (c) => c.primaryKey().notNull());
}

function timestamps(t: Table): Table {
  return t
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('updated_at', 'bigint', (c) => c.notNull());
}

async function initial(db: AnyDb): Promise<void> {
  await db.schema
    .createTable('admin_users')
    .$call(id)
    .addColumn('username', 'text', (c) => c.notNull().unique())
    .addColumn('password_hash', 'text', (c) => c.notNull())
    .addColumn('role', 'text', (c) => c.notNull())
    .addColumn('last_login_at', 'bigint')
    .$call(timestamps)
    .addCheckConstraint('admin_users_role_check', oneOf('role', ['admin', 'operator', 'viewer']))
    .execute();

  await db.schema
    .createTable('api_tokens')
    .$call(id)
    .addColumn('user_id', 'text', (c) =>
      c.notNull().references('admin_users.id').onDelete('cascade'),
    )
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('token_hash', 'text', (c) => c.notNull().unique())
    .addColumn('expires_at', 'bigint')
    .addColumn('last_used_at', 'bigint')
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema.createIndex('api_tokens_user').on('api_tokens').column('user_id').execute();

  await db.schema
    .createTable('images')
    .$call(id)
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('description', 'text', (c) => c.notNull())
    .$call(timestamps)
    .addCheckConstraint('images_kind_check', oneOf('kind', ['system', 'app']))
    .execute();

  await db.schema
    .createTable('image_versions')
    .$call(id)
    .addColumn('image_id', 'text', (c) => c.notNull().references('images.id').onDelete('restrict'))
    .addColumn('version', 'text', (c) => c.notNull())
    .addColumn('manifest_id', 'text', (c) => c.notNull().unique())
    .addColumn('signatures', 'text', (c) => c.notNull())
    .addColumn('size', 'bigint', (c) => c.notNull())
    .addColumn('sha256', 'text', (c) => c.notNull())
    .addColumn('parent_version', 'text')
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('published_at', 'bigint')
    .addColumn('retired_at', 'bigint')
    .addUniqueConstraint('image_versions_image_version_unique', ['image_id', 'version'])
    .addCheckConstraint(
      'image_versions_state_check',
      oneOf('state', ['draft', 'published', 'retired']),
    )
    .execute();

  await db.schema
    .createTable('apps')
    .$call(id)
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('display_name', 'text', (c) => c.notNull())
    .addColumn('description', 'text', (c) => c.notNull())
    .addColumn('image_id', 'text', (c) => c.notNull().references('images.id').onDelete('restrict'))
    .$call(timestamps)
    .execute();
  await db.schema.createIndex('apps_image').on('apps').column('image_id').execute();

  await db.schema
    .createTable('profiles')
    .$call(id)
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('description', 'text', (c) => c.notNull())
    .addColumn('system_image_id', 'text', (c) =>
      c.notNull().references('images.id').onDelete('restrict'),
    )
    .addColumn('isolation_policy', 'text', (c) => c.notNull())
    .addColumn('health_check', 'text', (c) => c.notNull())
    .addColumn('lease_days', 'integer', (c) => c.notNull().check(sql`lease_days > 0`))
    .addColumn('cpus', 'integer', (c) => c.notNull().check(sql`cpus > 0`))
    .addColumn('memory_mib', 'integer', (c) => c.notNull().check(sql`memory_mib > 0`))
    .addColumn('reset_policy', 'text', (c) => c.notNull())
    .$call(timestamps)
    .addCheckConstraint(
      'profiles_reset_policy_check',
      oneOf('reset_policy', ['on-update', 'on-boot']),
    )
    .execute();
  await db.schema
    .createIndex('profiles_system_image')
    .on('profiles')
    .column('system_image_id')
    .execute();

  await db.schema
    .createTable('profile_apps')
    .addColumn('profile_id', 'text', (c) =>
      c.notNull().references('profiles.id').onDelete('cascade'),
    )
    .addColumn('app_id', 'text', (c) => c.notNull().references('apps.id').onDelete('restrict'))
    .addColumn('mode', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('profile_apps_pk', ['profile_id', 'app_id'])
    .addCheckConstraint('profile_apps_mode_check', oneOf('mode', ['default', 'optional']))
    .execute();
  await db.schema.createIndex('profile_apps_app').on('profile_apps').column('app_id').execute();

  await db.schema
    .createTable('device_groups')
    .$call(id)
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('description', 'text', (c) => c.notNull())
    .$call(timestamps)
    .execute();

  await db.schema
    .createTable('devices')
    .$call(id)
    .addColumn('name', 'text', (c) => c.notNull())
    .addColumn('public_key', 'text', (c) => c.notNull().unique())
    .addColumn('inventory', 'text', (c) => c.notNull())
    .addColumn('group_id', 'text', (c) =>
      c.notNull().references('device_groups.id').onDelete('restrict'),
    )
    .addColumn('current_versions', 'text', (c) => c.notNull())
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('enrolled_at', 'bigint', (c) => c.notNull())
    .addColumn('last_contact_at', 'bigint', (c) => c.notNull())
    .addColumn('updated_at', 'bigint', (c) => c.notNull())
    .addCheckConstraint(
      'devices_state_check',
      oneOf('state', ['active', 'locked', 'killed', 'retired']),
    )
    .execute();
  // Device lists page by keyset on (last_contact_at, id), newest first, filtered by group and
  // state, by state alone, or not at all. Each index serves one of those shapes as a plain range
  // scan (read backwards for "newest first"), so a page costs the same at row 99,000 as at row
  // 0. The group index also serves the foreign key from device_groups.
  await db.schema
    .createIndex('devices_group_state_contact')
    .on('devices')
    .columns(['group_id', 'state', 'last_contact_at', 'id'])
    .execute();
  await db.schema
    .createIndex('devices_state_contact')
    .on('devices')
    .columns(['state', 'last_contact_at', 'id'])
    .execute();
  await db.schema
    .createIndex('devices_contact')
    .on('devices')
    .columns(['last_contact_at', 'id'])
    .execute();

  await db.schema
    .createTable('device_profiles')
    .addColumn('device_id', 'text', (c) => c.notNull().references('devices.id').onDelete('cascade'))
    .addColumn('profile_id', 'text', (c) =>
      c.notNull().references('profiles.id').onDelete('restrict'),
    )
    .addPrimaryKeyConstraint('device_profiles_pk', ['device_id', 'profile_id'])
    .execute();
  // Rollouts that target a profile find its devices here.
  await db.schema
    .createIndex('device_profiles_profile')
    .on('device_profiles')
    .column('profile_id')
    .execute();

  await db.schema
    .createTable('device_apps')
    .addColumn('device_id', 'text', (c) => c.notNull())
    .addColumn('profile_id', 'text', (c) => c.notNull())
    .addColumn('app_id', 'text', (c) => c.notNull())
    .addPrimaryKeyConstraint('device_apps_pk', ['device_id', 'profile_id', 'app_id'])
    .addForeignKeyConstraint(
      'device_apps_device_profile_fk',
      ['device_id', 'profile_id'],
      'device_profiles',
      ['device_id', 'profile_id'],
      (fk) => fk.onDelete('cascade'),
    )
    .addForeignKeyConstraint(
      'device_apps_profile_app_fk',
      ['profile_id', 'app_id'],
      'profile_apps',
      ['profile_id', 'app_id'],
      (fk) => fk.onDelete('cascade'),
    )
    .execute();
  await db.schema
    .createIndex('device_apps_profile_app')
    .on('device_apps')
    .columns(['profile_id', 'app_id'])
    .execute();

  await db.schema
    .createTable('enrolment_tokens')
    .$call(id)
    .addColumn('token_hash', 'text', (c) => c.notNull().unique())
    .addColumn('group_id', 'text', (c) =>
      c.notNull().references('device_groups.id').onDelete('cascade'),
    )
    .addColumn('uses_left', 'integer', (c) => c.notNull().check(sql`uses_left >= 0`))
    .addColumn('expires_at', 'bigint', (c) => c.notNull())
    .addColumn('created_by', 'text', (c) => c.references('admin_users.id').onDelete('set null'))
    .addColumn('note', 'text', (c) => c.notNull())
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .execute();
  await db.schema
    .createIndex('enrolment_tokens_group')
    .on('enrolment_tokens')
    .column('group_id')
    .execute();

  await db.schema
    .createTable('rollouts')
    .$call(id)
    .addColumn('image_version_id', 'text', (c) =>
      c.notNull().references('image_versions.id').onDelete('restrict'),
    )
    .addColumn('group_id', 'text', (c) => c.references('device_groups.id').onDelete('restrict'))
    .addColumn('profile_id', 'text', (c) => c.references('profiles.id').onDelete('restrict'))
    .addColumn('phases', 'text', (c) => c.notNull())
    .addColumn('current_phase', 'integer', (c) => c.notNull())
    .addColumn('phase_started_at', 'bigint')
    .addColumn('soak_ms', 'bigint', (c) => c.notNull().check(sql`soak_ms >= 0`))
    .addColumn('failure_threshold', 'double precision', (c) =>
      c.notNull().check(sql`failure_threshold >= 0 and failure_threshold <= 1`),
    )
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('state_reason', 'text')
    .addColumn('created_by', 'text', (c) => c.references('admin_users.id').onDelete('set null'))
    .$call(timestamps)
    .addCheckConstraint(
      'rollouts_state_check',
      oneOf('state', ['pending', 'running', 'paused', 'halted', 'completed', 'aborted']),
    )
    .addCheckConstraint(
      'rollouts_target_check',
      sql`group_id is not null or profile_id is not null`,
    )
    .execute();
  // The scheduler looks only at rollouts that are still going.
  await db.schema.createIndex('rollouts_state').on('rollouts').column('state').execute();
  await db.schema
    .createIndex('rollouts_image_version')
    .on('rollouts')
    .column('image_version_id')
    .execute();

  await db.schema
    .createTable('rollout_devices')
    .addColumn('rollout_id', 'text', (c) =>
      c.notNull().references('rollouts.id').onDelete('cascade'),
    )
    .addColumn('device_id', 'text', (c) => c.notNull().references('devices.id').onDelete('cascade'))
    .addColumn('phase', 'integer', (c) => c.notNull())
    .addColumn('status', 'text', (c) => c.notNull())
    .addColumn('reason', 'text')
    .addColumn('updated_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('rollout_devices_pk', ['rollout_id', 'device_id'])
    .addCheckConstraint(
      'rollout_devices_status_check',
      oneOf('status', [
        'pending',
        'downloading',
        'staged',
        'switched',
        'healthy',
        'failed',
        'rolled-back',
      ]),
    )
    .execute();
  // The halt check counts statuses per phase of one rollout.
  await db.schema
    .createIndex('rollout_devices_phase_status')
    .on('rollout_devices')
    .columns(['rollout_id', 'phase', 'status'])
    .execute();
  await db.schema
    .createIndex('rollout_devices_device')
    .on('rollout_devices')
    .column('device_id')
    .execute();

  // The primary key is what makes report ingestion idempotent: a replayed event collides.
  await db.schema
    .createTable('device_events')
    .addColumn('device_id', 'text', (c) => c.notNull().references('devices.id').onDelete('cascade'))
    .addColumn('event_id', 'text', (c) => c.notNull())
    .addColumn('type', 'text', (c) => c.notNull())
    .addColumn('payload', 'text', (c) => c.notNull())
    .addColumn('occurred_at', 'bigint', (c) => c.notNull())
    .addColumn('received_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('device_events_pk', ['device_id', 'event_id'])
    .execute();
  // A device's history, newest first.
  await db.schema
    .createIndex('device_events_device_time')
    .on('device_events')
    .columns(['device_id', 'occurred_at'])
    .execute();

  await db.schema
    .createTable('commands')
    .$call(id)
    .addColumn('device_id', 'text', (c) => c.notNull().references('devices.id').onDelete('cascade'))
    .addColumn('kind', 'text', (c) => c.notNull())
    .addColumn('profile_id', 'text', (c) => c.references('profiles.id').onDelete('cascade'))
    .addColumn('state', 'text', (c) => c.notNull())
    .addColumn('result', 'text')
    .addColumn('created_by', 'text', (c) => c.references('admin_users.id').onDelete('set null'))
    .$call(timestamps)
    .addCheckConstraint(
      'commands_kind_check',
      oneOf('kind', ['lock', 'unlock', 'kill', 'restart-vm']),
    )
    .addCheckConstraint(
      'commands_state_check',
      oneOf('state', ['pending', 'delivered', 'done', 'failed', 'cancelled']),
    )
    .execute();
  // A device's pending commands go into every desired state it fetches.
  await db.schema
    .createIndex('commands_device_state')
    .on('commands')
    .columns(['device_id', 'state'])
    .execute();

  await db.schema
    .createTable('audit_log')
    .$call(id)
    .addColumn('actor', 'text', (c) => c.notNull())
    .addColumn('action', 'text', (c) => c.notNull())
    .addColumn('target_type', 'text', (c) => c.notNull())
    .addColumn('target_id', 'text')
    .addColumn('before', 'text')
    .addColumn('after', 'text')
    .addColumn('at', 'bigint', (c) => c.notNull())
    .execute();
  // The trail pages by keyset on (at, id), whole or for one target.
  await db.schema.createIndex('audit_log_time').on('audit_log').columns(['at', 'id']).execute();
  await db.schema
    .createIndex('audit_log_target')
    .on('audit_log')
    .columns(['target_type', 'target_id', 'at'])
    .execute();
}

/**
 * Trusted publisher keys, whose signatures Center accepts on uploaded manifests; and each
 * image's released version, the one a VM gets when no rollout gives it another.
 */
async function publishersAndReleases(db: AnyDb): Promise<void> {
  await db.schema
    .createTable('publisher_keys')
    .addColumn('keyid', 'text', (c) => c.primaryKey().notNull())
    .addColumn('name', 'text', (c) => c.notNull().unique())
    .addColumn('public_key', 'text', (c) => c.notNull())
    .addColumn('created_by', 'text', (c) => c.references('admin_users.id').onDelete('set null'))
    .addColumn('created_at', 'bigint', (c) => c.notNull())
    .addColumn('revoked_at', 'bigint')
    .execute();

  // No foreign key: SQLite cannot add one to an existing table, and images and versions would
  // reference each other. The image layer checks the version belongs to the image.
  await db.schema.alterTable('images').addColumn('release_version_id', 'text').execute();
}

/**
 * Indexes for the admin's device list, which pages by keyset on (enrolled_at, id), oldest first,
 * whole or filtered by group, by state, or both. Each index serves one of those shapes as a
 * range scan in the list's order, so a page costs the same at row 99,000 as at row 0; the other
 * filters (profile, name prefix, last contact) are checked on the rows that scan visits.
 */
async function fleet(db: AnyDb): Promise<void> {
  await db.schema
    .createIndex('devices_enrolled')
    .on('devices')
    .columns(['enrolled_at', 'id'])
    .execute();
  await db.schema
    .createIndex('devices_group_enrolled')
    .on('devices')
    .columns(['group_id', 'enrolled_at', 'id'])
    .execute();
  await db.schema
    .createIndex('devices_state_enrolled')
    .on('devices')
    .columns(['state', 'enrolled_at', 'id'])
    .execute();
  await db.schema
    .createIndex('devices_group_state_enrolled')
    .on('devices')
    .columns(['group_id', 'state', 'enrolled_at', 'id'])
    .execute();
}

/**
 * Rollouts: how many outcomes (healthy, failed, rolled back) a phase needs before the next
 * starts and before its failure share is judged. SQLite adds a NOT NULL column to a table with
 * rows only with a default; inserts still name it, as everywhere.
 */
async function rollouts(db: AnyDb): Promise<void> {
  await db.schema
    .alterTable('rollouts')
    .addColumn('min_reports', 'integer', (c) => c.notNull().defaultTo(1))
    .execute();
}

/**
 * Failed logins per (username, source address), shared by every replica, for exponential
 * backoff. Rows are forgotten a while after their last attempt (pruned by `last_attempt_at`).
 */
async function loginThrottle(db: AnyDb): Promise<void> {
  await db.schema
    .createTable('login_throttle')
    .addColumn('username', 'text', (c) => c.notNull())
    .addColumn('source', 'text', (c) => c.notNull())
    .addColumn('failures', 'integer', (c) => c.notNull())
    .addColumn('blocked_until', 'bigint', (c) => c.notNull())
    .addColumn('last_attempt_at', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('login_throttle_pk', ['username', 'source'])
    .execute();
  await db.schema
    .createIndex('login_throttle_last_attempt')
    .on('login_throttle')
    .column('last_attempt_at')
    .execute();
}

/**
 * Requests per (route, client key, fixed window) of the per-address rate limits, shared by the
 * replicas on PostgreSQL: each adds the increments it counted since its last flush and reads
 * back the totals (src/center/http/rate-limit-store.ts). Created on SQLite too, where one
 * process counts in memory and never writes it, so both dialects have one schema. Rows are
 * pruned once their window has ended (by `window_end`).
 */
async function rateLimitWindows(db: AnyDb): Promise<void> {
  await db.schema
    .createTable('rate_limit_windows')
    .addColumn('route', 'text', (c) => c.notNull())
    .addColumn('source', 'text', (c) => c.notNull())
    .addColumn('window_start', 'bigint', (c) => c.notNull())
    .addColumn('window_end', 'bigint', (c) => c.notNull())
    .addColumn('count', 'integer', (c) => c.notNull())
    .addPrimaryKeyConstraint('rate_limit_windows_pk', ['route', 'source', 'window_start'])
    .execute();
  await db.schema
    .createIndex('rate_limit_windows_end')
    .on('rate_limit_windows')
    .column('window_end')
    .execute();
}

/**
 * Administrators can be disabled: a disabled account cannot log in and its credentials are
 * refused, but it keeps its name, role and history, and can be enabled again.
 */
async function adminUserDisabled(db: AnyDb): Promise<void> {
  await db.schema.alterTable('admin_users').addColumn('disabled_at', 'bigint').execute();
}

/**
 * Rollouts that release: what completing one does to its image's released version (`release`
 * makes the rollout's version the released one, `keep` leaves it), and when it did. Rollouts
 * created before this migration were created under the rule that completing changes nothing,
 * so they keep it (the column's default, which SQLite needs to add a NOT NULL column to a table
 * with rows; inserts still name it, as everywhere).
 */
async function rolloutRelease(db: AnyDb): Promise<void> {
  await db.schema
    .alterTable('rollouts')
    .addColumn('on_completion', 'text', (c) =>
      c
        .notNull()
        .defaultTo('keep')
        .check(oneOf('on_completion', ['release', 'keep'])),
    )
    .execute();
  await db.schema.alterTable('rollouts').addColumn('released_at', 'bigint').execute();
}

/**
 * A profile's machine: its firmware (`bios`, `uefi`), Secure Boot and TPM (`on`/`off`: no
 * booleans, see schema.ts), and the guest OS hint with its device set. Existing profiles get
 * the defaults, which are what they ran on before (BIOS, no TPM, Linux on virtio).
 */
async function profileMachine(db: AnyDb): Promise<void> {
  const columns: [string, string[], string][] = [
    ['firmware', ['bios', 'uefi'], 'bios'],
    ['secure_boot', ['on', 'off'], 'off'],
    ['tpm', ['on', 'off'], 'off'],
    ['guest_os', ['linux', 'windows'], 'linux'],
    ['guest_devices', ['virtio', 'compat'], 'virtio'],
  ];
  for (const [name, values, initial] of columns) {
    await db.schema
      .alterTable('profiles')
      .addColumn(name, 'text', (c) => c.notNull().defaultTo(initial).check(oneOf(name, values)))
      .execute();
  }
}

/**
 * Each device's X25519 encryption key, to which Center wraps its VMs' data keys. Devices
 * enrolled before have none (null) and get no key until they enrol again.
 */
async function deviceEncryptionKey(db: AnyDb): Promise<void> {
  await db.schema.alterTable('devices').addColumn('encryption_key', 'text').execute();
}

/**
 * Whether the user of a device may pick a profile's optional apps (through Engine), beside the
 * administrators who always may. Off for every profile that existed before.
 */
async function profileUserApps(db: AnyDb): Promise<void> {
  await db.schema
    .alterTable('profiles')
    .addColumn('user_apps', 'text', (c) =>
      c
        .notNull()
        .defaultTo('off')
        .check(oneOf('user_apps', ['on', 'off'])),
    )
    .execute();
}

/**
 * Personal profiles (issue 13): a profile's `kind` is `work` (managed: what every profile was)
 * or `personal` (the user's own VM), and a personal profile lists the system images its user
 * may choose from (`profile_images`).
 */
async function personalProfiles(db: AnyDb): Promise<void> {
  await db.schema
    .alterTable('profiles')
    .addColumn('kind', 'text', (c) =>
      c
        .notNull()
        .defaultTo('work')
        .check(oneOf('kind', ['work', 'personal'])),
    )
    .execute();
  await db.schema
    .createTable('profile_images')
    .addColumn('profile_id', 'text', (c) =>
      c.notNull().references('profiles.id').onDelete('cascade'),
    )
    .addColumn('image_id', 'text', (c) => c.notNull().references('images.id').onDelete('restrict'))
    .addPrimaryKeyConstraint('profile_images_pk', ['profile_id', 'image_id'])
    .execute();
  await db.schema
    .createIndex('profile_images_image')
    .on('profile_images')
    .column('image_id')
    .execute();
}

/**
 * What the web console reads at 100,000 devices without scanning events (issue 14):
 *
 * - `devices.update_status` (idle, updating, failed), kept by report ingestion, and
 *   `devices.lease_expires_at`, the earliest VM lease of the desired state Center last sent the
 *   device (null until it fetches one), with indexes for the status filters and sorts of the
 *   device list and the leases running out;
 * - `device_profiles.system_version_id`: the system version each VM last reported healthy, so
 *   that versions per profile are a grouped index scan;
 * - `image_versions.chunks`, `added_chunks`, `added_bytes`: counted when a version is pushed
 *   (null for versions pushed before; Center counts those the first time it lists them);
 * - `fleet_version_snapshots`: devices per system version, at most one snapshot an hour;
 * - device events by type and time (the fleet's recent failures), and a device's timeline by
 *   (time, id) so that its pages have a total order.
 *
 * Existing rows are brought up to date here: the update status from each device's newest
 * update events, the versions from `current_versions`.
 */
async function console14(db: AnyDb): Promise<void> {
  await db.schema
    .alterTable('devices')
    .addColumn('update_status', 'text', (c) =>
      c
        .notNull()
        .defaultTo('idle')
        .check(oneOf('update_status', ['idle', 'updating', 'failed'])),
    )
    .execute();
  await db.schema.alterTable('devices').addColumn('lease_expires_at', 'bigint').execute();
  await db.schema.alterTable('device_profiles').addColumn('system_version_id', 'text').execute();
  for (const column of ['chunks', 'added_chunks', 'added_bytes']) {
    await db.schema.alterTable('image_versions').addColumn(column, 'bigint').execute();
  }
  await db.schema
    .createTable('fleet_version_snapshots')
    .addColumn('at', 'bigint', (c) => c.notNull())
    .addColumn('version_id', 'text', (c) => c.notNull())
    .addColumn('devices', 'bigint', (c) => c.notNull())
    .addPrimaryKeyConstraint('fleet_version_snapshots_pk', ['at', 'version_id'])
    .execute();

  // The list's name order ignores case, as people read names: by lower(name), then id.
  const byName: [string, string[]][] = [
    ['devices_name', []],
    ['devices_group_name', ['group_id']],
    ['devices_state_name', ['state']],
    ['devices_status_name', ['state', 'update_status']],
  ];
  for (const [name, first] of byName) {
    const columns = [...first.map((c) => sql.ref(c)), sql`lower(name)`, sql.ref('id')];
    await sql`create index ${sql.id(name)} on devices (${sql.join(columns)})`.execute(db);
  }
  const indexes: [string, string, string[]][] = [
    ['devices_status_contact', 'devices', ['state', 'update_status', 'last_contact_at', 'id']],
    ['devices_state_lease', 'devices', ['state', 'lease_expires_at']],
    ['device_profiles_version', 'device_profiles', ['profile_id', 'system_version_id']],
    ['device_events_type_time', 'device_events', ['type', 'occurred_at']],
    ['device_events_timeline', 'device_events', ['device_id', 'occurred_at', 'event_id']],
  ];
  for (const [name, table, columns] of indexes) {
    await db.schema.createIndex(name).on(table).columns(columns).execute();
  }
  // The timeline index serves everything this one did.
  await db.schema.dropIndex('device_events_device_time').execute();

  const outcomes = sql.join(['healthy', 'failed', 'rolled-back'].map((v) => sql.lit(v)));
  const progress = sql.join(['download-progress', 'staged', 'switched'].map((v) => sql.lit(v)));
  await sql`update devices set update_status = 'failed' where (
      select e.type from device_events e
      where e.device_id = devices.id and e.type in (${outcomes})
      order by e.occurred_at desc limit 1) in ('failed', 'rolled-back')`.execute(db);
  await sql`update devices set update_status = 'updating'
    where update_status = 'idle' and exists (
      select 1 from device_events e
      where e.device_id = devices.id and e.type in (${progress})
        and e.occurred_at > coalesce((
          select max(o.occurred_at) from device_events o
          where o.device_id = devices.id and o.type in (${outcomes})), -1))`.execute(db);

  // JSON functions differ between the two databases: read current_versions here instead.
  let after = '';
  for (;;) {
    const rows = await sql<{ id: string; current_versions: string }>`
      select id, current_versions from devices
      where id > ${after} and current_versions <> '{}' order by id limit 1000`.execute(db);
    if (rows.rows.length === 0) break;
    for (const row of rows.rows) {
      let current: Record<string, { system?: unknown }> = {};
      try {
        current = JSON.parse(row.current_versions) as typeof current;
      } catch {
        // An unreadable row stays without versions until the device reports again.
      }
      for (const [profileId, runs] of Object.entries(current)) {
        if (typeof runs?.system !== 'string') continue;
        await sql`update device_profiles set system_version_id = ${runs.system}
          where device_id = ${row.id} and profile_id = ${profileId}`.execute(db);
      }
    }
    after = rows.rows.at(-1)!.id;
  }
}

/**
 * Every migration, by name; the Migrator runs them in name order. Names are recorded in every
 * database, so none is ever renamed: 0003 was never shipped, and the gap stays. New ones take
 * the next number with no gap (a test checks).
 */
const migrations: Record<string, Migration> = {
  '0001_initial': { up: initial },
  '0002_publishers_and_releases': { up: publishersAndReleases },
  '0004_fleet': { up: fleet },
  '0005_rollouts': { up: rollouts },
  '0006_login_throttle': { up: loginThrottle },
  '0007_rate_limit_windows': { up: rateLimitWindows },
  '0008_admin_user_disabled': { up: adminUserDisabled },
  '0009_rollout_release': { up: rolloutRelease },
  '0010_profile_machine': { up: profileMachine },
  '0011_device_encryption_key': { up: deviceEncryptionKey },
  '0012_profile_user_apps': { up: profileUserApps },
  '0013_personal_profiles': { up: personalProfiles },
  '0014_console': { up: console14 },
};

/** The names of every migration, in the order they run. */
export const MIGRATION_NAMES: readonly string[] = Object.keys(migrations).sort();

/** What `migrateToLatest` did. */
export interface MigrationReport {
  /** Names of the migrations this call applied, in order; empty when already up to date. */
  applied: string[];
  /** Name of the newest migration this code knows: the database is now at it. */
  latest: string;
}

/**
 * Brings the database to the latest schema, applying each missing migration in its own
 * transaction. Idempotent, and safe when several Center replicas start at once: Kysely's
 * Migrator holds a lock (an advisory lock on PostgreSQL) while it works.
 *
 * @throws BulkheadError `ERR_DATABASE_MIGRATION` when a migration fails (naming it; the ones
 *   before it stay applied), or when the database holds migrations this code does not know
 *   (it was migrated by a newer Bulkhead).
 */
export async function migrateToLatest(db: Kysely<Database>): Promise<MigrationReport> {
  const migrator = new Migrator({
    db,
    provider: { getMigrations: () => Promise.resolve(migrations) },
  });
  let result: MigrationResultSet;
  try {
    result = await migrator.migrateToLatest();
  } catch (err) {
    throw migrationError(undefined, err);
  }
  const results = result.results ?? [];
  if (result.error !== undefined) {
    throw migrationError(results.find((r) => r.status === 'Error')?.migrationName, result.error);
  }
  return {
    applied: results.filter((r) => r.status === 'Success').map((r) => r.migrationName),
    latest: Object.keys(migrations).sort().at(-1) ?? '',
  };
}

function migrationError(name: string | undefined, cause: unknown): BulkheadError {
  const reason = cause instanceof Error ? cause.message : String(cause);
  const what =
    name === undefined ? 'database migration failed' : `database migration ${name} failed`;
  return new BulkheadError(ErrorCodes.DATABASE_MIGRATION, `${what}: ${reason}`, {
    cause,
    hint: reason.includes('corrupted migrations')
      ? 'This database was migrated by a newer Bulkhead; run that version, or restore a backup.'
      : undefined,
  });
}
