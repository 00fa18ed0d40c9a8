import { sql, type Transaction } from 'kysely';
import { markChanged, transact, type ChangeDeps } from '../changes/index.ts';
import type { Database } from '../db/index.ts';
import { recordRolloutReports } from '../rollouts/reports.ts';
import { cutOffError } from './standing.ts';
import { recordUpdateStatus } from './update-status.ts';
import {
  BulkheadError,
  ErrorCodes,
  type DeviceEvent,
  type DeviceEventOf,
  type ReportRequest,
  type ReportResponse,
} from '../../protocol/index.ts';

/**
 * Stores a batch of a device's events and notes the contact, in one transaction. Idempotent
 * by (device, event id): the primary key turns a replayed event into a conflict that inserts
 * nothing, and RETURNING lists only the rows really inserted, so the counts are exact even
 * when the batch repeats an id or races another replay.
 *
 * @throws BulkheadError `ERR_UNAUTHENTICATED` when the device no longer exists;
 *   `ERR_DEVICE_KILLED` or `ERR_DEVICE_RETIRED` when it is cut off.
 */
export async function ingestReports(
  deps: ChangeDeps,
  deviceId: string,
  report: ReportRequest,
  now: Date,
): Promise<ReportResponse> {
  const nowMs = now.getTime();
  return transact(deps, async (tx) => {
    // First, so that a device deleted while its token lives is refused rather than tripping
    // the events' foreign key; and a device killed or retired since the authentication hook
    // looked (its notification still on its way) is refused by the database's word, before
    // any of its reports could count in a rollout.
    const contact = await tx
      .updateTable('devices')
      .set({ last_contact_at: nowMs })
      .where('id', '=', deviceId)
      .where('state', 'in', ['active', 'locked'])
      .executeTakeFirst();
    if (Number(contact.numUpdatedRows) !== 1) {
      const device = await tx
        .selectFrom('devices')
        .select('state')
        .where('id', '=', deviceId)
        .executeTakeFirst();
      if (device === undefined) {
        throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device is not enrolled');
      }
      throw cutOffError(device.state);
    }
    const inserted = await tx
      .insertInto('device_events')
      .values(
        report.events.map((e) => ({
          device_id: deviceId,
          event_id: e.id,
          type: e.type,
          payload: JSON.stringify(e.data),
          occurred_at: e.at,
          received_at: nowMs,
        })),
      )
      .onConflict((oc) => oc.columns(['device_id', 'event_id']).doNothing())
      .returning('event_id')
      .execute();
    const fresh = new Set(inserted.map((r) => r.event_id));
    const freshEvents = report.events.filter((e) => fresh.has(e.id));
    await recordRolloutReports(tx, deviceId, freshEvents, nowMs);
    await recordUpdateStatus(tx, deviceId, freshEvents);
    await settleCommands(
      tx,
      deviceId,
      report.events,
      new Set(inserted.map((r) => r.event_id)),
      nowMs,
    );
    return { accepted: inserted.length, duplicates: report.events.length - inserted.length };
  });
}

/**
 * Settles the commands that fresh `command-result` events acknowledge: `done` when `ok`, else
 * `failed`, with the device's report as the result. Only the device's own commands that are
 * still open change, so a replay, a stray id or another device's command id does nothing.
 * A settled command leaves the desired state's list, so the device is marked changed (and told
 * after commit, which also forgets the ETag Center last answered it with).
 */
async function settleCommands(
  tx: Transaction<Database>,
  deviceId: string,
  events: readonly DeviceEvent[],
  fresh: ReadonlySet<string>,
  nowMs: number,
): Promise<void> {
  let settled = 0;
  for (const event of events) {
    if (event.type !== 'command-result' || !fresh.has(event.id)) continue;
    const { commandId, ok, message } = event.data;
    const result = await tx
      .updateTable('commands')
      .set({
        state: ok ? 'done' : 'failed',
        result: JSON.stringify({ ok, message }),
        updated_at: sql<number>`case when updated_at >= ${nowMs} then updated_at + 1 else ${nowMs} end`,
      })
      .where('id', '=', commandId)
      .where('device_id', '=', deviceId)
      .where('state', 'in', ['pending', 'delivered'])
      .executeTakeFirst();
    settled += Number(result.numUpdatedRows);
  }
  if (settled > 0) await markChanged(tx, { devices: [deviceId] }, nowMs);
}

/**
 * Records a killed device's result of its kill command (see `KillResultRequestSchema`; the
 * caller checked the device's signature): the command is settled as the event says, the event
 * stored and the contact noted, in one transaction. Only the first result of an open kill
 * command is stored; a replay, or a result of a command already settled (a retirement cancels
 * it), stores nothing, so a cut-off device cannot write more than this one event.
 *
 * @throws BulkheadError `ERR_VALIDATION` naming the field when the event is not the result of
 *   a kill command of this device; `ERR_DEVICE_STATE` when the device is not killed.
 */
export async function recordKillResult(
  deps: ChangeDeps,
  deviceId: string,
  event: DeviceEventOf<'command-result'>,
  now: Date,
): Promise<ReportResponse> {
  const nowMs = now.getTime();
  if (event.data.kind !== 'kill') {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'body.event.data.kind: only the result of a kill command goes here; a device in good standing reports through /api/v1/device/reports',
    );
  }
  return transact(deps, async (tx) => {
    const command = await tx
      .selectFrom('commands as c')
      .innerJoin('devices as d', 'd.id', 'c.device_id')
      .select(['c.state', 'd.state as device_state'])
      .where('c.id', '=', event.data.commandId)
      .where('c.device_id', '=', deviceId)
      .where('c.kind', '=', 'kill')
      .executeTakeFirst();
    if (command === undefined) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        'body.event.data.commandId: not a kill command of this device',
      );
    }
    if (command.device_state !== 'killed' && command.device_state !== 'retired') {
      throw new BulkheadError(
        ErrorCodes.DEVICE_STATE,
        `this device is ${command.device_state}, not killed; it reports through /api/v1/device/reports`,
      );
    }
    await tx
      .updateTable('devices')
      .set({ last_contact_at: nowMs })
      .where('id', '=', deviceId)
      .execute();
    if (command.state !== 'pending' && command.state !== 'delivered') {
      return { accepted: 0, duplicates: 1 };
    }
    const inserted = await tx
      .insertInto('device_events')
      .values({
        device_id: deviceId,
        event_id: event.id,
        type: event.type,
        payload: JSON.stringify(event.data),
        occurred_at: event.at,
        received_at: nowMs,
      })
      .onConflict((oc) => oc.columns(['device_id', 'event_id']).doNothing())
      .returning('event_id')
      .execute();
    const fresh = new Set(inserted.map((r) => r.event_id));
    await settleCommands(tx, deviceId, [event], fresh, nowMs);
    return { accepted: inserted.length, duplicates: 1 - inserted.length };
  });
}
