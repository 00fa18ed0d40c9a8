import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import type { KeyObject } from 'node:crypto';
import { generateKeyPair, loadPrivateKey } from '../signing/index.ts';
import { generatePassword, hashPassword } from './auth/passwords.ts';
import type { CenterConfig } from './config.ts';
import {
  displayUrl,
  migrateToLatest,
  newId,
  openDatabase,
  parseDatabaseUrl,
  type CenterDatabase,
} from './db/index.ts';
import { createPgPushBus, type PgPushBus } from './push-pg.ts';
import { createLocalPushBus } from './push.ts';
import { createRolloutScheduler } from './rollouts/index.ts';
import { Registry } from 'prom-client';
import { createCenterApp, createMetricsApp, type CenterApp } from './server.ts';

export interface RunningCenter {
  app: CenterApp;
  database: CenterDatabase;
  /** The URL it listens on. */
  url: string;
  /** The URL of the separate metrics listener (`metricsListen`), or null when there is none. */
  metricsUrl: string | null;
  /** Center's signing key id (desired states are signed with it). */
  keyid: string;
  /**
   * The first administrator's one-time password when this start created the account; shown to
   * the person starting Center once, never logged.
   */
  initialAdmin: { username: string; password: string } | null;
  /** Stops accepting requests, finishes those in flight, closes the database. */
  close(): Promise<void>;
}

/**
 * Starts Center: its data directory, signing key, database (migrated), first administrator,
 * and the HTTP API. Everything it creates on first start is reused on the next.
 */
export async function startCenter(deps: {
  config: CenterConfig;
  log: Logger;
  now?: () => Date;
  /**
   * Runs on the migrated database before Center listens (e.g. `center serve --demo` puts the
   * demo images in); a failure stops the start.
   */
  prepare?: (database: CenterDatabase) => Promise<void>;
}): Promise<RunningCenter> {
  const { config, log } = deps;
  const now = deps.now ?? (() => new Date());
  await mkdir(config.storeDir, { recursive: true });
  const key = await loadOrCreateSigningKey(config.dataDir, log);

  const database = await openDatabase({ url: config.database });
  let pgPush: PgPushBus | undefined;
  let app: CenterApp | undefined;
  let metricsApp: FastifyInstance | undefined;
  try {
    // The database holds password and token hashes: readable by Center's user only.
    const target = parseDatabaseUrl(config.database);
    if (target.dialect === 'sqlite' && target.path !== ':memory:') {
      for (const file of [target.path, `${target.path}-wal`, `${target.path}-shm`]) {
        await chmod(file, 0o600).catch((err: unknown) => {
          if (errnoCode(err) !== 'ENOENT') throw err;
        });
      }
    }
    const migrated = await migrateToLatest(database.db);
    log.info(
      { component: 'store', database: displayUrl(config.database), applied: migrated.applied },
      'database ready',
    );
    const initialAdmin = await ensureFirstAdmin(database, now);
    await deps.prepare?.(database);
    // Replicas on PostgreSQL relay push notifications to each other through it.
    pgPush =
      database.dialect === 'postgres'
        ? createPgPushBus({ connectionString: config.database, log })
        : undefined;
    const push = pgPush ?? createLocalPushBus();
    const metrics = new Registry();
    const center = await createCenterApp({
      config,
      log,
      database,
      signingKey: key,
      now,
      push,
      metrics,
    });
    app = center;
    const scheduler = createRolloutScheduler({
      db: database.db,
      dialect: database.dialect,
      push,
      now,
      log,
    });
    const url = await center.listen({ host: config.listen.host, port: config.listen.port });
    log.info({ component: 'http', url, keyid: key.keyid }, 'Center listening');
    let metricsUrl: string | null = null;
    if (config.metricsListen !== null) {
      metricsApp = await createMetricsApp(metrics, log);
      metricsUrl = await metricsApp.listen({ ...config.metricsListen });
      log.info({ component: 'http', url: metricsUrl }, 'metrics listening');
    }
    scheduler.start();
    return {
      app: center,
      database,
      url,
      metricsUrl,
      keyid: key.keyid,
      initialAdmin,
      close: async () => {
        await scheduler.stop();
        await metricsApp?.close();
        await center.close();
        await pgPush?.close();
        await database.close();
      },
    };
  } catch (err) {
    await metricsApp?.close();
    await app?.close();
    await pgPush?.close();
    await database.close();
    throw err;
  }
}

/** The signing key in `dataDir/center.key` (0600), made on first start. */
async function loadOrCreateSigningKey(
  dataDir: string,
  log: Logger,
): Promise<{ key: KeyObject; keyid: string }> {
  const privatePath = join(dataDir, 'center.key');
  const pair = generateKeyPair();
  try {
    await writeFile(privatePath, pair.privatePem, { mode: 0o600, flag: 'wx' });
    await writeFile(join(dataDir, 'center.pub'), pair.publicPem, { mode: 0o644 });
    log.info({ component: 'store', keyid: pair.keyid }, 'created the Center signing key');
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') {
      throw new BulkheadError(
        ErrorCodes.KEY_INVALID,
        `cannot create the Center signing key ${privatePath}: ${errnoCode(err) ?? String(err)}`,
        { cause: err },
      );
    }
  }
  return loadPrivateKey(privatePath);
}

/** Creates `admin` with a random password when there is no administrator at all. */
async function ensureFirstAdmin(
  database: CenterDatabase,
  now: () => Date,
): Promise<RunningCenter['initialAdmin']> {
  const existing = await database.db
    .selectFrom('admin_users')
    .select('id')
    .limit(1)
    .executeTakeFirst();
  if (existing) return null;
  const password = generatePassword();
  const at = now().getTime();
  await database.db
    .insertInto('admin_users')
    .values({
      id: newId(at),
      username: 'admin',
      password_hash: await hashPassword(password),
      role: 'admin',
      last_login_at: null,
      created_at: at,
      updated_at: at,
    })
    .execute();
  return { username: 'admin', password };
}
