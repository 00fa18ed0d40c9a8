import { sql, type Kysely } from 'kysely';
import type { FleetSummary, VersionName } from '../../protocol/index.ts';
import type { Database } from '../db/index.ts';
import { releaseOf } from '../rollouts/index.ts';
import { parseJson } from './common.ts';
import { statusOf, type StatusClock } from './status.ts';
import { countVersions } from './version-counts.ts';

/*
 * The fleet at a glance (the console's dashboard), in five statements whatever the fleet's
 * size, each a grouped or bounded walk of an index of migration 0014: no statement reads events
 * or documents per device.
 */

const DAY_MS = 86_400_000;
/** Leases running out within this are listed. */
const LEASE_HORIZON_MS = 3 * DAY_MS;
const LEASES_LISTED = 50;
const FAILURES_LISTED = 20;
const FAILURE_TYPES = ['rolled-back', 'failed'] as const;

export async function fleetSummary(
  db: Kysely<Database>,
  clock: StatusClock,
): Promise<FleetSummary> {
  const since = clock.nowMs - clock.onlineWindowMs;
  const [groups, versions, leases, ...failures] = await Promise.all([
    // Grouped in the order of the (state, update_status, last_contact_at) index: no sort.
    db
      .selectFrom('devices')
      .select([
        'state',
        'update_status',
        sql<number>`sum(case when last_contact_at >= ${since} then 1 else 0 end)`.as('recent'),
        sql<number>`count(*)`.as('n'),
      ])
      .groupBy(['state', 'update_status'])
      .execute(),
    countVersions(db),
    db
      .selectFrom('devices')
      .select(['id', 'name', 'lease_expires_at'])
      .where('state', '=', 'active')
      .where('lease_expires_at', 'is not', null)
      .where('lease_expires_at', '<=', clock.nowMs + LEASE_HORIZON_MS)
      .orderBy('lease_expires_at')
      .orderBy('id')
      .limit(LEASES_LISTED)
      .execute(),
    // One walk of the (type, occurred_at) index per type, merged here: a single statement over
    // both types would sort every failure the fleet ever reported.
    ...FAILURE_TYPES.map((type) =>
      db
        .selectFrom('device_events as e')
        .innerJoin('devices as d', 'd.id', 'e.device_id')
        .select(['e.device_id', 'd.name', 'e.type', 'e.payload', 'e.occurred_at', 'e.event_id'])
        .where('e.type', '=', type)
        .orderBy('e.occurred_at', 'desc')
        .limit(FAILURES_LISTED)
        .execute(),
    ),
  ]);

  const devices = {
    total: 0,
    online: 0,
    offline: 0,
    updating: 0,
    failed: 0,
    locked: 0,
    killed: 0,
    retired: 0,
  };
  for (const g of groups) {
    const recent = Number(g.recent);
    // Any contact time on the right side of the window stands for its part of the group.
    for (const [n, lastContact] of [
      [recent, clock.nowMs],
      [Number(g.n) - recent, since - 1],
    ] as const) {
      if (n === 0) continue;
      const status = statusOf(
        { state: g.state, update_status: g.update_status, last_contact_at: lastContact },
        clock,
      );
      devices[status] += n;
      devices.total += n;
    }
  }

  const profileIds = [...new Set(versions.map((v) => v.profile_id))];
  const versionIds = [
    ...new Set(
      versions.flatMap((v) => (v.system_version_id === null ? [] : [v.system_version_id])),
    ),
  ];
  const [profiles, names] = await Promise.all([
    profileIds.length === 0
      ? []
      : db.selectFrom('profiles').select(['id', 'name']).where('id', 'in', profileIds).execute(),
    versionIds.length === 0
      ? []
      : db
          .selectFrom('image_versions as v')
          .innerJoin('images as i', 'i.id', 'v.image_id')
          .select(['v.id', 'v.image_id', 'v.version', 'i.name'])
          .where('v.id', 'in', versionIds)
          .execute(),
  ]);
  const nameOf = new Map<string, VersionName>(
    names.map((v) => [v.id, { id: v.id, imageId: v.image_id, image: v.name, version: v.version }]),
  );
  const versionsByProfile = profiles
    .sort((a, b) => a.name.localeCompare(b.name))
    .map((p) => ({
      profile: { id: p.id, name: p.name },
      versions: versions
        .filter((v) => v.profile_id === p.id)
        .map((v) => ({
          version: v.system_version_id === null ? null : (nameOf.get(v.system_version_id) ?? null),
          devices: Number(v.n),
        }))
        .sort((a, b) => b.devices - a.devices),
    }));

  const recentFailures = failures
    .flat()
    .sort(
      (a, b) =>
        Number(b.occurred_at) - Number(a.occurred_at) || b.event_id.localeCompare(a.event_id),
    )
    .slice(0, FAILURES_LISTED)
    .map((f) => {
      const data = parseJson(f.payload);
      const reason = (data as Record<string, unknown> | null)?.['reason'];
      return {
        device: { id: f.device_id, name: f.name },
        at: Number(f.occurred_at),
        type: f.type,
        reason: typeof reason === 'string' && reason !== '' ? reason : null,
        version: releaseOf(data) ?? null,
      };
    });

  return {
    generatedAt: clock.nowMs,
    devices,
    versionsByProfile,
    leasesExpiringSoon: leases.map((l) => ({
      device: { id: l.id, name: l.name },
      expiresAt: Number(l.lease_expires_at),
    })),
    recentFailures,
  };
}
