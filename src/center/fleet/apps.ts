import type { Kysely, Transaction } from 'kysely';
import type { App, CreateAppRequest, UpdateAppRequest } from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { markChanged, runCommand, type CommandDeps } from '../changes/index.ts';
import { newId, type Database, type ImageKind, type Row } from '../db/index.ts';
import { badReference, notFound, refuseInUse, refuseNameTaken, type FleetDeps } from './common.ts';

function presentApp(row: Row<'apps'>): App {
  return {
    id: row.id,
    name: row.name,
    displayName: row.display_name,
    description: row.description,
    imageId: row.image_id,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/**
 * Checks that `imageId` names an image of `kind`.
 * @throws BulkheadError `ERR_VALIDATION` naming `field` otherwise.
 */
export async function assertImageKind(
  db: Kysely<Database>,
  imageId: string,
  kind: ImageKind,
  field: string,
): Promise<void> {
  const image = await db
    .selectFrom('images')
    .select(['kind', 'name'])
    .where('id', '=', imageId)
    .executeTakeFirst();
  if (!image) throw badReference(field, `no image ${imageId}`);
  if (image.kind !== kind) {
    throw badReference(field, `image "${image.name}" holds ${image.kind} volumes, not ${kind}`);
  }
}

export async function listApps(db: Kysely<Database>): Promise<App[]> {
  const rows = await db.selectFrom('apps').selectAll().orderBy('name').execute();
  return rows.map(presentApp);
}

async function findApp(db: Kysely<Database>, id: string): Promise<Row<'apps'>> {
  const row = await db.selectFrom('apps').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw notFound('app', id);
  return row;
}

/** @throws BulkheadError `ERR_NOT_FOUND`. */
export async function getApp(db: Kysely<Database>, id: string): Promise<App> {
  return presentApp(await findApp(db, id));
}

/** @throws BulkheadError `ERR_VALIDATION` for an image that is not an app image; `ERR_NAME_TAKEN`. */
export async function createApp(
  deps: CommandDeps,
  actor: Actor,
  input: CreateAppRequest,
): Promise<App> {
  const at = deps.nowMs;
  const row: Row<'apps'> = {
    id: newId(at),
    name: input.name,
    display_name: input.displayName,
    description: input.description,
    image_id: input.imageId,
    created_at: at,
    updated_at: at,
  };
  const app = presentApp(row);
  return refuseNameTaken('app', input.name, () =>
    runCommand(deps, actor, APP('create'), async (trx) => {
      await assertImageKind(trx, input.imageId, 'app', 'body.imageId');
      await trx.insertInto('apps').values(row).execute();
      return { result: app, before: null, after: app, id: row.id };
    }),
  );
}

/**
 * Changes an app. A new image changes the desired state of every device holding a profile
 * that offers the app, so those are marked changed and told.
 */
export async function updateApp(
  deps: FleetDeps,
  actor: Actor,
  id: string,
  input: UpdateAppRequest,
): Promise<App> {
  return runCommand(deps, actor, APP('update', id), async (trx, at) => {
    const before = await findApp(trx, id);
    if (input.imageId !== undefined) {
      await assertImageKind(trx, input.imageId, 'app', 'body.imageId');
    }
    const after: Row<'apps'> = {
      ...before,
      display_name: input.displayName ?? before.display_name,
      description: input.description ?? before.description,
      image_id: input.imageId ?? before.image_id,
      updated_at: at,
    };
    await trx
      .updateTable('apps')
      .set({
        display_name: after.display_name,
        description: after.description,
        image_id: after.image_id,
        updated_at: at,
      })
      .where('id', '=', id)
      .execute();
    if (after.image_id !== before.image_id) {
      await markChanged(trx, { profiles: await profilesOffering(trx, id) }, at);
    }
    return { result: presentApp(after), before: presentApp(before), after: presentApp(after) };
  });
}

/** The profiles offering an app. */
async function profilesOffering(trx: Transaction<Database>, appId: string): Promise<string[]> {
  const rows = await trx
    .selectFrom('profile_apps')
    .select('profile_id')
    .where('app_id', '=', appId)
    .execute();
  return rows.map((r) => r.profile_id);
}

/** @throws BulkheadError `ERR_NOT_FOUND`; `ERR_IN_USE` while a profile offers the app. */
export async function deleteApp(deps: CommandDeps, actor: Actor, id: string): Promise<void> {
  await runCommand(deps, actor, APP('delete', id), async (trx) => {
    const before = await findApp(trx, id);
    await refuseInUse(
      () => trx.deleteFrom('apps').where('id', '=', id).execute(),
      `app "${before.name}" is offered by a profile; remove it from the profile first`,
    );
    return { result: undefined, before: presentApp(before), after: null };
  });
}

const APP = (verb: string, id?: string) => ({ action: `app.${verb}`, target: 'app', id });
