import { createPrivateKey, generateKeyPairSync, randomBytes } from 'node:crypto';
import { encryptionKeyPem, TEST_DEVICE_KEYS } from './keys.ts';
import { Writable } from 'node:stream';
import type { TestContext } from 'node:test';
import type { Insertable, Kysely } from 'kysely';
import { pino, type Level } from 'pino';
import { generateKeyPair, rawX25519, signPayload } from '../../src/signing/index.ts';
import { createEnrolmentToken, DEVICE_SIGNATURE_DOMAINS } from '../../src/center/devices/index.ts';
import { hashSecret } from '../../src/center/admin/credentials.ts';
import { resolveConfig, type CenterConfigInput } from '../../src/center/config.ts';
import {
  migrateToLatest,
  newId,
  openDatabase,
  type CenterDatabase,
  type Database,
  type DatabaseDialect,
  type DatabaseLog,
  type ImageKind,
} from '../../src/center/db/index.ts';
import type { PushBus } from '../../src/center/push.ts';
import { createCenterApp, type CenterApp } from '../../src/center/server.ts';
import { tempDir, type Cleanups } from './fixtures.ts';
import { DIALECTS, testDatabases } from './databases.ts';

/*
 * What Center's unit tests share: the databases they run on, a Center app over a fresh one with
 * a settable clock, admin sessions and catalog rows inserted directly (without the admin API and
 * its password hashing), and the admin API called through `inject`.
 */

/** A database Center's tests run on. */
export interface CenterTarget {
  dialect: DatabaseDialect;
  /** Gets the server ready once; returns a maker of URLs to empty databases. */
  setUp(t: TestContext): Promise<(t: TestContext) => Promise<string>>;
}

/** SQLite and PostgreSQL: each Center test runs on both (databases from test/support/databases.ts). */
export const CENTER_TARGETS: readonly CenterTarget[] = DIALECTS.map((dialect) => ({
  dialect,
  setUp: async (t: TestContext) => (await testDatabases(t, dialect)).emptyUrl,
}));

export type AdminRole = 'admin' | 'operator' | 'viewer';

/**
 * A Center app over a migrated database at `url`, its clock at `start` until the test moves
 * `clock.ms`, its logs kept as text at `logLevel` (silent by default); closed when `t` ends.
 */
export async function startTestCenter(
  t: Cleanups,
  url: string,
  options: {
    start: number;
    logLevel?: Level | 'silent';
    push?: PushBus;
    /** Hears every query the app makes (to count them). */
    databaseLog?: DatabaseLog;
    /** Configuration keys beyond the test's data directory and listener. */
    config?: CenterConfigInput;
    /** `null`: rate-limit counts are shared only when the test calls `flushRateLimits`. */
    rateLimitFlushMs?: number | null;
  },
) {
  const dir = await tempDir(t);
  const config = resolveConfig([{ dataDir: dir, listen: '127.0.0.1:0' }, options.config ?? {}]);
  const database: CenterDatabase = await openDatabase({
    url,
    ...(options.databaseLog === undefined ? {} : { log: options.databaseLog }),
  });
  await migrateToLatest(database.db);
  const clock = { ms: options.start };
  const now = () => new Date(clock.ms);
  let logs = '';
  const log = pino(
    { level: options.logLevel ?? 'silent' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        logs += chunk.toString();
        done();
      },
    }),
  );
  const pair = generateKeyPair();
  const signingKey = { key: createPrivateKey(pair.privatePem), keyid: pair.keyid };
  const app: CenterApp = await createCenterApp({
    config,
    log,
    database,
    signingKey,
    now,
    ...(options.push === undefined ? {} : { push: options.push }),
    ...(options.rateLimitFlushMs === undefined
      ? {}
      : { rateLimitFlushMs: options.rateLimitFlushMs }),
  });
  t.after(async () => {
    await app.close();
    await database.close();
  });
  return {
    app,
    database,
    db: database.db,
    config,
    dir,
    clock,
    now,
    log,
    signingKey,
    logs: () => logs,
    call: adminCaller(app),
  };
}

/**
 * Enrols a device through the device API (an enrolment token straight into the database) and
 * gets it a bearer token with its key.
 */
