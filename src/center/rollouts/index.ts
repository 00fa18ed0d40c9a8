// Rollouts (DESIGN §3): phased deployment of image versions, the version each device should
// run, the scheduler that advances and halts them, and what device reports mean for them.
export { rolloutRoutes } from './plugin.ts';
export {
  createRolloutScheduler,
  SCHEDULER_LOCK,
  type RolloutScheduler,
  type TickResult,
} from './scheduler.ts';
export { resolveVersions } from './resolve.ts';
export { recordRolloutReports } from './reports.ts';
export { bucketOf, isInPhase, firstPhaseOf, BUCKETS } from './bucket.ts';
export type { RolloutContext } from './model.ts';
export { describeEvent, releaseOf } from './sentences.ts';
