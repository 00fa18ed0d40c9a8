import { sql, type Kysely, type Transaction } from 'kysely';
import type { Database } from '../db/index.ts';
import type { PushBus } from '../push.ts';

/*
 * How Center marks a device's desired state as changed. The desired state's revision, and so
 * its ETag, follow `devices.updated_at`: every change to what a device should run moves it, in
 * the transaction that makes the change, and strictly forward even when two changes land in
 * one millisecond. The devices are told (push bus, which also empties their cached ETags) only
 * after that transaction commits: a device told earlier could fetch the old state and keep it.
 * `markChanged` records what it marked on the transaction, and `transact` tells them after
 * commit, so no caller can forget either half or do them in the wrong order.
 */

/** Which devices a change touches. Groups and profiles are sub-selects, any size. */
export type ChangeTarget =
  { devices: readonly string[] } | { group: string } | { profiles: readonly string[] } | 'all';

/** What a transaction run by `transact` has marked so far. */
interface Marks {
  all: boolean;
  ids: Set<string>;
}

const marksOf = new WeakMap<Transaction<Database>, Marks>();

/** Most ids in one statement's IN list, well below both databases' parameter limits. */
const ID_BATCH = 1000;

/** More devices than this are told with one `notify('all')` rather than by id. */
const NOTIFY_BY_ID_MAX = 1000;

const bumped = (nowMs: number) =>
  sql<number>`case when updated_at >= ${nowMs} then updated_at + 1 else ${nowMs} end`;

/**
 * Moves `updated_at` of the target's devices to max(now, old + 1), in `trx`, and records them
 * for the notification `transact` sends after commit.
 *
 * @throws Error when `trx` was not opened by `transact` (nobody would tell the devices).
 */
export async function markChanged(
  trx: Transaction<Database>,
  target: ChangeTarget,
  nowMs: number,
): Promise<void> {
  const marks = marksOf.get(trx);
  if (marks === undefined) {
    throw new Error('markChanged: the transaction was not opened by transact');
  }
  const update = () => trx.updateTable('devices').set({ updated_at: bumped(nowMs) });
  if (target === 'all') {
    await update().execute();
    marks.all = true;
    return;
  }
  let rows: { id: string }[];
  if ('devices' in target) {
    rows = [];
    for (let i = 0; i < target.devices.length; i += ID_BATCH) {
      const ids = target.devices.slice(i, i + ID_BATCH);
      rows.push(...(await update().where('id', 'in', ids).returning('id').execute()));
    }
  } else if ('group' in target) {
    rows = await update().where('group_id', '=', target.group).returning('id').execute();
  } else {
    if (target.profiles.length === 0) return;
    const profileIds = target.profiles;
    rows = await update()
      .where('id', 'in', (eb) =>
        eb.selectFrom('device_profiles').select('device_id').where('profile_id', 'in', profileIds),
      )
      .returning('id')
      .execute();
  }
  for (const row of rows) marks.ids.add(row.id);
}

/** What `transact` needs: the database, and the push bus when this process has one. */
export interface ChangeDeps {
  db: Kysely<Database>;
  /**
   * Tells devices after commit. Absent where no device listens to this process (the CLI
   * writing to the database directly, seeding before Center serves): they learn at their next
   * poll, since the revision moved all the same.
   */
  push?: PushBus | undefined;
}

/**
 * Runs `work` in one transaction; after it commits, tells the devices `markChanged` marked in
 * it. Nothing is told when it rolls back.
 */
export async function transact<T>(
  deps: ChangeDeps,
  work: (trx: Transaction<Database>) => Promise<T>,
): Promise<T> {
  let marks: Marks | undefined;
  const result = await deps.db.transaction().execute(async (trx) => {
    marks = { all: false, ids: new Set() };
    marksOf.set(trx, marks);
    return work(trx);
  });
  if (marks !== undefined && deps.push !== undefined) {
    if (marks.all || marks.ids.size > NOTIFY_BY_ID_MAX) deps.push.notify('all');
    else if (marks.ids.size > 0) deps.push.notify([...marks.ids]);
  }
  return result;
}
