import { sql } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type CreateRolloutRequest,
  type Rollout,
  type RolloutAction,
  type RolloutStateName,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { applyCommand, markChanged, runCommand } from '../changes/index.ts';
import { hasRow, newId, refuseViolation, type RolloutDeviceStatus } from '../db/index.ts';
import { applyRelease } from '../images/index.ts';
import { requireTrustedSigner } from '../images/publishers.ts';
import { bucketOf, firstPhaseOf, phaseBound } from './bucket.ts';
import {
  batches,
  forEachTargetDevice,
  parseRollout,
  type RolloutContext,
  type RolloutRow,
  type Tx,
} from './model.ts';

/*
 * Rollout commands. An operator's (create, pause, resume, promote, abort) is one audited
 * command; the steps below it (start, advance, halt) run inside a transaction opened by
 * `transact` and mark the devices whose desired state they change, which are told once it
 * commits. State changes are compare-and-set on (state, current_phase), so a scheduler on
 * another replica and an operator acting at the same moment cannot both advance a phase.
 */

export const SYSTEM: Actor = { label: 'system' };

/** The audit trail's name for a change of rollout `id`. */
export const ROLLOUT = (verb: string, id?: string) => ({
  action: `rollout.${verb}`,
  target: 'rollout',
  id,
});

/** What `runCommand` needs, from the rollout context. */
function commandDeps(ctx: RolloutContext) {
  return { db: ctx.db, push: ctx.push, nowMs: ctx.now().getTime() };
}

