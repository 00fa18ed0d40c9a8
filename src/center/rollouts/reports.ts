import {
  BulkheadError,
  CurrentVersionsSchema,
  ErrorCodes,
  isUpdateEvent,
  type CurrentVersions,
  type DeviceEvent,
  type ReleaseVolume,
  type UpdateEventType,
} from '../../protocol/index.ts';
import type { RolloutDeviceStatus } from '../db/index.ts';
import { bucketOf, firstPhaseOf } from './bucket.ts';
import { haltIfFailing } from './commands.ts';
import { APPLYING_STATES, parseRollout, targets, type RolloutRow, type Tx } from './model.ts';

/*
 * What device reports mean for rollouts. Each update event names every volume version of the
 * release it is about, and which of them its transaction brings (`isNew`); it moves the device's
 * row in each applying rollout, of any of the versions it brings, that includes the device:
 *
 *   download-progress → downloading, staged → staged, switched → switched (in progress),
 *   healthy → healthy, failed (download or verification) → failed, rolled-back → rolled-back.
 *
 * Only the versions a transaction brings are credited: an app update that rolls back says
 * nothing about the system version the VM kept, whose own rollout may long be complete.
 *
 * Outcomes (healthy, failed, rolled-back) replace anything; progress never replaces an outcome,
 * so a late or replayed `staged` cannot hide a failure. Events are applied in the device's
 * order (`at`). A device that joined the target after its phase started is recorded by its
 * first report, with the phase its bucket falls in.
 *
 * Reports from devices that were offline count when they arrive: once recorded, each running
 * rollout they touched is judged against its failure threshold at once, in the same
 * transaction, so a rollout halts at ingestion and not only at the scheduler's next tick.
 */

const STATUS_OF: Record<UpdateEventType, RolloutDeviceStatus> = {
  'download-progress': 'downloading',
  staged: 'staged',
  switched: 'switched',
  healthy: 'healthy',
  failed: 'failed',
  'rolled-back': 'rolled-back',
};

const OUTCOMES = new Set<RolloutDeviceStatus>(['healthy', 'failed', 'rolled-back']);

interface Parsed {
  status: RolloutDeviceStatus;
  /** The versions the transaction brings: the rollouts credited. */
  brought: string[];
  reason: string | null;
  profileId: string;
  volumes: ReleaseVolume[];
  at: number;
}

function parse(event: DeviceEvent): Parsed | undefined {
  if (!isUpdateEvent(event)) return undefined;
  const { data } = event;
  return {
    status: STATUS_OF[event.type],
    brought: data.volumes.filter((v) => v.isNew).map((v) => v.versionId),
    reason:
      event.type === 'rolled-back' || event.type === 'failed'
        ? event.data.reason || event.type
        : null,
    profileId: data.profileId,
    volumes: data.volumes,
    at: event.at,
  };
}

/**
 * Applies a device's newly stored events to its rollouts and its current versions; call it in
 * the transaction that stored them, with only the events really inserted (not replays).
 * Halts, in the same transaction, any running rollout these reports push over its threshold.
 * Never changes the device's desired state, so it bumps nothing. The caller has already updated
 * the device row in this transaction (its contact time), which on PostgreSQL holds the row's
 * lock: two reports of one device are applied one after the other, and `current_versions`
 * loses no update.
 */
