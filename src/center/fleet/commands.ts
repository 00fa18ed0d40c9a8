import type { Kysely, Transaction } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type Command,
  type CreateCommandRequest,
} from '../../protocol/index.ts';
import type { Caller } from '../admin/credentials.ts';
import { markChanged, runCommand } from '../changes/index.ts';
import { newId, type Database, type DeviceState, type Row } from '../db/index.ts';
import { badReference, notFound, parseJson, type FleetDeps } from './common.ts';

/*
 * Commands to one device. A command is `pending` from the moment it is issued until the device
 * acknowledges it with a `command-result` report (`done` or `failed`); Center does not mark it
 * `delivered` when a desired state carrying it is served, because the desired state lists
 * exactly the pending commands and its ETag counts them: marking on read would turn every
 * fetch into a write and drop the command from the next document, so a device that crashed
 * after the fetch would never see it again. Retiring a device, or killing it, cancels its
 * other unacknowledged commands.
 *
 * lock, unlock and kill also set the device's state at once (the state travels in the desired
 * state too, so a device that misses the command still converges). A killed device is cut off
 * at once, acknowledged or not: from then on every device route answers it only with its signed
 * kill notice (src/center/devices/standing.ts), and it sends its kill's result to the one route
 * that takes it, proved by its key (`POST /api/v1/device/kill-result`).
 */

export function presentCommand(row: Row<'commands'>): Command {
  return {
    id: row.id,
    deviceId: row.device_id,
    kind: row.kind,
    profileId: row.profile_id,
    state: row.state,
    result: parseJson(row.result),
    createdBy: row.created_by,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/** The device state each command sets, if it sets one. */
const STATE_AFTER: Partial<Record<Command['kind'], DeviceState>> = {
  lock: 'locked',
  unlock: 'active',
  kill: 'killed',
};

/**
 * Issues a command to a device, changes its state where the command does, marks its desired
 * state changed and tells it over the push channel.
 *
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_DEVICE_STATE` for a killed or retired device;
 *   `ERR_VALIDATION` (body.profileId) for a restart of a VM the device does not run.
 */
export async function issueCommand(
  deps: FleetDeps,
  caller: Caller,
  deviceId: string,
  input: CreateCommandRequest,
): Promise<Command> {
  const spec = { action: `device.${input.kind}`, target: 'device', id: deviceId };
  return runCommand(deps, caller, spec, async (trx, at) => {
    const device = await trx
      .selectFrom('devices')
      .select(['id', 'state'])
      .where('id', '=', deviceId)
      .executeTakeFirst();
    if (!device) throw notFound('device', deviceId);
    if (device.state === 'killed' || device.state === 'retired') {
      throw new BulkheadError(
        ErrorCodes.DEVICE_STATE,
        `the device is ${device.state}; it takes no more commands`,
      );
    }
    if (input.profileId !== undefined) {
      const held = await trx
        .selectFrom('device_profiles')
        .select('profile_id')
        .where('device_id', '=', deviceId)
        .where('profile_id', '=', input.profileId)
        .executeTakeFirst();
      if (!held) throw badReference('body.profileId', 'the device does not hold this profile');
    }
    const state = STATE_AFTER[input.kind];
    // Nothing else matters to a device about to erase its keys.
    if (input.kind === 'kill') await cancelOpenCommands(trx, deviceId, at);
    if (state !== undefined && state !== device.state) {
      await trx.updateTable('devices').set({ state }).where('id', '=', deviceId).execute();
    }
    await markChanged(trx, { devices: [deviceId] }, at);
    const row: Row<'commands'> = {
      id: newId(at),
      device_id: deviceId,
      kind: input.kind,
      profile_id: input.profileId ?? null,
      state: 'pending',
      result: null,
      created_by: caller.userId,
      created_at: at,
      updated_at: at,
    };
    await trx.insertInto('commands').values(row).execute();
    return {
      result: presentCommand(row),
      before: { state: device.state },
      after: { state: state ?? device.state, commandId: row.id, profileId: row.profile_id },
    };
  });
}

/** Cancels the device's commands it has not acknowledged. */
export async function cancelOpenCommands(
  trx: Transaction<Database>,
  deviceId: string,
  at: number,
): Promise<void> {
  await trx
    .updateTable('commands')
    .set({ state: 'cancelled', updated_at: at })
    .where('device_id', '=', deviceId)
    .where('state', 'in', ['pending', 'delivered'])
    .execute();
}

/** A device's commands, newest first (the latest 200). @throws `ERR_NOT_FOUND`. */
export async function listCommands(db: Kysely<Database>, deviceId: string): Promise<Command[]> {
  const device = await db
    .selectFrom('devices')
    .select('id')
    .where('id', '=', deviceId)
    .executeTakeFirst();
  if (!device) throw notFound('device', deviceId);
  const rows = await db
    .selectFrom('commands')
    .selectAll()
    .where('device_id', '=', deviceId)
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(200)
    .execute();
  return rows.map(presentCommand);
}
