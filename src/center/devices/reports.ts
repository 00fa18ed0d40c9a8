import type { Kysely } from 'kysely';
import type { Database } from '../db/index.ts';
import {
  BulkheadError,
  ErrorCodes,
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
  db: Kysely<Database>,
  deviceId: string,
  report: ReportRequest,
  now: Date,
): Promise<ReportResponse> {
  const nowMs = now.getTime();
  return db.transaction().execute(async (tx) => {
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
    return { accepted: inserted.length, duplicates: report.events.length - inserted.length };
  });
}