export async function enrolTestDevice(c: {
  db: Kysely<Database>;
  now: () => Date;
  call: ReturnType<typeof adminCaller>;
}): Promise<{ deviceId: string; token: string; responses: Res[] }> {
  const at = c.now().getTime();
  const groupId = await insertGroup(c.db, `group-${newId(at)}`, at);
  const { token: enrolmentToken } = await createEnrolmentToken(c.db, {
    groupId,
    uses: 1,
    expiresAt: new Date(at + 3600_000),
    now: c.now(),
  });
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const enrolled = await c.call('POST', '/api/v1/device/enrol', {
    body: {
      token: enrolmentToken,
      publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      encryptionKey: encryptionKeyPem(),
      inventory: { hostname: 'pc' },
    },
  });
  if (enrolled.status !== 200) throw new Error(`enrol: ${JSON.stringify(enrolled.body)}`);
  const deviceId = enrolled.body.deviceId as string;
  const ch = await c.call('POST', '/api/v1/device/auth/challenge', { body: { deviceId } });
  const challenge = ch.body.challenge as string;
  const signature = signPayload(DEVICE_SIGNATURE_DOMAINS.deviceAuth, challenge, privateKey);
  const issued = await c.call('POST', '/api/v1/device/auth/token', {
    body: { deviceId, challenge, signature },
  });
  if (issued.status !== 200) throw new Error(`token: ${JSON.stringify(issued.body)}`);
  return { deviceId, token: issued.body.token as string, responses: [enrolled, ch, issued] };
}

