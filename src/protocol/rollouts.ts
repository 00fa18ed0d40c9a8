import { z } from 'zod';
import { text } from './text.ts';

/*
 * Wire schemas of rollouts (DESIGN §3): the admin API under `/api/v1/admin/rollouts`, the
 * device events Center counts for them, and what Center records of the versions a device runs.
 */

export const ROLLOUT_STATE_NAMES = [
  'pending',
  'running',
  'paused',
  'halted',
  'completed',
  'aborted',
] as const;
/**
 * `pending`: created, not started; `running`: phases advance; `paused`: an operator stopped it
 * (devices already in keep the version, none are added); `halted`: Center stopped it because
 * the failure threshold was crossed (same effect as paused); `completed`: every phase done;
 * `aborted`: stopped for good, its devices fall back to the image's released version.
 */
export const RolloutStateSchema = z.enum(ROLLOUT_STATE_NAMES);
export type RolloutStateName = z.infer<typeof RolloutStateSchema>;

/** The most phases a rollout may have. */
export const MAX_ROLLOUT_PHASES = 20;

/**
 * Phases: cumulative percentages of the target, strictly increasing, each in (0, 100], with at
 * most two decimals (a device's bucket is one of 10,000). The last may be below 100: the
 * rollout then completes with that share of the target.
 */
export const RolloutPhasesSchema = z
  .array(
    z
      .number()
      .gt(0)
      .max(100)
      .refine((p) => Math.abs(p * 100 - Math.round(p * 100)) < 1e-9, {
        message: 'at most two decimals',
      }),
  )
  .min(1)
  .max(MAX_ROLLOUT_PHASES)
  .refine((phases) => phases.every((p, i) => i === 0 || p > (phases[i - 1] as number)), {
    message: 'phases must be strictly increasing percentages, e.g. [1, 10, 50, 100]',
  });

const IdSchema = text({ min: 1, max: 64 });

export const CreateRolloutRequestSchema = z
  .strictObject({
    /** The version to roll out; it must be published. */
    imageVersionId: IdSchema,
    /** Target: the devices of this group … */
    groupId: IdSchema.optional(),
    /** … and/or the devices holding this profile (both given: devices matching both). */
    profileId: IdSchema.optional(),
    phases: RolloutPhasesSchema.default([1, 10, 50, 100]),
    /** How long each phase runs at least before the next starts. */
    soakMinutes: z
      .number()
      .int()
      .min(0)
      .max(30 * 24 * 60)
      .default(60),
    /**
     * Share (0..1) of failed plus rolled-back devices among those that reported an outcome
     * for this rollout above which it halts; 0 halts on the first failure, 1 never halts.
     */
    failureThreshold: z.number().min(0).max(1).default(0.1),
    /**
     * Outcomes (healthy, failed, rolled-back) a phase needs before the next may start (at most
     * the phase's device count), and before the failure share is judged.
     */
    minReports: z.number().int().min(1).max(1_000_000).default(1),
    /** Start at once; otherwise it stays `pending` until resumed. */
    start: z.boolean().default(false),
    /**
     * Whether completing the last phase makes this version the image's released version (the
     * one every device on the image gets when no rollout gives it another, devices enrolled
     * later included). It does not when the released version is newer by then, or when the
     * version can no longer be released (retired, or its signing keys revoked).
     */
    releaseOnCompletion: z.boolean().default(true),
  })
  .refine((b) => b.groupId !== undefined || b.profileId !== undefined, {
    message: 'give groupId or profileId (or both): the devices the rollout targets',
  });
export type CreateRolloutRequest = z.infer<typeof CreateRolloutRequestSchema>;

/** Device counts of one phase, or of the whole rollout. */
export const RolloutCountsSchema = z.object({
  /** Target devices (active or locked) whose bucket falls in this phase (whole: all of them). */
  targeted: z.number().int(),
  /** Devices recorded as included (by a phase start or by their first report). */
  included: z.number().int(),
  /** Included devices that have reported nothing yet. */
  pending: z.number().int(),
  /** Devices downloading, staged or switched. */
  inProgress: z.number().int(),
  healthy: z.number().int(),
  failed: z.number().int(),
  rolledBack: z.number().int(),
});
export type RolloutCounts = z.infer<typeof RolloutCountsSchema>;

