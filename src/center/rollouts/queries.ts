import type { Kysely } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type Rollout,
  type RolloutCounts,
  type RolloutDetail,
  type RolloutListQuery,
} from '../../protocol/index.ts';
import type { Database, RolloutDeviceStatus } from '../db/index.ts';
import { bucketOf, firstPhaseOf } from './bucket.ts';
import { phaseStats, presentRow } from './commands.ts';
import { forEachTargetDevice, parseRollout, type RolloutRow } from './model.ts';

/** Rollout rows with the names they are shown with (`RolloutNames`). */
function withNames(db: Kysely<Database>) {
  return db
    .selectFrom('rollouts as r')
    .innerJoin('image_versions as v', 'v.id', 'r.image_version_id')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .leftJoin('device_groups as g', 'g.id', 'r.group_id')
    .leftJoin('profiles as p', 'p.id', 'r.profile_id')
    .selectAll('r')
    .select([
      'v.version',
      'i.id as image_id',
      'i.name',
      'g.name as group_name',
      'p.name as profile_name',
    ]);
}

/** One page of rollouts, newest first, by keyset on (created_at, id). */
export async function listRollouts(
  db: Kysely<Database>,
  query: RolloutListQuery,
): Promise<{ rollouts: Rollout[]; next: string | null }> {
  let q = withNames(db)
    .orderBy('r.created_at', 'desc')
    .orderBy('r.id', 'desc')
    .limit(query.limit + 1);
  if (query.state !== undefined) q = q.where('r.state', '=', query.state);
  if (query.imageVersionId !== undefined) {
    q = q.where('r.image_version_id', '=', query.imageVersionId);
  }
  if (query.cursor !== undefined) {
    const { at, id } = decodeCursor(query.cursor);
    q = q.where((eb) =>
      eb.or([
        eb('r.created_at', '<', at),
        eb.and([eb('r.created_at', '=', at), eb('r.id', '<', id)]),
      ]),
    );
  }
  const rows = await q.execute();
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    rollouts: page.map((r) => presentRow(parseRollout(r), r)),
    next:
      rows.length > query.limit && last
        ? Buffer.from(`${Number(last.created_at)}:${last.id}`).toString('base64url')
        : null,
  };
}

function decodeCursor(cursor: string): { at: number; id: string } {
  const match = /^(\d{1,16}):([0-9a-f-]{36})$/.exec(
    Buffer.from(cursor, 'base64url').toString('utf8'),
  );
  if (!match) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'querystring.cursor: not a cursor from this API',
    );
  }
  return { at: Number(match[1]), id: match[2]! };
}

function emptyCounts(): RolloutCounts {
  return {
    targeted: 0,
    included: 0,
    pending: 0,
    inProgress: 0,
    healthy: 0,
    failed: 0,
    rolledBack: 0,
  };
}

const FIELD: Record<RolloutDeviceStatus, keyof RolloutCounts> = {
  pending: 'pending',
  downloading: 'inProgress',
  staged: 'inProgress',
  switched: 'inProgress',
  healthy: 'healthy',
  failed: 'failed',
  'rolled-back': 'rolledBack',
};

/**
 * A rollout with its counts per phase. `targeted` per phase needs each target device's bucket,
 * so this reads the target's ids once (O(devices in the target), paged); an admin page, not a
 * hot path.
 * @throws `ERR_NOT_FOUND`.
 */
export async function getRollout(db: Kysely<Database>, id: string): Promise<RolloutDetail> {
  const row = await withNames(db)
    .leftJoin('image_versions as rv', 'rv.id', 'i.release_version_id')
    .select(['rv.id as release_id', 'rv.version as release_version'])
    .where('r.id', '=', id)
    .executeTakeFirst();
  if (row === undefined) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout ${id}`);
  const rollout: RolloutRow = parseRollout(row);
  const phases = rollout.phaseList.map(emptyCounts);
  const totals = emptyCounts();
  await forEachTargetDevice(db, rollout, (ids) => {
    for (const deviceId of ids) {
      totals.targeted += 1;
      const phase = firstPhaseOf(bucketOf(rollout.id, deviceId), rollout.phaseList);
      if (phase >= 0) phases[phase]!.targeted += 1;
    }
  });
  for (const [phase, statuses] of await phaseStats(db, id)) {
    const counts = phases[phase];
    for (const [status, n] of statuses) {
      for (const c of counts ? [counts, totals] : [totals]) {
        c.included += n;
        c[FIELD[status]] += n;
      }
    }
  }
  const reached = (i: number) =>
    rollout.state !== 'pending' && (i <= rollout.current_phase || rollout.state === 'completed');
  return {
    ...presentRow(rollout, row),
    imageRelease:
      row.release_id !== null && row.release_version !== null
        ? { id: row.release_id, version: row.release_version }
        : null,
    totals,
    phaseCounts: phases.map((c, index) => ({
      ...c,
      index,
      percent: rollout.phaseList[index]!,
      reached: reached(index),
    })),
  };
}
