import type { Kysely, Transaction } from 'kysely';
import {
  HealthCheckSchema,
  IsolationPolicySchema,
  personalIssues,
  type CreateProfileRequest,
  type Profile,
  type ProfileApp,
  type UpdateProfileRequest,
  type VmMachineHint,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { markChanged, runCommand, type CommandDeps } from '../changes/index.ts';
import { machineOfRow, newId, type Database, type Row } from '../db/index.ts';
import { assertImageKind } from './apps.ts';
import { badReference, notFound, refuseInUse, refuseNameTaken, type FleetDeps } from './common.ts';

function presentProfile(
  row: Row<'profiles'>,
  apps: readonly ProfileApp[],
  devices: number,
  images: readonly string[] = [],
): Profile {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    kind: row.kind,
    systemImageId: row.system_image_id,
    personalImageIds: personalImages(row.kind, row.system_image_id, images),
    apps: [...apps].sort((a, b) => (a.appId < b.appId ? -1 : a.appId > b.appId ? 1 : 0)),
    // Stored by this module from validated input; parsed again so a hand-edited row fails loudly.
    isolation: IsolationPolicySchema.parse(JSON.parse(row.isolation_policy)),
    healthCheck: HealthCheckSchema.parse(JSON.parse(row.health_check)),
    leaseDays: row.lease_days,
    cpus: row.cpus,
    memoryMib: row.memory_mib,
    resetPolicy: row.reset_policy,
    machine: machineOfRow(row),
    userChoosesApps: row.user_apps === 'on',
    devices,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/** The columns of a machine. */
function machineColumns(m: VmMachineHint) {
  return {
    firmware: m.firmware,
    secure_boot: m.secureBoot ? ('on' as const) : ('off' as const),
    tpm: m.tpm ? ('on' as const) : ('off' as const),
    guest_os: m.os,
    guest_devices: m.devices,
  };
}

async function presentRows(db: Kysely<Database>, rows: Row<'profiles'>[]): Promise<Profile[]> {
  if (rows.length === 0) return [];
  const ids = rows.map((r) => r.id);
  const apps = await db
    .selectFrom('profile_apps')
    .select(['profile_id', 'app_id', 'mode'])
    .where('profile_id', 'in', ids)
    .orderBy('app_id')
    .execute();
  const counts = await db
    .selectFrom('device_profiles')
    .select(['profile_id', (eb) => eb.fn.countAll<number>().as('n')])
    .where('profile_id', 'in', ids)
    .groupBy('profile_id')
    .execute();
  const images = await db
    .selectFrom('profile_images')
    .select(['profile_id', 'image_id'])
    .where('profile_id', 'in', ids)
    .orderBy('image_id')
    .execute();
  return rows.map((row) =>
    presentProfile(
      row,
      apps.filter((a) => a.profile_id === row.id).map((a) => ({ appId: a.app_id, mode: a.mode })),
      Number(counts.find((c) => c.profile_id === row.id)?.n ?? 0),
      images.filter((i) => i.profile_id === row.id).map((i) => i.image_id),
    ),
  );
}

/** A personal profile's images, its default first, each once; none for a work profile. */
function personalImages(
  kind: Row<'profiles'>['kind'],
  systemImageId: string,
  others: readonly string[],
): string[] {
  return kind === 'personal' ? [...new Set([systemImageId, ...others])] : [];
}

/** Replaces a personal profile's images after checking each is a system image. */
async function replaceImages(
  trx: Transaction<Database>,
  profileId: string,
  images: readonly string[],
  field: string,
): Promise<void> {
  for (const [i, id] of images.entries()) {
    await assertImageKind(trx, id, 'system', i === 0 ? 'body.systemImageId' : `${field}.${i - 1}`);
  }
  await trx.deleteFrom('profile_images').where('profile_id', '=', profileId).execute();
  if (images.length > 0) {
    await trx
      .insertInto('profile_images')
      .values(images.map((image_id) => ({ profile_id: profileId, image_id })))
      .execute();
  }
}

export async function listProfiles(db: Kysely<Database>): Promise<Profile[]> {
  const rows = await db.selectFrom('profiles').selectAll().orderBy('name').execute();
  return presentRows(db, rows);
}

async function findProfile(db: Kysely<Database>, id: string): Promise<Row<'profiles'>> {
  const row = await db.selectFrom('profiles').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw notFound('profile', id);
  return row;
}

/** @throws BulkheadError `ERR_NOT_FOUND`. */
export async function getProfile(db: Kysely<Database>, id: string): Promise<Profile> {
  const [profile] = await presentRows(db, [await findProfile(db, id)]);
  return profile!;
}

/** Checks every app of the list exists, naming the first that does not. */
async function assertApps(trx: Transaction<Database>, apps: readonly ProfileApp[]): Promise<void> {
  if (apps.length === 0) return;
  const found = await trx
    .selectFrom('apps')
    .select('id')
    .where(
      'id',
      'in',
      apps.map((a) => a.appId),
    )
    .execute();
  const known = new Set(found.map((r) => r.id));
  const missing = apps.findIndex((a) => !known.has(a.appId));
  if (missing >= 0) {
    throw badReference(`body.apps.${missing}.appId`, `no app ${apps[missing]!.appId}`);
  }
}

/**
 * @throws BulkheadError `ERR_VALIDATION` naming the field for a missing or wrong-kind image or
 *   a missing app; `ERR_NAME_TAKEN`.
 */
export async function createProfile(
  deps: CommandDeps,
  actor: Actor,
  input: CreateProfileRequest,
): Promise<Profile> {
  const at = deps.nowMs;
  const row: Row<'profiles'> = {
    id: newId(at),
    name: input.name,
    description: input.description,
    system_image_id: input.systemImageId,
    isolation_policy: JSON.stringify(input.isolation),
    health_check: JSON.stringify(input.healthCheck),
    lease_days: input.leaseDays,
    cpus: input.cpus,
    memory_mib: input.memoryMib,
    reset_policy: input.resetPolicy,
    ...machineColumns(input.machine),
    user_apps: input.userChoosesApps ? 'on' : 'off',
    kind: input.kind,
    created_at: at,
    updated_at: at,
  };
  const images = personalImages(input.kind, input.systemImageId, input.personalImageIds);
  const profile = presentProfile(row, input.apps, 0, images);
  return refuseNameTaken('profile', input.name, () =>
    runCommand(deps, actor, PROFILE('create'), async (trx) => {
      await assertImageKind(trx, input.systemImageId, 'system', 'body.systemImageId');
      await assertApps(trx, input.apps);
      await trx.insertInto('profiles').values(row).execute();
      await replaceImages(trx, row.id, images, 'body.personalImageIds');
      if (input.apps.length > 0) {
        await trx
          .insertInto('profile_apps')
          .values(input.apps.map((a) => ({ profile_id: row.id, app_id: a.appId, mode: a.mode })))
          .execute();
      }
      return { result: profile, before: null, after: profile, id: row.id };
    }),
  );
}

/**
 * Changes a profile; every device holding it gets a new desired state, so all of them are
 * marked changed and told. A new app list replaces the old: an app taken out also drops the devices'
 * choice of it (the foreign key cascades).
 */
export async function updateProfile(
  deps: FleetDeps,
  actor: Actor,
  id: string,
  input: UpdateProfileRequest,
): Promise<Profile> {
  return refuseNameTaken('profile', input.name, () =>
    runCommand(deps, actor, PROFILE('update', id), async (trx, at) => {
      const current = await findProfile(trx, id);
      const before = await getProfile(trx, id);
      if (input.systemImageId !== undefined) {
        await assertImageKind(trx, input.systemImageId, 'system', 'body.systemImageId');
      }
      if (current.kind === 'personal') {
        const [issue] = personalIssues(input);
        if (issue) throw badReference(`body.${issue.path.join('.')}`, issue.message);
        if (input.systemImageId !== undefined || input.personalImageIds !== undefined) {
          const next = personalImages(
            'personal',
            input.systemImageId ?? current.system_image_id,
            input.personalImageIds ?? before.personalImageIds,
          );
          await replaceImages(trx, id, next, 'body.personalImageIds');
        }
      } else if (input.personalImageIds !== undefined) {
        throw badReference(
          'body.personalImageIds',
          `profile "${current.name}" is a work profile; only a personal profile offers images to choose from`,
        );
      }
      await trx
        .updateTable('profiles')
        .set({
          name: input.name ?? current.name,
          description: input.description ?? current.description,
          system_image_id: input.systemImageId ?? current.system_image_id,
          isolation_policy:
            input.isolation === undefined
              ? current.isolation_policy
              : JSON.stringify(input.isolation),
          health_check:
            input.healthCheck === undefined
              ? current.health_check
              : JSON.stringify(input.healthCheck),
          lease_days: input.leaseDays ?? current.lease_days,
          cpus: input.cpus ?? current.cpus,
          memory_mib: input.memoryMib ?? current.memory_mib,
          reset_policy: input.resetPolicy ?? current.reset_policy,
          ...(input.machine === undefined ? {} : machineColumns(input.machine)),
          ...(input.userChoosesApps === undefined
            ? {}
            : { user_apps: input.userChoosesApps ? ('on' as const) : ('off' as const) }),
          updated_at: at,
        })
        .where('id', '=', id)
        .execute();
      if (input.apps !== undefined) await replaceApps(trx, id, input.apps);
      await markChanged(trx, { profiles: [id] }, at);
      const after = await getProfile(trx, id);
      return { result: after, before, after };
    }),
  );
}

async function replaceApps(
  trx: Transaction<Database>,
  profileId: string,
  apps: readonly ProfileApp[],
): Promise<void> {
  await assertApps(trx, apps);
  const keep = apps.map((a) => a.appId);
  await trx
    .deleteFrom('profile_apps')
    .where('profile_id', '=', profileId)
    .$call((q) => (keep.length > 0 ? q.where('app_id', 'not in', keep) : q))
    .execute();
  for (const app of apps) {
    await trx
      .insertInto('profile_apps')
      .values({ profile_id: profileId, app_id: app.appId, mode: app.mode })
      .onConflict((oc) => oc.columns(['profile_id', 'app_id']).doUpdateSet({ mode: app.mode }))
      .execute();
  }
  // A default app is on every device anyway; a choice of it would only linger.
  const defaults = apps.filter((a) => a.mode === 'default').map((a) => a.appId);
  if (defaults.length > 0) {
    await trx
      .deleteFrom('device_apps')
      .where('profile_id', '=', profileId)
      .where('app_id', 'in', defaults)
      .execute();
  }
}

/** @throws BulkheadError `ERR_NOT_FOUND`; `ERR_IN_USE` while devices hold it or a rollout targets it. */
export async function deleteProfile(deps: CommandDeps, actor: Actor, id: string): Promise<void> {
  await runCommand(deps, actor, PROFILE('delete', id), async (trx) => {
    const before = await getProfile(trx, id);
    await refuseInUse(
      () => trx.deleteFrom('profiles').where('id', '=', id).execute(),
      `profile "${before.name}" is held by ${before.devices} device(s) or targeted by a rollout`,
    );
    return { result: undefined, before, after: null };
  });
}

const PROFILE = (verb: string, id?: string) => ({
  action: `profile.${verb}`,
  target: 'profile',
  id,
});
