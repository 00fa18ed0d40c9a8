import type { Kysely, Transaction } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  SignatureSchema,
  type CreateImageRequest,
  type ImageDetail,
  type ImageInfo,
  type ImageKindName,
  type ImageVersionInfo,
  type UpdateImageRequest,
} from '../../protocol/index.ts';
import { z } from 'zod';
import type { Actor } from '../admin/audit.ts';
import {
  applyCommand,
  markChanged,
  runCommand,
  transact,
  type CommandDeps,
} from '../changes/index.ts';
import { newId, refuseViolation, type Database, type Row } from '../db/index.ts';
import { requireTrustedSigner } from './publishers.ts';

type Db = Kysely<Database> | Transaction<Database>;

const SignatureListSchema = z.array(SignatureSchema);

export function presentVersion(
  row: Row<'image_versions'>,
  releaseVersionId: string | null,
): ImageVersionInfo {
  return {
    id: row.id,
    imageId: row.image_id,
    version: row.version,
    manifestId: row.manifest_id,
    signatures: SignatureListSchema.parse(JSON.parse(row.signatures)),
    size: Number(row.size),
    sha256: row.sha256,
    parentVersion: row.parent_version,
    state: row.state,
    released: row.id === releaseVersionId,
    // Null only until the first listing counts a version pushed before counts were kept.
    chunks: Number(row.chunks ?? 0),
    addedChunks: Number(row.added_chunks ?? 0),
    addedBytes: Number(row.added_bytes ?? 0),
    createdAt: Number(row.created_at),
    publishedAt: row.published_at === null ? null : Number(row.published_at),
    retiredAt: row.retired_at === null ? null : Number(row.retired_at),
  };
}