export const RolloutPhaseSchema = RolloutCountsSchema.extend({
  index: z.number().int(),
  percent: z.number(),
  /** Whether the rollout has reached this phase. */
  reached: z.boolean(),
});
export type RolloutPhase = z.infer<typeof RolloutPhaseSchema>;

export const RolloutSchema = z.object({
  id: z.string(),
  imageId: z.string(),
  image: z.string(),
  imageVersionId: z.string(),
  version: z.string(),
  groupId: z.string().nullable(),
  /** The target group's name. */
  group: z.string().nullable(),
  profileId: z.string().nullable(),
  /** The target profile's name. */
  profile: z.string().nullable(),
  phases: z.array(z.number()),
  currentPhase: z.number().int(),
  phaseStartedAt: z.number().int().nullable(),
  soakMinutes: z.number(),
  failureThreshold: z.number(),
  minReports: z.number().int(),
  state: RolloutStateSchema,
  /** Why it halted or was aborted; for a completed one, why it did not release its version. */
  stateReason: z.string().nullable(),
  /** Whether completing it makes its version the image's released version. */
  releaseOnCompletion: z.boolean(),
  /** When completing it made its version the image's released version; null otherwise. */
  releasedAt: z.number().int().nullable(),
  createdBy: z.string().nullable(),
  createdAt: z.number().int(),
  updatedAt: z.number().int(),
});
export type Rollout = z.infer<typeof RolloutSchema>;

/** One rollout with its device counts, per phase and in total. */
export const RolloutDetailSchema = RolloutSchema.extend({
  /** The image's released version now (a rollout that released may have been followed since). */
  imageRelease: z.object({ id: z.string(), version: z.string() }).nullable(),
  totals: RolloutCountsSchema,
  phaseCounts: z.array(RolloutPhaseSchema),
});
export type RolloutDetail = z.infer<typeof RolloutDetailSchema>;

export const RolloutListQuerySchema = z.strictObject({
  state: RolloutStateSchema.optional(),
  imageVersionId: IdSchema.optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
  /** The `next` of the previous page. */
  cursor: text({ max: 200 }).optional(),
});
export type RolloutListQuery = z.infer<typeof RolloutListQuerySchema>;

export const RolloutListSchema = z.object({
  rollouts: z.array(RolloutSchema),
  /** Pass as `cursor` for the next (older) page; null at the end. */
  next: z.string().nullable(),
});

export const ROLLOUT_ACTIONS = ['pause', 'resume', 'abort', 'promote'] as const;
/**
 * `pause`: running → paused; `resume`: paused → running, or pending → running (starts it);
 * `abort`: pending, running, paused or halted → aborted; `promote`: running, the next phase
 * now, soak or no soak (past the last phase: completed).
 */
export const RolloutActionSchema = z.enum(ROLLOUT_ACTIONS);
export type RolloutAction = z.infer<typeof RolloutActionSchema>;

/** `:id/:action` of a rollout action route. */
export const RolloutActionParamsSchema = z.strictObject({
  id: IdSchema,
  action: RolloutActionSchema,
});

/** The body of an action is optional; `reason` is recorded with an abort. */
export const RolloutActionRequestSchema = z
  .strictObject({ reason: text({ min: 1, max: 500 }).optional() })
  .nullish();

/**
 * What a device runs, as Center learned it from its `healthy` reports (`devices.
 * current_versions`): per profile id, the system image version id and, per app image id, the
 * app volume version id. Recording it does not change the device's desired state.
 */
export const CurrentVersionsSchema = z.record(
  z.string(),
  z.object({
    system: z.string().optional(),
    apps: z.record(z.string(), z.string()).default({}),
  }),
);
export type CurrentVersions = z.infer<typeof CurrentVersionsSchema>;