export async function recordRolloutReports(
  tx: Tx,
  deviceId: string,
  events: readonly DeviceEvent[],
  nowMs: number,
): Promise<void> {
  const parsed = events
    .map(parse)
    .filter((p): p is Parsed => p !== undefined)
    .sort((a, b) => a.at - b.at);
  if (parsed.length === 0) return;
  const device = await tx
    .selectFrom('devices')
    .select(['group_id', 'current_versions'])
    .where('id', '=', deviceId)
    .executeTakeFirst();
  if (device === undefined) return;
  const profiles = await tx
    .selectFrom('device_profiles')
    .select('profile_id')
    .where('device_id', '=', deviceId)
    .execute();
  const target = {
    id: deviceId,
    groupId: device.group_id,
    profileIds: new Set(profiles.map((p) => p.profile_id)),
  };

  const versionIds = [...new Set(parsed.flatMap((p) => p.brought))];
  const rolloutRows =
    versionIds.length === 0
      ? []
      : await tx
          .selectFrom('rollouts')
          .selectAll()
          .where('image_version_id', 'in', versionIds)
          .where('state', 'in', APPLYING_STATES)
          .execute();
  // The rollouts of each version that include this device, with its first phase in each.
  const rolloutsOf = new Map<string, { rollout: RolloutRow; phase: number }[]>();
  for (const row of rolloutRows) {
    const rollout = parseRollout(row);
    if (!targets(rollout, target)) continue;
    const phase = firstPhaseOf(bucketOf(rollout.id, deviceId), rollout.phaseList);
    if (phase < 0 || phase > rollout.current_phase) continue;
    const list = rolloutsOf.get(rollout.image_version_id) ?? [];
    list.push({ rollout, phase });
    rolloutsOf.set(rollout.image_version_id, list);
  }

  let current: CurrentVersions | undefined;
  const touched = new Map<string, RolloutRow>();
  for (const event of parsed) {
    for (const versionId of event.brought) {
      for (const { rollout, phase } of rolloutsOf.get(versionId) ?? []) {
        await setStatus(tx, rollout.id, deviceId, phase, event, nowMs);
        touched.set(rollout.id, rollout);
      }
    }
    if (event.status === 'healthy') {
      // The VM runs exactly this release now: its system and its apps, none other.
      current ??= readCurrent(device.current_versions);
      const apps: Record<string, string> = {};
      let system: string | undefined;
      for (const v of event.volumes) {
        if (v.role === 'system') system = v.versionId;
        else apps[v.imageId] = v.versionId;
      }
      current[event.profileId] = { ...(system === undefined ? {} : { system }), apps };
    }
  }
  if (current !== undefined) {
    // Not `updated_at`: what the device runs is not what it should run.
    await tx
      .updateTable('devices')
      .set({ current_versions: JSON.stringify(current) })
      .where('id', '=', deviceId)
      .execute();
  }
  for (const rollout of touched.values()) {
    try {
      await haltIfFailing(tx, rollout, nowMs);
    } catch (err) {
      // Another writer changed the rollout meanwhile; the scheduler judges it at its next tick.
      if (!(err instanceof BulkheadError && err.code === ErrorCodes.ROLLOUT_STATE)) throw err;
    }
  }
}

function readCurrent(text: string): CurrentVersions {
  try {
    const parsed = CurrentVersionsSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : {};
  } catch {
    return {};
  }
}

async function setStatus(
  tx: Tx,
  rolloutId: string,
  deviceId: string,
  phase: number,
  event: Parsed,
  nowMs: number,
): Promise<void> {
  const existing = await tx
    .selectFrom('rollout_devices')
    .select('status')
    .where('rollout_id', '=', rolloutId)
    .where('device_id', '=', deviceId)
    .executeTakeFirst();
  if (existing === undefined) {
    await tx
      .insertInto('rollout_devices')
      .values({
        rollout_id: rolloutId,
        device_id: deviceId,
        phase,
        status: event.status,
        reason: event.reason,
        updated_at: nowMs,
      })
      .onConflict((oc) =>
        oc
          .columns(['rollout_id', 'device_id'])
          .doUpdateSet({ status: event.status, reason: event.reason, updated_at: nowMs }),
      )
      .execute();
    return;
  }
  if (!OUTCOMES.has(event.status) && OUTCOMES.has(existing.status)) return;
  if (existing.status === event.status && !OUTCOMES.has(event.status)) return;
  await tx
    .updateTable('rollout_devices')
    .set({ status: event.status, reason: event.reason, updated_at: nowMs })
    .where('rollout_id', '=', rolloutId)
    .where('device_id', '=', deviceId)
    .execute();
}
