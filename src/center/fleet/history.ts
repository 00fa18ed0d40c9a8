import type { Kysely } from 'kysely';
import type { FleetHistory } from '../../protocol/index.ts';
import type { Database } from '../db/index.ts';
import { countVersions } from './version-counts.ts';

/*
 * Versions across the fleet over time (the console's chart). Counting what 100,000 devices run
 * is a grouped index scan (device_profiles by version, migration 0014); doing it for every day
 * of a chart on every request is not, and the past cannot be counted afterwards anyway. So
 * Center keeps snapshots: devices per system version, at most one per hour (keyed by the hour,
 * so replicas that race insert it once), taken by a timer in each replica and on demand when a
 * chart finds none for the current hour. A chart reads the snapshot nearest before each of its
 * points: a few hundred rows.
 */

const HOUR_MS = 60 * 60_000;
const DAY_MS = 24 * HOUR_MS;
/** How often each replica checks whether this hour's snapshot is taken. */
export const SNAPSHOT_CHECK_MS = 5 * 60_000;
/** Snapshots older than the longest chart (90 days) and a day are pruned. */
const KEEP_MS = 91 * DAY_MS;
/** The row of a snapshot that found no versions, so that the hour counts as taken. */
const NOTHING = '';

/** Takes this hour's snapshot unless one exists. Safe to call from several replicas at once. */
export async function takeSnapshotIfDue(db: Kysely<Database>, nowMs: number): Promise<void> {
  const hour = nowMs - (nowMs % HOUR_MS);
  const taken = await db
    .selectFrom('fleet_version_snapshots')
    .select('at')
    .where('at', '=', hour)
    .limit(1)
    .executeTakeFirst();
  if (taken !== undefined) return;
  const perVersion = new Map<string, number>();
  for (const c of await countVersions(db)) {
    if (c.system_version_id === null) continue;
    perVersion.set(c.system_version_id, (perVersion.get(c.system_version_id) ?? 0) + c.n);
  }
  const rows = [...perVersion].map(([version_id, devices]) => ({ at: hour, version_id, devices }));
  await db
    .insertInto('fleet_version_snapshots')
    .values(rows.length > 0 ? rows : [{ at: hour, version_id: NOTHING, devices: 0 }])
    .onConflict((oc) => oc.columns(['at', 'version_id']).doNothing())
    .execute();
  await db
    .deleteFrom('fleet_version_snapshots')
    .where('at', '<', hour - KEEP_MS)
    .execute();
}

/**
 * One point a day over `days` days, oldest first, the last one `nowMs`: devices per system
 * version (`image@version`), most first, as the newest snapshot at or before the point counted
 * them; no versions before the first snapshot.
 */
export async function fleetHistory(
  db: Kysely<Database>,
  days: number,
  nowMs: number,
): Promise<FleetHistory> {
  await takeSnapshotIfDue(db, nowMs);
  const points = Array.from({ length: days }, (_, i) => nowMs - (days - 1 - i) * DAY_MS);
  const first = points[0]!;
  const [before, within] = await Promise.all([
    db
      .selectFrom('fleet_version_snapshots')
      .select((eb) => eb.fn.max('at').as('at'))
      .where('at', '<=', first)
      .executeTakeFirst(),
    db
      .selectFrom('fleet_version_snapshots')
      .select('at')
      .distinct()
      .where('at', '>', first)
      .where('at', '<=', nowMs)
      .orderBy('at')
      .execute(),
  ]);
  const times = [
    ...(before?.at === null || before?.at === undefined ? [] : [Number(before.at)]),
    ...within.map((r) => Number(r.at)),
  ];
  // The snapshot each point reads: the newest at or before it.
  let next = 0;
  const chosen = points.map((at) => {
    while (next < times.length && times[next]! <= at) next += 1;
    return next === 0 ? undefined : times[next - 1];
  });
  const wanted = [...new Set(chosen.filter((t): t is number => t !== undefined))];
  const rows =
    wanted.length === 0
      ? []
      : await db
          .selectFrom('fleet_version_snapshots as s')
          .leftJoin('image_versions as v', 'v.id', 's.version_id')
          .leftJoin('images as i', 'i.id', 'v.image_id')
          .select(['s.at', 's.devices', 's.version_id', 'v.version', 'i.name'])
          .where('s.at', 'in', wanted)
          .where('s.version_id', '<>', NOTHING)
          .execute();
  const bySnapshot = new Map<number, { version: string; devices: number }[]>();
  for (const r of rows) {
    const list = bySnapshot.get(Number(r.at)) ?? [];
    // A version deleted since is still counted, by its id.
    const version = r.name === null || r.version === null ? r.version_id : `${r.name}@${r.version}`;
    list.push({ version, devices: Number(r.devices) });
    bySnapshot.set(Number(r.at), list);
  }
  for (const list of bySnapshot.values()) {
    list.sort((a, b) => b.devices - a.devices || a.version.localeCompare(b.version));
  }
  return {
    points: points.map((at, i) => {
      const snapshot = chosen[i];
      return { at, versions: snapshot === undefined ? [] : (bySnapshot.get(snapshot) ?? []) };
    }),
  };
}
