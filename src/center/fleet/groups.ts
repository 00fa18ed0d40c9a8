import type { Kysely } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type CreateDeviceGroupRequest,
  type DeviceGroup,
  type UpdateDeviceGroupRequest,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { runCommand, type CommandDeps } from '../changes/index.ts';
import { newId, type Database, type Row } from '../db/index.ts';
import { notFound, refuseInUse, refuseNameTaken } from './common.ts';

function presentGroup(row: Row<'device_groups'>, devices: number): DeviceGroup {
  return {
    id: row.id,
    name: row.name,
    description: row.description,
    devices,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

function groupsWithCounts(db: Kysely<Database>) {
  return db
    .selectFrom('device_groups as g')
    .selectAll('g')
    .select((eb) =>
      eb
        .selectFrom('devices as d')
        .select((d) => d.fn.countAll<number>().as('n'))
        .whereRef('d.group_id', '=', 'g.id')
        .as('devices'),
    );
}

export async function listGroups(db: Kysely<Database>): Promise<DeviceGroup[]> {
  const rows = await groupsWithCounts(db).orderBy('g.name').execute();
  return rows.map((r) => presentGroup(r, Number(r.devices ?? 0)));
}

/** @throws BulkheadError `ERR_NOT_FOUND`. */
export async function getGroup(db: Kysely<Database>, id: string): Promise<DeviceGroup> {
  const row = await groupsWithCounts(db).where('g.id', '=', id).executeTakeFirst();
  if (!row) throw notFound('device group', id);
  return presentGroup(row, Number(row.devices ?? 0));
}

/** @throws BulkheadError `ERR_NAME_TAKEN`. */
export async function createGroup(
  deps: CommandDeps,
  actor: Actor,
  input: CreateDeviceGroupRequest,
): Promise<DeviceGroup> {
  const at = deps.nowMs;
  const row: Row<'device_groups'> = {
    id: newId(at),
    name: input.name,
    description: input.description,
    created_at: at,
    updated_at: at,
  };
  const group = presentGroup(row, 0);
  return refuseNameTaken('device group', input.name, () =>
    runCommand(deps, actor, GROUP('create'), async (trx) => {
      await trx.insertInto('device_groups').values(row).execute();
      return { result: group, before: null, after: group, id: row.id };
    }),
  );
}

/** Renames or redescribes a group; no device's desired state depends on either. */
export async function updateGroup(
  deps: CommandDeps,
  actor: Actor,
  id: string,
  input: UpdateDeviceGroupRequest,
): Promise<DeviceGroup> {
  return refuseNameTaken('device group', input.name, () =>
    runCommand(deps, actor, GROUP('update', id), async (trx, at) => {
      const before = await getGroup(trx, id);
      await trx
        .updateTable('device_groups')
        .set({
          ...(input.name === undefined ? {} : { name: input.name }),
          ...(input.description === undefined ? {} : { description: input.description }),
          updated_at: at,
        })
        .where('id', '=', id)
        .execute();
      const after = await getGroup(trx, id);
      return { result: after, before, after };
    }),
  );
}

/**
 * Deletes an empty group and its enrolment tokens.
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_IN_USE` while devices are in it or a rollout
 *   targets it.
 */
export async function deleteGroup(deps: CommandDeps, actor: Actor, id: string): Promise<void> {
  await runCommand(deps, actor, GROUP('delete', id), async (trx) => {
    const before = await getGroup(trx, id);
    if (before.devices > 0) {
      throw new BulkheadError(
        ErrorCodes.IN_USE,
        `device group "${before.name}" still holds ${before.devices} device(s)`,
        { hint: 'move its devices to another group first' },
      );
    }
    await refuseInUse(
      () => trx.deleteFrom('device_groups').where('id', '=', id).execute(),
      `device group "${before.name}" is the target of a rollout`,
    );
    return { result: undefined, before, after: null };
  });
}

const GROUP = (verb: string, id?: string) => ({ action: `group.${verb}`, target: 'group', id });
