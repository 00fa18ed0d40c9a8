import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { newId, type Database, type ImageKind } from '../db/index.ts';

/*
 * Rows the rollout tests need, inserted directly: the catalog (images, versions, apps,
 * profiles) and devices, without the admin API that manages them.
 */

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

export async function insertGroup(db: Kysely<Database>, name: string, at: number) {
  const id = newId(at);
  await db
    .insertInto('device_groups')
    .values({ id, name, description: '', created_at: at, updated_at: at })
    .execute();
  return id;
}

export async function insertImage(db: Kysely<Database>, name: string, kind: ImageKind, at: number) {
  const id = newId(at);
  await db
    .insertInto('images')
    .values({
      id,
      name,
      kind,
      description: '',
      release_version_id: null,
      created_at: at,
      updated_at: at,
    })
    .execute();
  return id;
}

/** A version of the image, published unless `state` says otherwise; released if asked. */
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
      signatures: '[]',
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

export async function insertApp(db: Kysely<Database>, name: string, imageId: string, at: number) {
  const id = newId(at);
  await db
    .insertInto('apps')
    .values({
      id,
      name,
      display_name: name,
      description: '',
      image_id: imageId,
      created_at: at,
      updated_at: at,
    })
    .execute();
  return id;
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
