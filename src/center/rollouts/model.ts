import type { Kysely, Transaction } from 'kysely';
import type { Logger } from 'pino';
import { BulkheadError, ErrorCodes, RolloutPhasesSchema } from '../../protocol/index.ts';
import type { Database, DatabaseDialect, Row, RolloutState } from '../db/index.ts';
import type { PushBus } from '../push.ts';
import { bucketOf, isInPhase } from './bucket.ts';

/*
 * The rollout model. A device's version of image X is the version of the newest rollout
 * (by created_at, then id) that
 *   - is running, paused, halted or completed (pending ones have not started, aborted ones
 *     stopped applying),
 *   - rolls out a version of X,
 *   - targets the device (its group_id is the device's group, or null; its profile_id is one of
 *     the device's profiles, or null), and
 *   - includes the device in the phases reached so far (`isInPhase(bucket, phases,
 *     current_phase)`; a completed rollout stays at its last phase),
 * or, when no rollout does, the image's released version (`images.release_version_id`).
 * Pausing and halting freeze `current_phase`: devices already in keep the version, none are
 * added. Nothing per device is stored to know this: the desired state computes it from the
 * rollout rows and the bucket, so it is right for devices that joined the group mid-rollout.
 * `rollout_devices` is the record of who was included and what each device reported, which the
 * counts and the failure threshold read.
 */

/** States in which a rollout gives its version to the devices it includes. */
export const APPLYING_STATES: readonly RolloutState[] = [
  'running',
  'paused',
  'halted',
  'completed',
];

/** Device states a rollout counts as its target: killed and retired devices get nothing. */
export const TARGETED_DEVICE_STATES = ['active', 'locked'] as const;

/** What the rollout code needs; the scheduler and the admin routes share it. */
export interface RolloutContext {
  db: Kysely<Database>;
  dialect: DatabaseDialect;
  push: PushBus;
  now: () => Date;
  log: Logger;
}

export type Tx = Transaction<Database>;

/** A rollout row with its phases parsed. */
export type RolloutRow = Row<'rollouts'> & { phaseList: number[] };

export function parseRollout(row: Row<'rollouts'>): RolloutRow {
  let phases: unknown;
  try {
    phases = JSON.parse(row.phases);
  } catch {
    phases = undefined;
  }
  const parsed = RolloutPhasesSchema.safeParse(phases);
  if (!parsed.success) {
    throw new BulkheadError(ErrorCodes.INTERNAL, `rollout ${row.id} has unreadable phases`);
  }
  return {
    ...row,
    current_phase: Number(row.current_phase),
    soak_ms: Number(row.soak_ms),
    failure_threshold: Number(row.failure_threshold),
    min_reports: Number(row.min_reports),
    created_at: Number(row.created_at),
    updated_at: Number(row.updated_at),
    phase_started_at: row.phase_started_at === null ? null : Number(row.phase_started_at),
    phaseList: parsed.data,
  };
}

/** A device as targeting sees it. */
export interface TargetDevice {
  id: string;
  groupId: string;
  profileIds: ReadonlySet<string>;
}

/** Whether the rollout's target (group and/or profile) covers the device. */
export function targets(
  rollout: Pick<Row<'rollouts'>, 'group_id' | 'profile_id'>,
  device: TargetDevice,
): boolean {
  return (
    (rollout.group_id === null || rollout.group_id === device.groupId) &&
    (rollout.profile_id === null || device.profileIds.has(rollout.profile_id))
  );
}

/** Whether the rollout gives its version to the device now (state, target and phase). */
export function includes(rollout: RolloutRow, device: TargetDevice): boolean {
  return (
    APPLYING_STATES.includes(rollout.state) &&
    targets(rollout, device) &&
    isInPhase(bucketOf(rollout.id, device.id), rollout.phaseList, rollout.current_phase)
  );
}

/** Most ids in one statement's IN list, well below both databases' parameter limits. */
const ID_BATCH = 1000;

export function* batches<T>(items: readonly T[], size = ID_BATCH): Generator<T[]> {
  for (let i = 0; i < items.length; i += size) yield items.slice(i, i + size);
}

/** Rows of target devices read per page when a phase starts. */
const TARGET_PAGE = 5000;

/**
 * Calls `visit` with every device the rollout targets, a page at a time (keyset on id), so a
 * target of 100,000 devices is never all in memory. One pass costs O(devices in the target).
 */
export async function forEachTargetDevice(
  tx: Tx | Kysely<Database>,
  rollout: Pick<Row<'rollouts'>, 'group_id' | 'profile_id'>,
  visit: (ids: string[]) => Promise<void> | void,
): Promise<void> {
  let after = '';
  for (;;) {
    let q = tx
      .selectFrom('devices as d')
      .select('d.id')
      .where('d.state', 'in', TARGETED_DEVICE_STATES)
      .where('d.id', '>', after)
      .orderBy('d.id')
      .limit(TARGET_PAGE);
    if (rollout.group_id !== null) q = q.where('d.group_id', '=', rollout.group_id);
    if (rollout.profile_id !== null) {
      const profileId = rollout.profile_id;
      q = q.where((eb) =>
        eb.exists(
          eb
            .selectFrom('device_profiles as dp')
            .select('dp.device_id')
            .whereRef('dp.device_id', '=', 'd.id')
            .where('dp.profile_id', '=', profileId),
        ),
      );
    }
    const rows = await q.execute();
    if (rows.length === 0) return;
    await visit(rows.map((r) => r.id));
    after = rows.at(-1)!.id;
    if (rows.length < TARGET_PAGE) return;
  }
}