export function presentImage(
  row: Row<'images'>,
  release: { id: string; version: string } | null,
): ImageInfo {
  return {
    id: row.id,
    name: row.name,
    kind: row.kind,
    description: row.description,
    release,
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

/** The image a route's `:id` names: by id, else by name. */
export async function findImage(db: Db, idOrName: string): Promise<Row<'images'>> {
  const byId = await db
    .selectFrom('images')
    .selectAll()
    .where('id', '=', idOrName)
    .executeTakeFirst();
  const row =
    byId ??
    (await db.selectFrom('images').selectAll().where('name', '=', idOrName).executeTakeFirst());
  if (!row) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no image "${idOrName.slice(0, 128)}"`);
  return row;
}

async function releaseOf(db: Db, image: Row<'images'>): Promise<ImageInfo['release']> {
  if (image.release_version_id === null) return null;
  const v = await db
    .selectFrom('image_versions')
    .select(['id', 'version'])
    .where('id', '=', image.release_version_id)
    .executeTakeFirst();
  return v ?? null;
}

export async function imageInfo(db: Db, image: Row<'images'>): Promise<ImageInfo> {
  return presentImage(image, await releaseOf(db, image));
}

export async function listImages(db: Db, kind?: ImageKindName): Promise<ImageInfo[]> {
  let q = db
    .selectFrom('images')
    .leftJoin('image_versions', 'image_versions.id', 'images.release_version_id')
    .selectAll('images')
    .select(['image_versions.version as release_version'])
    .orderBy('images.name');
  if (kind !== undefined) q = q.where('images.kind', '=', kind);
  const rows = await q.execute();
  return rows.map(({ release_version, ...row }) =>
    presentImage(
      row,
      row.release_version_id !== null && release_version !== null
        ? { id: row.release_version_id, version: release_version }
        : null,
    ),
  );
}

export async function listVersions(db: Db, image: Row<'images'>): Promise<ImageVersionInfo[]> {
  const rows = await db
    .selectFrom('image_versions')
    .selectAll()
    .where('image_id', '=', image.id)
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  return rows.map((r) => presentVersion(r, image.release_version_id));
}

export async function imageDetail(db: Db, idOrName: string): Promise<ImageDetail> {
  const image = await findImage(db, idOrName);
  return { ...(await imageInfo(db, image)), versions: await listVersions(db, image) };
}

/**
 * Creates an image with no versions yet.
 * @throws BulkheadError `ERR_IMAGE_EXISTS` when the name is taken.
 */
export async function createImage(
  deps: CommandDeps,
  actor: Actor,
  input: CreateImageRequest,
): Promise<ImageInfo> {
  const taken = `an image named "${input.name}" already exists`;
  return refuseViolation(
    'unique',
    () => transact(deps, (trx) => insertImage(trx, actor, input, deps.nowMs)),
    (cause) => new BulkheadError(ErrorCodes.IMAGE_EXISTS, taken, { cause }),
  );
}

/** Inserts an image row and its audit entry, in the caller's transaction. */
export async function insertImage(
  trx: Transaction<Database>,
  actor: Actor,
  input: CreateImageRequest,
  at: number,
): Promise<ImageInfo> {
  const row: Row<'images'> = {
    id: newId(at),
    name: input.name,
    kind: input.kind,
    description: input.description ?? '',
    release_version_id: null,
    created_at: at,
    updated_at: at,
  };
  const info = presentImage(row, null);
  return applyCommand(trx, actor, IMAGE('create'), at, async () => {
    await trx.insertInto('images').values(row).execute();
    return { result: info, before: null, after: info, id: row.id };
  });
}

/** What uses an image: the profiles running it and the apps offering it. */
async function usersOf(db: Db, imageId: string): Promise<string[]> {
  const profiles = await db
    .selectFrom('profiles')
    .select('name')
    .where('system_image_id', '=', imageId)
    .execute();
  const apps = await db.selectFrom('apps').select('name').where('image_id', '=', imageId).execute();
  return [...profiles.map((p) => `profile ${p.name}`), ...apps.map((a) => `app ${a.name}`)];
}

/**
 * Changes an image's description or kind; the kind only while no profile or app uses it.
 * @throws BulkheadError `ERR_NOT_FOUND`, `ERR_IN_USE`.
 */
export async function updateImage(
  deps: CommandDeps,
  actor: Actor,
  idOrName: string,
  input: UpdateImageRequest,
): Promise<ImageInfo> {
  return runCommand(deps, actor, IMAGE('update'), async (trx, at) => {
    const image = await findImage(trx, idOrName);
    if (input.kind !== undefined && input.kind !== image.kind) {
      const users = await usersOf(trx, image.id);
      if (users.length > 0) {
        throw new BulkheadError(
          ErrorCodes.IN_USE,
          `image ${image.name} is used by ${users.slice(0, 5).join(', ')}; its kind cannot change`,
        );
      }
    }
    const after: Row<'images'> = {
      ...image,
      description: input.description ?? image.description,
      kind: input.kind ?? image.kind,
      updated_at: at,
    };
    await trx
      .updateTable('images')
      .set({ description: after.description, kind: after.kind, updated_at: at })
      .where('id', '=', image.id)
      .execute();
    const release = await releaseOf(trx, image);
    const info = presentImage(after, release);
    return { result: info, before: presentImage(image, release), after: info, id: image.id };
  });
}

/**
 * Deletes an image and its version records when nothing refers to them: no profile or app
 * uses the image and no rollout any of its versions. Returns the deleted versions, whose
 * manifests the caller removes from the store.
 * @throws BulkheadError `ERR_NOT_FOUND`, `ERR_IN_USE`.
 */
export async function deleteImage(
  deps: CommandDeps,
  actor: Actor,
  idOrName: string,
): Promise<{ name: string; versions: string[] }> {
  return runCommand(deps, actor, IMAGE('delete'), async (trx) => {
    const image = await findImage(trx, idOrName);
    const users = await usersOf(trx, image.id);
    const rollouts = await trx
      .selectFrom('rollouts')
      .innerJoin('image_versions', 'image_versions.id', 'rollouts.image_version_id')
      .select(['rollouts.id', 'image_versions.version'])
      .where('image_versions.image_id', '=', image.id)
      .execute();
    users.push(...rollouts.map((r) => `a rollout of version ${r.version}`));
    if (users.length > 0) {
      throw new BulkheadError(
        ErrorCodes.IN_USE,
        `image ${image.name} is used by ${users.slice(0, 5).join(', ')}${users.length > 5 ? ` and ${users.length - 5} more` : ''}; remove those first`,
      );
    }
    const versions = await listVersions(trx, image);
    const before = { ...(await imageInfo(trx, image)), versions };
    await trx
      .updateTable('images')
      .set({ release_version_id: null })
      .where('id', '=', image.id)
      .execute();
    await trx.deleteFrom('image_versions').where('image_id', '=', image.id).execute();
    await trx.deleteFrom('images').where('id', '=', image.id).execute();
    const result = { name: image.name, versions: versions.map((v) => v.version) };
    return { result, before, after: null, id: image.id };
  });
}

/** The version row of the image named `version`, if there is one. */
export function versionRow(db: Db, imageId: string, version: string) {
  return db
    .selectFrom('image_versions')
    .selectAll()
    .where('image_id', '=', imageId)
    .where('version', '=', version)
    .executeTakeFirst();
}

async function findVersion(
  trx: Transaction<Database>,
  image: Row<'images'>,
  version: string,
): Promise<Row<'image_versions'>> {
  const row = await versionRow(trx, image.id, version);
  if (!row)
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `image ${image.name} has no version ${version}`);
  return row;
}

/**
 * Makes `versionId` the image's released version: what every device holding a profile that
 * runs the image (as its system image or an app's) gets when no rollout gives it another.
 */
async function setRelease(
  trx: Transaction<Database>,
  image: Row<'images'>,
  versionId: string,
  at: number,
): Promise<void> {
  await trx
    .updateTable('images')
    .set({ release_version_id: versionId, updated_at: at })
    .where('id', '=', image.id)
    .execute();
  const profiles = await trx
    .selectFrom('profiles')
    .select('id')
    .where((eb) =>
      eb.or([
        eb('system_image_id', '=', image.id),
        eb(
          'id',
          'in',
          eb
            .selectFrom('profile_apps as pa')
            .innerJoin('apps as a', 'a.id', 'pa.app_id')
            .select('pa.profile_id')
            .where('a.image_id', '=', image.id),
        ),
      ]),
    )
    .execute();
  await markChanged(trx, { profiles: profiles.map((p) => p.id) }, at);
}

/** A version's change from `row` to `after`, as a command returns it and the trail keeps it. */
function versionChange(
  row: Row<'image_versions'>,
  after: Row<'image_versions'>,
  releaseBefore: string | null,
  releaseAfter: string | null,
) {
  const info = presentVersion(after, releaseAfter);
  return { result: info, before: presentVersion(row, releaseBefore), after: info, id: row.id };
}

/**
 * Publishes a draft: devices may be given it from now on. It also becomes the released version
 * when `release` is asked for or when the image has none yet. Publishing a published version
 * only applies `release`.
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_VERSION_STATE` for a retired version;
 *   `ERR_UNTRUSTED_KEY` when every key that signed it has been revoked since.
 */
export async function publishVersion(
  deps: CommandDeps,
  actor: Actor,
  idOrName: string,
  version: string,
  options: { release: boolean },
): Promise<ImageVersionInfo> {
  return runCommand(deps, actor, VERSION('publish'), async (trx, at) => {
    const image = await findImage(trx, idOrName);
    const row = await findVersion(trx, image, version);
    if (row.state === 'retired') {
      throw new BulkheadError(
        ErrorCodes.VERSION_STATE,
        `${image.name}@${version} is retired; a retired version cannot be published again`,
      );
    }
    const after: Row<'image_versions'> = {
      ...row,
      state: 'published',
      published_at: row.published_at ?? at,
    };
    const release = options.release || image.release_version_id === null;
    const releaseAfter = release ? row.id : image.release_version_id;
    if (row.state === 'published' && releaseAfter === image.release_version_id) {
      return { result: presentVersion(row, image.release_version_id), unchanged: true };
    }
    await requireTrustedSigner(
      trx,
      `${image.name}@${version}`,
      row,
      row.state === 'published' ? 'released' : 'published',
    );
    if (row.state !== 'published') {
      await trx
        .updateTable('image_versions')
        .set({ state: 'published', published_at: after.published_at })
        .where('id', '=', row.id)
        .execute();
    }
    if (release) await setRelease(trx, image, row.id, at);
    return versionChange(row, after, image.release_version_id, releaseAfter);
  });
}

/**
 * Retires a version: no new installs. The released version cannot be retired (release another
 * first). Retiring a retired version changes nothing.
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_VERSION_STATE` for the released version.
 */
export async function retireVersion(
  deps: CommandDeps,
  actor: Actor,
  idOrName: string,
  version: string,
): Promise<ImageVersionInfo> {
  return runCommand(deps, actor, VERSION('retire'), async (trx, at) => {
    const image = await findImage(trx, idOrName);
    const row = await findVersion(trx, image, version);
    if (row.state === 'retired') {
      return { result: presentVersion(row, image.release_version_id), unchanged: true };
    }
    if (row.id === image.release_version_id) {
      throw new BulkheadError(
        ErrorCodes.VERSION_STATE,
        `${image.name}@${version} is the released version; release another version before retiring it`,
      );
    }
    const after: Row<'image_versions'> = { ...row, state: 'retired', retired_at: at };
    await trx
      .updateTable('image_versions')
      .set({ state: 'retired', retired_at: at })
      .where('id', '=', row.id)
      .execute();
    return versionChange(row, after, image.release_version_id, image.release_version_id);
  });
}

/**
 * Sets the version every device on the image gets when no rollout gives it another.
 * @throws BulkheadError `ERR_NOT_FOUND` (also for a version of another image);
 *   `ERR_VERSION_STATE` unless the version is published; `ERR_UNTRUSTED_KEY` when every key
 *   that signed it has been revoked since.
 */
export async function releaseVersion(
  deps: CommandDeps,
  actor: Actor,
  idOrName: string,
  versionId: string,
): Promise<ImageInfo> {
  return transact(deps, (trx) => applyRelease(trx, actor, idOrName, versionId, deps.nowMs));
}

/**
 * `releaseVersion` inside a transaction that `transact` already opened: the change, its audit
 * entry (`image.release`) and the devices it marks, for work that releases as one of several
 * changes (a rollout completing). It throws, as `releaseVersion` does, before it writes anything.
 */
export async function applyRelease(
  trx: Transaction<Database>,
  actor: Actor,
  idOrName: string,
  versionId: string,
  nowMs: number,
): Promise<ImageInfo> {
  return applyCommand(trx, actor, IMAGE('release'), nowMs, async (trx, at) => {
    const image = await findImage(trx, idOrName);
    const row = await trx
      .selectFrom('image_versions')
      .selectAll()
      .where('id', '=', versionId)
      .where('image_id', '=', image.id)
      .executeTakeFirst();
    if (!row) {
      throw new BulkheadError(
        ErrorCodes.NOT_FOUND,
        `image ${image.name} has no version with id ${versionId.slice(0, 64)}`,
      );
    }
    if (row.state !== 'published') {
      throw new BulkheadError(
        ErrorCodes.VERSION_STATE,
        `${image.name}@${row.version} is ${row.state}; only a published version can be released`,
      );
    }
    const before = await imageInfo(trx, image);
    if (image.release_version_id === row.id) return { result: before, unchanged: true };
    await requireTrustedSigner(trx, `${image.name}@${row.version}`, row, 'released');
    await setRelease(trx, image, row.id, at);
    const info = presentImage(
      { ...image, release_version_id: row.id, updated_at: at },
      {
        id: row.id,
        version: row.version,
      },
    );
    return { result: info, before, after: info, id: image.id };
  });
}

const IMAGE = (verb: string) => ({ action: `image.${verb}`, target: 'image' });
const VERSION = (verb: string) => ({ action: `image.version.${verb}`, target: 'image_version' });
