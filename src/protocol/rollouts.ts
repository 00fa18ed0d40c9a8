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

/*
 * Outcome trails: what each device reported about a version, in order. A rollout's trail lists
 * its devices (the ones a phase included or that reported for it) with their phase, their status
 * and the events they sent about the rollout's version since it was created; a device's trail is
 * its events, newest first, optionally about one version or one rollout.
 */

/** A device's status in a rollout (`rollout_devices.status`). */
export const RolloutDeviceStatusSchema = z.enum([
  'pending',
  'downloading',
  'staged',
  'switched',
  'healthy',
  'failed',
  'rolled-back',
]);

/** One event of a trail, as the device reported it. */
export const TrailEventSchema = z.object({
  /** The device's id for the event. */
  id: z.string(),
  /** `download-progress`, `staged`, `switched`, `healthy`, `rolled-back`, `failed`, … */
  type: z.string(),
  /** When it happened, by the device's clock. */
  occurredAt: z.number().int(),
  /** When Center received it. */
  receivedAt: z.number().int(),
  /** The device's reason, for `failed` and `rolled-back` (and a VM's stop); null otherwise. */
  reason: z.string().nullable(),
  /** The event's whole payload. */
  data: z.unknown(),
});
export type TrailEvent = z.infer<typeof TrailEventSchema>;

/** Most events of one device's trail in a rollout's device list (the newest are kept). */
export const MAX_TRAIL_EVENTS = 50;

export const RolloutDeviceSchema = z.object({
  deviceId: z.string(),
  /** The device's name. */
  device: z.string(),
  /** Index of the phase that included it (0 is the first). */
  phase: z.number().int(),
  status: RolloutDeviceStatusSchema,
  /** The device's reason for `failed` or `rolled-back`; null otherwise. */
  reason: z.string().nullable(),
  /** When `status` last changed. */
  updatedAt: z.number().int(),
  /**
   * The events the device sent about the rollout's version since the rollout was created,
   * oldest first (at most MAX_TRAIL_EVENTS, the newest; `trailTruncated` says when older ones
   * were left out: `bulkhead devices events` pages through all of them).
   */
  trail: z.array(TrailEventSchema),
  trailTruncated: z.boolean(),
});
export type RolloutDevice = z.infer<typeof RolloutDeviceSchema>;

export const RolloutDevicesQuerySchema = z.strictObject({
  /** Only devices with this status. */
  status: RolloutDeviceStatusSchema.optional(),
  limit: z.coerce.number().int().min(1).max(200).default(50),
  /** The `next` of the previous page. */
  cursor: text({ max: 200 }).optional(),
});
export type RolloutDevicesQuery = z.infer<typeof RolloutDevicesQuerySchema>;

export const RolloutDevicePageSchema = z.object({
  rolloutId: z.string(),
  image: z.string(),
  version: z.string(),
  /** By phase, then device id. */
  devices: z.array(RolloutDeviceSchema),
  /** Pass as `cursor` for the next page; null at the end. */
  next: z.string().nullable(),
});
export type RolloutDevicePage = z.infer<typeof RolloutDevicePageSchema>;

export const DeviceEventsQuerySchema = z.strictObject({
  /** Only events naming this image version (their release's volumes, or the VM's version). */
  versionId: IdSchema.optional(),
  /** Only events about this rollout's version, received since the rollout was created. */
  rolloutId: IdSchema.optional(),
  /** Only events of this type. */
  type: text({ min: 1, max: 64 }).optional(),
  limit: z.coerce.number().int().min(1).max(500).default(100),
  /** The `next` of the previous page. */
  cursor: text({ max: 200 }).optional(),
});
export type DeviceEventsQuery = z.infer<typeof DeviceEventsQuerySchema>;

export const DeviceEventPageSchema = z.object({
  deviceId: z.string(),
  device: z.string(),
  /** Newest first (by the device's clock, then id). */
  events: z.array(
    TrailEventSchema.extend({
      /** The name of the profile (VM) the event is about, when it names one that exists. */
      vm: z.string().nullable(),
      /** That profile, by id and name. */
      profile: z.object({ id: z.string(), name: z.string() }).nullable(),
      /** One sentence a person reads, naming versions as `image@version`. */
      summary: z.string(),
    }),
  ),
  /** `image@version` of every image version id the events of this page name. */
  versionNames: z.record(z.string(), z.string()),
  /** Pass as `cursor` for the next (older) page; null at the end. */
  next: z.string().nullable(),
});
export type DeviceEventPage = z.infer<typeof DeviceEventPageSchema>;
