import { createHash } from 'node:crypto';

/*
 * Which devices a phase includes. Each (rollout, device) pair has a bucket in 0..9999: the
 * first four bytes of SHA-256(`${rolloutId}:${deviceId}`), big-endian, modulo 10,000. A phase
 * of p percent includes the devices whose bucket is below p × 100. Phases are cumulative and
 * increasing, so a device in a phase is in every later one; the bucket is a pure function of
 * the two ids, so every Center replica, and every request, agrees without storing it; and
 * hashing with the rollout id draws a different sample for each rollout, so the same few PCs
 * are not always first.
 */

/** Buckets per rollout: phases have a resolution of 0.01 %. */
export const BUCKETS = 10_000;

/** The device's bucket in the rollout, 0..9999. */
export function bucketOf(rolloutId: string, deviceId: string): number {
  return createHash('sha256').update(`${rolloutId}:${deviceId}`).digest().readUInt32BE(0) % BUCKETS;
}

/** The bucket bound of a phase of `percent` %: buckets below it are in. */
export function phaseBound(percent: number): number {
  return Math.round(percent * 100);
}

/** Whether phase `phaseIndex` of `phases` (and so every later one) includes `bucket`. */
export function isInPhase(bucket: number, phases: readonly number[], phaseIndex: number): boolean {
  const percent = phases[phaseIndex];
  return percent !== undefined && bucket < phaseBound(percent);
}

/** The first phase that includes `bucket`, or -1 when none does (the last phase is below 100). */
export function firstPhaseOf(bucket: number, phases: readonly number[]): number {
  return phases.findIndex((p) => bucket < phaseBound(p));
}