/** The rollout, locked for this transaction on PostgreSQL. @throws `ERR_NOT_FOUND`. */
export async function loadRollout(ctx: RolloutContext, tx: Tx, id: string): Promise<RolloutRow> {
  const row = await tx
    .selectFrom('rollouts')
    .selectAll()
    .where('id', '=', id)
    .$if(ctx.dialect === 'postgres', (q) => q.forUpdate())
    .executeTakeFirst();
  if (row === undefined) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout ${id}`);
  return parseRollout(row);
}

/** The rollout as the API shows it (without counts). */
export async function presentRollout(tx: Tx | RolloutContext['db'], r: RolloutRow) {
  const version = await tx
    .selectFrom('image_versions as v')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .select(['v.version', 'i.id as image_id', 'i.name'])
    .where('v.id', '=', r.image_version_id)
    .executeTakeFirstOrThrow();
  const nameOf = async (table: 'device_groups' | 'profiles', id: string | null) =>
    id === null
      ? null
      : ((await tx.selectFrom(table).select('name').where('id', '=', id).executeTakeFirst())
          ?.name ?? null);
  return presentRow(r, {
    ...version,
    group_name: await nameOf('device_groups', r.group_id),
    profile_name: await nameOf('profiles', r.profile_id),
  });
}

/** The names a rollout is shown with: its image and version, its target group and profile. */
export interface RolloutNames {
  version: string;
  image_id: string;
  name: string;
  group_name: string | null;
  profile_name: string | null;
}

export function presentRow(r: RolloutRow, v: RolloutNames): Rollout {
  return {
    id: r.id,
    imageId: v.image_id,
    image: v.name,
    imageVersionId: r.image_version_id,
    version: v.version,
    groupId: r.group_id,
    group: v.group_name,
    profileId: r.profile_id,
    profile: v.profile_name,
    phases: r.phaseList,
    currentPhase: r.current_phase,
    phaseStartedAt: r.phase_started_at,
    soakMinutes: r.soak_ms / 60_000,
    failureThreshold: r.failure_threshold,
    minReports: r.min_reports,
    state: r.state,
    stateReason: r.state_reason,
    releaseOnCompletion: r.on_completion === 'release',
    releasedAt: r.released_at,
    createdBy: r.created_by,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function invalid(field: string, message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.VALIDATION, `body.${field}: ${message}`);
}

/**
 * Creates a rollout (`pending`), and starts it when asked.
 * @throws `ERR_VALIDATION` naming the field when the version is missing or not published, or
 *   the group or profile does not exist; `ERR_UNTRUSTED_KEY` when every key that signed the
 *   version has been revoked since.
 */
export async function createRollout(
  ctx: RolloutContext,
  actor: Actor & { userId?: string },
  input: CreateRolloutRequest,
): Promise<RolloutRow> {
  return runCommand(commandDeps(ctx), actor, ROLLOUT('create'), async (tx, nowMs) => {
    const created = await insertRollout(tx, actor, input, nowMs);
    const rollout = input.start ? await startRollout(tx, created, nowMs) : created;
    return {
      result: rollout,
      before: null,
      after: await presentRollout(tx, rollout),
      id: rollout.id,
    };
  });
}

async function insertRollout(
  tx: Tx,
  actor: Actor & { userId?: string },
  input: CreateRolloutRequest,
  nowMs: number,
): Promise<RolloutRow> {
  const version = await tx
    .selectFrom('image_versions as v')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .select(['v.id', 'v.state', 'v.version', 'v.signatures', 'i.name'])
    .where('v.id', '=', input.imageVersionId)
    .executeTakeFirst();
  if (version === undefined) throw invalid('imageVersionId', 'no such image version');
  if (version.state !== 'published') {
    throw invalid(
      'imageVersionId',
      `version ${version.version} is ${version.state}; only a published version can be rolled out`,
    );
  }
  await requireTrustedSigner(tx, `${version.name}@${version.version}`, version, 'rolled out');
  if (input.groupId !== undefined && !(await hasRow(tx, 'device_groups', input.groupId))) {
    throw invalid('groupId', 'no such device group');
  }
  if (input.profileId !== undefined && !(await hasRow(tx, 'profiles', input.profileId))) {
    throw invalid('profileId', 'no such profile');
  }
  const row = {
    id: newId(nowMs),
    image_version_id: input.imageVersionId,
    group_id: input.groupId ?? null,
    profile_id: input.profileId ?? null,
    phases: JSON.stringify(input.phases),
    current_phase: 0,
    phase_started_at: null,
    soak_ms: input.soakMinutes * 60_000,
    failure_threshold: input.failureThreshold,
    min_reports: input.minReports,
    state: 'pending' as const,
    state_reason: null,
    on_completion: input.releaseOnCompletion ? ('release' as const) : ('keep' as const),
    released_at: null,
    created_by: actor.userId ?? null,
    created_at: nowMs,
    updated_at: nowMs,
  };
  await refuseViolation(
    'foreign-key',
    () => tx.insertInto('rollouts').values(row).execute(),
    // A group or profile deleted since the check above.
    () => invalid('groupId', 'the group or profile no longer exists'),
  );
  return parseRollout(row);
}

/**
 * Sets the columns in `patch` if the rollout is still in the state and phase `current` has.
 * @throws `ERR_ROLLOUT_STATE` when another writer changed it first.
 */
async function update(
  tx: Tx,
  current: RolloutRow,
  patch: {
    state: RolloutStateName;
    current_phase?: number;
    phase_started_at?: number;
    state_reason?: string | null;
  },
  nowMs: number,
): Promise<RolloutRow> {
  const result = await tx
    .updateTable('rollouts')
    .set({ ...patch, updated_at: nowMs })
    .where('id', '=', current.id)
    .where('state', '=', current.state)
    .where('current_phase', '=', current.current_phase)
    .executeTakeFirst();
  if (Number(result.numUpdatedRows) !== 1) {
    throw new BulkheadError(
      ErrorCodes.ROLLOUT_STATE,
      `rollout ${current.id} changed meanwhile; read it again`,
      { retryable: true },
    );
  }
  return { ...current, ...patch, updated_at: nowMs };
}

/**
 * Records the devices phase `toPhase` includes, and marks changed those it adds beyond phase
 * `fromPhase` (-1: none before). Devices of earlier phases that were not recorded yet (they
 * joined the target since) are recorded with their own phase but not marked: their desired
 * state already had the version. O(devices in the target).
 */
async function include(
  tx: Tx,
  rollout: RolloutRow,
  fromPhase: number,
  toPhase: number,
  nowMs: number,
): Promise<void> {
  const lower = fromPhase < 0 ? 0 : phaseBound(rollout.phaseList[fromPhase]!);
  const upper = phaseBound(rollout.phaseList[toPhase]!);
  const added: string[] = [];
  await forEachTargetDevice(tx, rollout, async (ids) => {
    const rows: { id: string; phase: number }[] = [];
    for (const id of ids) {
      const bucket = bucketOf(rollout.id, id);
      if (bucket >= upper) continue;
      rows.push({ id, phase: firstPhaseOf(bucket, rollout.phaseList) });
      if (bucket >= lower) added.push(id);
    }
    for (const batch of batches(rows, 500)) {
      await tx
        .insertInto('rollout_devices')
        .values(
          batch.map((r) => ({
            rollout_id: rollout.id,
            device_id: r.id,
            phase: r.phase,
            status: 'pending' as RolloutDeviceStatus,
            reason: null,
            updated_at: nowMs,
          })),
        )
        .onConflict((oc) => oc.columns(['rollout_id', 'device_id']).doNothing())
        .execute();
    }
  });
  await markChanged(tx, { devices: added }, nowMs);
}

/** pending → running at phase 0, including its devices. */
export async function startRollout(tx: Tx, rollout: RolloutRow, nowMs: number) {
  const started = await update(
    tx,
    rollout,
    { state: 'running', current_phase: 0, phase_started_at: nowMs, state_reason: null },
    nowMs,
  );
  await include(tx, started, -1, 0, nowMs);
  return started;
}

/** Whether advancing the rollout completes it rather than starting a phase. */
export function isLastPhase(rollout: RolloutRow): boolean {
  return rollout.current_phase + 1 >= rollout.phaseList.length;
}

/**
 * The next phase (its devices included), or `completed` after the last, which releases the
 * rollout's version when it is to (see `releaseOnCompletion`) as `actor`.
 */
export async function advanceRollout(tx: Tx, actor: Actor, rollout: RolloutRow, nowMs: number) {
  if (isLastPhase(rollout)) {
    const completed = await update(tx, rollout, { state: 'completed' }, nowMs);
    if (completed.on_completion === 'keep') return completed;
    const outcome = await releaseOnCompletion(tx, actor, completed, nowMs);
    await tx.updateTable('rollouts').set(outcome).where('id', '=', completed.id).execute();
    return { ...completed, ...outcome };
  }
  const next = rollout.current_phase + 1;
  const advanced = await update(
    tx,
    rollout,
    { state: rollout.state, current_phase: next, phase_started_at: nowMs },
    nowMs,
  );
  await include(tx, advanced, rollout.current_phase, next, nowMs);
  return advanced;
}

/**
 * Makes a completed rollout's version its image's released version, in the rollout's
 * transaction and through the release's own path (audited as `image.release` by `actor`, the
 * devices on the image marked and told after commit), so devices outside the rollout, and those
 * enrolled later, get it. It does not when the released version is newer (pushed later) than
 * the rollout's, or when the version can no longer be released (retired, or every key that
 * signed it revoked since): the rollout still completes, and `state_reason` says why not.
 * @returns the columns to record on the rollout.
 */
async function releaseOnCompletion(
  tx: Tx,
  actor: Actor,
  rollout: RolloutRow,
  nowMs: number,
): Promise<{ released_at: number | null; state_reason: string | null }> {
  const row = await tx
    .selectFrom('image_versions as v')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .leftJoin('image_versions as r', 'r.id', 'i.release_version_id')
    .select([
      'i.id as image_id',
      'i.name',
      'v.version',
      'v.created_at',
      'r.id as release_id',
      'r.version as release_version',
      'r.created_at as release_created_at',
    ])
    .where('v.id', '=', rollout.image_version_id)
    .executeTakeFirstOrThrow();
  if (row.release_id === rollout.image_version_id) {
    return { released_at: nowMs, state_reason: null };
  }
  if (row.release_id !== null && Number(row.release_created_at) > Number(row.created_at)) {
    return {
      released_at: null,
      state_reason: `not released: ${row.name}@${row.release_version ?? '?'} is newer than ${row.version} and stays the released version`,
    };
  }
  try {
    await applyRelease(tx, actor, row.image_id, rollout.image_version_id, nowMs);
    return { released_at: nowMs, state_reason: null };
  } catch (err) {
    // Thrown before the release wrote anything: the rollout completes all the same.
    if (
      err instanceof BulkheadError &&
      (err.code === ErrorCodes.VERSION_STATE || err.code === ErrorCodes.UNTRUSTED_KEY)
    ) {
      return { released_at: null, state_reason: `not released: ${err.message}` };
    }
    throw err;
  }
}

/** running → halted, naming why, audited as `system`; devices keep what they have. */
export async function haltRollout(
  tx: Tx,
  rollout: RolloutRow,
  reason: string,
  nowMs: number,
): Promise<RolloutRow> {
  return applyCommand(tx, SYSTEM, ROLLOUT('halt', rollout.id), nowMs, async () => {
    const halted = await update(tx, rollout, { state: 'halted', state_reason: reason }, nowMs);
    return { result: halted, ...(await presentChange(tx, rollout, halted)) };
  });
}

/** A rollout's before and after, as the audit trail keeps them. */
export async function presentChange(tx: Tx, before: RolloutRow, after: RolloutRow) {
  return { before: await presentRollout(tx, before), after: await presentRollout(tx, after) };
}

/** Which states each action starts from. */
const ALLOWED: Record<RolloutAction, readonly RolloutStateName[]> = {
  pause: ['running'],
  resume: ['pending', 'paused'],
  abort: ['pending', 'running', 'paused', 'halted'],
  promote: ['running'],
};

/**
 * An operator's action on a rollout, audited.
 * @throws `ERR_ROLLOUT_STATE` (409) naming the current state when the action does not apply.
 */
export async function actOnRollout(
  ctx: RolloutContext,
  actor: Actor,
  id: string,
  action: RolloutAction,
  reason: string | undefined,
): Promise<RolloutRow> {
  return runCommand(commandDeps(ctx), actor, ROLLOUT(action, id), async (tx, nowMs) => {
    const current = await loadRollout(ctx, tx, id);
    const after = await act(tx, current, actor, action, reason, nowMs);
    return { result: after, ...(await presentChange(tx, current, after)) };
  });
}

async function act(
  tx: Tx,
  current: RolloutRow,
  actor: Actor,
  action: RolloutAction,
  reason: string | undefined,
  nowMs: number,
): Promise<RolloutRow> {
  const id = current.id;
  if (!ALLOWED[action].includes(current.state)) {
    throw new BulkheadError(
      ErrorCodes.ROLLOUT_STATE,
      `cannot ${action} rollout ${id}: it is ${current.state}` +
        (action === 'resume' && current.state === 'halted'
          ? ' (a halted rollout can only be aborted; roll out again with a new rollout)'
          : ''),
    );
  }
  switch (action) {
    case 'pause':
      return update(tx, current, { state: 'paused' }, nowMs);
    case 'resume':
      return current.state === 'pending'
        ? startRollout(tx, current, nowMs)
        : update(tx, current, { state: 'running' }, nowMs);
    case 'promote':
      return advanceRollout(tx, actor, current, nowMs);
    case 'abort':
      return abortRollout(tx, current, reason ?? `aborted by ${actor.label}`, nowMs);
  }
}

/** → aborted; the devices it had given its version to fall back (marked changed). */
async function abortRollout(
  tx: Tx,
  rollout: RolloutRow,
  reason: string,
  nowMs: number,
): Promise<RolloutRow> {
  const aborted = await update(tx, rollout, { state: 'aborted', state_reason: reason }, nowMs);
  if (rollout.state === 'pending') return aborted;
  // Every device of the target inside the phases reached: the recorded ones, and any that
  // joined the target since and resolved through it without reporting.
  const bound = phaseBound(rollout.phaseList[rollout.current_phase]!);
  const changed: string[] = [];
  await forEachTargetDevice(tx, rollout, (ids) => {
    for (const id of ids) if (bucketOf(rollout.id, id) < bound) changed.push(id);
  });
  await markChanged(tx, { devices: changed }, nowMs);
  return aborted;
}

/** Device counts by (phase, status) of a rollout's recorded devices. */
export type PhaseStats = Map<number, Map<RolloutDeviceStatus, number>>;

export async function phaseStats(tx: Tx | RolloutContext['db'], rolloutId: string) {
  const rows = await tx
    .selectFrom('rollout_devices')
    .select(['phase', 'status', sql<number>`count(*)`.as('n')])
    .where('rollout_id', '=', rolloutId)
    .groupBy(['phase', 'status'])
    .execute();
  const stats: PhaseStats = new Map();
  for (const r of rows) {
    const phase = Number(r.phase);
    let m = stats.get(phase);
    if (m === undefined) stats.set(phase, (m = new Map()));
    m.set(r.status, Number(r.n));
  }
  return stats;
}

const OUTCOMES: readonly RolloutDeviceStatus[] = ['healthy', 'failed', 'rolled-back'];
const FAILURES: readonly RolloutDeviceStatus[] = ['failed', 'rolled-back'];

function sum(m: Map<RolloutDeviceStatus, number> | undefined, of?: readonly RolloutDeviceStatus[]) {
  let n = 0;
  for (const [status, count] of m ?? []) if (of === undefined || of.includes(status)) n += count;
  return n;
}

/**
 * The failure verdict: among the devices of the phases reached that reported an outcome, the
 * share that failed or rolled back. Judged once at least `min_reports` outcomes are in; above
 * the threshold, a reason naming the numbers.
 */
export function failureVerdict(rollout: RolloutRow, stats: PhaseStats): string | undefined {
  let outcomes = 0;
  let failures = 0;
  for (const [phase, m] of stats) {
    if (phase > rollout.current_phase) continue;
    outcomes += sum(m, OUTCOMES);
    failures += sum(m, FAILURES);
  }
  if (outcomes === 0 || outcomes < rollout.min_reports) return undefined;
  const share = failures / outcomes;
  if (share <= rollout.failure_threshold) return undefined;
  const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;
  return (
    `${failures} of ${outcomes} devices that reported failed or rolled back ` +
    `(${pct(share)}, above the threshold of ${pct(rollout.failure_threshold)})`
  );
}

/** Whether the current phase has the outcomes it needs to end (at most its device count). */
export function hasEnoughReports(rollout: RolloutRow, stats: PhaseStats): boolean {
  const m = stats.get(rollout.current_phase);
  return sum(m, OUTCOMES) >= Math.min(rollout.min_reports, sum(m));
}

/**
 * Halts the rollout if its failure share crossed the threshold; audited as `system`.
 * @returns the halted rollout, or undefined when it goes on.
 */
export async function haltIfFailing(
  tx: Tx,
  rollout: RolloutRow,
  nowMs: number,
): Promise<RolloutRow | undefined> {
  if (rollout.state !== 'running') return undefined;
  const reason = failureVerdict(rollout, await phaseStats(tx, rollout.id));
  if (reason === undefined) return undefined;
  return haltRollout(tx, rollout, reason, nowMs);
}
