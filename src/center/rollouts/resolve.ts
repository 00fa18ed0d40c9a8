import type { Kysely } from 'kysely';
import type { Database } from '../db/index.ts';
import { APPLYING_STATES, includes, parseRollout, type TargetDevice } from './model.ts';

/**
 * The version (`image_versions.id`) the device should run of each image in `imageIds`, by the
 * rollout model (model.ts); images with no applicable rollout and no released version are
 * missing from the map. Two statements, whatever the number of images: the rollouts that could
 * apply (those of these images, in an applying state, whose group and profile match the
 * device), newest first, and the images' released versions.
 */
export async function resolveVersions(
  db: Kysely<Database>,
  device: TargetDevice,
  imageIds: readonly string[],
): Promise<Map<string, string>> {
  const resolved = new Map<string, string>();
  if (imageIds.length === 0) return resolved;
  const profileIds = [...device.profileIds];
  const rollouts = await db
    .selectFrom('rollouts as r')
    .innerJoin('image_versions as v', 'v.id', 'r.image_version_id')
    .selectAll('r')
    .select('v.image_id')
    .where('v.image_id', 'in', imageIds)
    .where('r.state', 'in', APPLYING_STATES)
    .where((eb) => eb.or([eb('r.group_id', 'is', null), eb('r.group_id', '=', device.groupId)]))
    .where((eb) =>
      profileIds.length === 0
        ? eb('r.profile_id', 'is', null)
        : eb.or([eb('r.profile_id', 'is', null), eb('r.profile_id', 'in', profileIds)]),
    )
    .orderBy('r.created_at', 'desc')
    .orderBy('r.id', 'desc')
    .execute();
  for (const row of rollouts) {
    if (resolved.has(row.image_id)) continue;
    if (includes(parseRollout(row), device)) resolved.set(row.image_id, row.image_version_id);
  }
  const missing = imageIds.filter((id) => !resolved.has(id));
  if (missing.length > 0) {
    const images = await db
      .selectFrom('images')
      .select(['id', 'release_version_id'])
      .where('id', 'in', missing)
      .execute();
    for (const image of images) {
      if (image.release_version_id !== null) resolved.set(image.id, image.release_version_id);
    }
  }
  return resolved;
}