/** What a route answered: its status, headers and parsed JSON body. */
export interface Res {
  status: number;
  headers: Record<string, unknown>;
  // Test code reads whatever the route answered.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

export type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE' | 'PUT';

/**
 * Calls the admin API (`path` under /api/v1/admin, unless it starts with /api/): a JSON `body`,
 * or `raw` bytes as application/octet-stream.
 */
export function adminCaller(app: CenterApp) {
  return async (
    method: Method,
    path: string,
    options: {
      token?: string | undefined;
      body?: unknown;
      raw?: Buffer;
      /** The peer's address (default 10.0.0.1). */
      ip?: string;
      headers?: Record<string, string>;
    } = {},
  ): Promise<Res> => {
    const headers: Record<string, string> = { ...options.headers };
    if (options.token) headers['authorization'] = `Bearer ${options.token}`;
    if (options.raw) headers['content-type'] = 'application/octet-stream';
    const payload = options.raw ?? (options.body as object | undefined);
    const res = await app.inject({
      method,
      url: path.startsWith('/api/') ? path : `/api/v1/admin${path}`,
      remoteAddress: options.ip ?? '10.0.0.1',
      headers,
      ...(payload === undefined ? {} : { payload }),
    });
    return { status: res.statusCode, headers: res.headers, body: res.body ? res.json() : null };
  };
}

/**
 * An administrator and a session token of theirs, straight into the database: logging in
 * costs a scrypt each, most of a test's time.
 */
export async function insertSession(
  db: Kysely<Database>,
  username: string,
  role: AdminRole,
  at: number,
): Promise<string> {
  const userId = newId(at);
  const token = `bh_${randomBytes(32).toString('base64url')}`;
  await db
    .insertInto('admin_users')
    .values({
      id: userId,
      username,
      password_hash: 'scrypt$unused',
      role,
      last_login_at: null,
      created_at: at,
      updated_at: at,
    })
    .execute();
  await db
    .insertInto('api_tokens')
    .values({
      id: newId(at),
      user_id: userId,
      name: `session:${username}`,
      token_hash: hashSecret(token),
      expires_at: null,
      last_used_at: null,
      created_at: at,
    })
    .execute();
  return token;
}

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

/**
 * Inserts a catalog row with a new id and its creation and update times at `at`; returns the
 * id.
 */
async function insertRow<T extends 'device_groups' | 'images' | 'apps'>(
  db: Kysely<Database>,
  table: T,
  at: number,
  values: Omit<Insertable<Database[T]>, 'id' | 'created_at' | 'updated_at'>,
): Promise<string> {
  const id = newId(at);
  // Each of these tables has id, created_at and updated_at; Kysely cannot see it through T.
  const row = { ...values, id, created_at: at, updated_at: at } as never;
  await db.insertInto(table).values(row).execute();
  return id;
}

export function insertGroup(db: Kysely<Database>, name: string, at: number) {
  return insertRow(db, 'device_groups', at, { name, description: '' });
}

export function insertImage(db: Kysely<Database>, name: string, kind: ImageKind, at: number) {
  return insertRow(db, 'images', at, { name, kind, description: '', release_version_id: null });
}

/** The publisher key `insertVersion` records its versions as signed by (trusted). */
const FIXTURE_PUBLISHER = generateKeyPair();

/** Trusts the fixture publisher key in `db`, once; its key id. */
async function fixturePublisher(db: Kysely<Database>, at: number): Promise<string> {
  const { keyid, publicPem } = FIXTURE_PUBLISHER;
  await db
    .insertInto('publisher_keys')
    .values({
      keyid,
      name: 'fixture',
      public_key: publicPem,
      created_by: null,
      created_at: at,
      revoked_at: null,
    })
    .onConflict((oc) => oc.column('keyid').doNothing())
    .execute();
  return keyid;
}

/**
 * A version of the image, published unless `state` says otherwise; released if asked. It is
 * recorded as signed by a trusted fixture publisher key (the signature itself is not real).
 */
export async function insertVersion(
  db: Kysely<Database>,
  imageId: string,
  version: string,
  at: number,
  options: { state?: 'draft' | 'published' | 'retired'; release?: boolean } = {},
) {
  const id = newId(at);
  const state = options.state ?? 'published';
  await db
    .insertInto('image_versions')
    .values({
      id,
      image_id: imageId,
      version,
      manifest_id: hex(32),
      signatures: JSON.stringify([
        { keyid: await fixturePublisher(db, at), sig: `${'A'.repeat(86)}==` },
      ]),
      size: 1 << 30,
      sha256: hex(32),
      parent_version: null,
      state,
      created_at: at,
      published_at: state === 'draft' ? null : at,
      retired_at: state === 'retired' ? at : null,
    })
    .execute();
  if (options.release) {
    await db
      .updateTable('images')
      .set({ release_version_id: id, updated_at: at })
      .where('id', '=', imageId)
      .execute();
  }
  return id;
}

export function insertApp(db: Kysely<Database>, name: string, imageId: string, at: number) {
  const app = { name, display_name: name, description: '', image_id: imageId };
  return insertRow(db, 'apps', at, app);
}

export async function insertProfile(
  db: Kysely<Database>,
  input: {
    name: string;
    systemImageId: string;
    policy?: object;
    healthCheck?: object;
    leaseDays?: number;
    apps?: { appId: string; mode: 'default' | 'optional' }[];
  },
  at: number,
) {
  const id = newId(at);
  await db
    .insertInto('profiles')
    .values({
      id,
      name: input.name,
      description: '',
      system_image_id: input.systemImageId,
      isolation_policy: JSON.stringify(input.policy ?? {}),
      health_check: JSON.stringify(input.healthCheck ?? {}),
      lease_days: input.leaseDays ?? 14,
      cpus: 2,
      memory_mib: 2048,
      reset_policy: 'on-update',
      firmware: 'bios',
      secure_boot: 'off',
      tpm: 'off',
      guest_os: 'linux',
      guest_devices: 'virtio',
      created_at: at,
      updated_at: at,
    })
    .execute();
  for (const app of input.apps ?? []) {
    await db
      .insertInto('profile_apps')
      .values({ profile_id: id, app_id: app.appId, mode: app.mode })
      .execute();
  }
  return id;
}

/** `count` active devices in the group, each holding `profileIds`. */
export async function insertDevices(
  db: Kysely<Database>,
  groupId: string,
  count: number,
  profileIds: readonly string[],
  at: number,
): Promise<string[]> {
  const ids = Array.from({ length: count }, () => newId(at));
  for (let i = 0; i < ids.length; i += 200) {
    const batch = ids.slice(i, i + 200);
    await db
      .insertInto('devices')
      .values(
        batch.map((id) => ({
          id,
          name: `pc-${id.slice(-6)}`,
          public_key: randomBytes(32).toString('base64'),
          // Every inserted device shares the fixed test encryption key (test/support/keys.ts).
          encryption_key: rawX25519(TEST_DEVICE_KEYS.publicKey).toString('base64'),
          inventory: '{}',
          group_id: groupId,
          current_versions: '{}',
          state: 'active' as const,
          enrolled_at: at,
          last_contact_at: at,
          updated_at: at,
        })),
      )
      .execute();
    if (profileIds.length > 0) {
      await db
        .insertInto('device_profiles')
        .values(batch.flatMap((id) => profileIds.map((p) => ({ device_id: id, profile_id: p }))))
        .execute();
    }
  }
  return ids;
}
