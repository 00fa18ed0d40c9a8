import { sql, type Transaction } from 'kysely';
import { markChanged, transact, type ChangeDeps } from '../changes/index.ts';
import type { Database } from '../db/index.ts';
import { recordRolloutReports } from '../rollouts/reports.ts';
import {
  BulkheadError,
  ErrorCodes,
  type DeviceEvent,
  type ReportRequest,
  type ReportResponse,
} from '../../protocol/index.ts';

/**
 * Stores a batch of a device's events and notes the contact, in one transaction. Idempotent
 * by (device, event id): the primary key turns a replayed event into a conflict that inserts
 * nothing, and RETURNING lists only the rows really inserted, so the counts are exact even
 * when the batch repeats an id or races another replay.
 *
 * @throws BulkheadError `ERR_UNAUTHENTICATED` when the device no longer exists.
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
    // the events' foreign key.
    const contact = await tx
      .updateTable('devices')
      .set({ last_contact_at: nowMs })
      .where('id', '=', deviceId)
      .executeTakeFirst();
    if (Number(contact.numUpdatedRows) !== 1) {
      throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device is not enrolled');
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
    await recordRolloutReports(
      tx,
      deviceId,
      report.events.filter((e) => fresh.has(e.id)),
      nowMs,
    );
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
