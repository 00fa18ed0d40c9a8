import type { FastifyPluginAsync } from 'fastify';
import { sql } from 'kysely';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { rebuildCatalog } from '../../image/catalog.ts';
import { DirectoryStore, manifestKey } from '../../image/index.ts';
import {
  BulkheadError,
  CreateImageRequestSchema,
  CreatePublisherRequestSchema,
  DigestParamsSchema,
  ErrorCodes,
  ImageDetailSchema,
  ImageInfoSchema,
  ImageListQuerySchema,
  ImageListSchema,
  ImageParamsSchema,
  ImageVersionInfoSchema,
  ImageVersionListSchema,
  ImageVersionParamsSchema,
  KeyIdParamsSchema,
  MAX_INDEX_BYTES,
  MAX_MANIFEST_BYTES,
  MissingRequestSchema,
  MissingResponseSchema,
  PublishVersionRequestSchema,
  PublisherListSchema,
  PublisherSchema,
  PushVersionParamsSchema,
  PushVersionQuerySchema,
  PushVersionResponseSchema,
  ReleaseRequestSchema,
  StoredObjectSchema,
  UpdateImageRequestSchema,
} from '../../protocol/index.ts';
import { callerOf } from '../admin/plugin.ts';
import type { CenterContext } from '../server.ts';
import {
  createImage,
  deleteImage,
  findImage,
  imageDetail,
  listImages,
  listVersions,
  publishVersion,
  releaseVersion,
  retireVersion,
  updateImage,
} from './images.ts';
import { createPublisher, listPublishers, revokePublisher } from './publishers.ts';
import {
  MAX_COMPRESSED_CHUNK_BYTES,
  findMissing,
  pushVersion,
  putChunk,
  putIndex,
} from './upload.ts';

/** The raw body of an upload; anything but application/octet-stream is refused. */
function rawBody(body: unknown): Buffer {
  if (!Buffer.isBuffer(body)) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'body: send the bytes as Content-Type: application/octet-stream',
    );
  }
  return body;
}

/**
 * Images and their publishing, under the admin API (registered inside its scope, so its role
 * hook covers every route): trusted publisher keys (admin), images and versions (viewer reads,
 * operator changes), and the upload of chunks, indexes and signed manifests into Center's store
 * (operator).
 */
export const imagesAdmin: FastifyPluginAsync<CenterContext> = async (parent, deps) => {
  const app = parent.withTypeProvider<ZodTypeProvider>();
  const { db } = deps.database;
  const store = new DirectoryStore(deps.config.storeDir);
  const nowMs = () => deps.now().getTime();
  const prefix = '/api/v1/admin';
  const tags = ['images'];

  /**
   * Every desired state lists the trusted publisher keys, but its revision follows the device
   * and its images, not the keys: so a change of keys moves every device's revision (one
   * statement; keys change rarely) and tells them all.
   */
  async function publishersChanged(): Promise<void> {
    const at = nowMs();
    await db
      .updateTable('devices')
      .set({
        updated_at: sql<number>`case when updated_at >= ${at} then updated_at + 1 else ${at} end`,
      })
      .execute();
    deps.push.notify('all');
  }

  // Uploads are raw bytes; the parser exists in this plugin's scope only.
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer' },
    (_req, body: Buffer, done) => done(null, body),
  );

  app.get(
    `${prefix}/publishers`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'Publisher keys, trusted and revoked.',
        response: { 200: PublisherListSchema },
      },
    },
    async () => ({ publishers: await listPublishers(db) }),
  );

  app.post(
    `${prefix}/publishers`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Trusts an Ed25519 publisher key: manifests it signs may be uploaded.',
        body: CreatePublisherRequestSchema,
        response: { 201: PublisherSchema },
      },
    },
    async (req, reply) => {
      const created = await createPublisher(db, callerOf(req), req.body, nowMs());
      await publishersChanged();
      return reply.code(201).send(created);
    },
  );

  app.delete(
    `${prefix}/publishers/:keyid`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Revokes a publisher key: it verifies no new upload. Versions it signed stay.',
        params: KeyIdParamsSchema,
        response: { 200: PublisherSchema },
      },
    },
    async (req) => {
      const revoked = await revokePublisher(db, callerOf(req), req.params.keyid, nowMs());
      await publishersChanged();
      return revoked;
    },
  );

  app.get(
    `${prefix}/images`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, querystring: ImageListQuerySchema, response: { 200: ImageListSchema } },
    },
    async (req) => ({ images: await listImages(db, req.query.kind) }),
  );

  app.post(
    `${prefix}/images`,
    {
      config: { adminRole: 'operator' },
      schema: { tags, body: CreateImageRequestSchema, response: { 201: ImageInfoSchema } },
    },
    async (req, reply) =>
      reply.code(201).send(await createImage(db, callerOf(req), req.body, nowMs())),
  );

  app.get(
    `${prefix}/images/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'An image (by id or name) with its versions.',
        params: ImageParamsSchema,
        response: { 200: ImageDetailSchema },
      },
    },
    async (req) => imageDetail(db, req.params.id),
  );

  app.patch(
    `${prefix}/images/:id`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        params: ImageParamsSchema,
        body: UpdateImageRequestSchema,
        response: { 200: ImageInfoSchema },
      },
    },
    async (req) => updateImage(db, callerOf(req), req.params.id, req.body, nowMs()),
  );

  app.delete(
    `${prefix}/images/:id`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Deletes an image and its versions when no profile, app or rollout refers to them (409 otherwise).',
        params: ImageParamsSchema,
        response: { 204: z.null() },
      },
    },
    async (req, reply) => {
      const deleted = await deleteImage(db, callerOf(req), req.params.id, nowMs());
      // After the commit: a manifest left behind by a crash here is harmless, one removed
      // before it would leave a version without its manifest.
      for (const v of deleted.versions) await store.remove(manifestKey(deleted.name, v));
      await rebuildCatalog(store);
      return reply.code(204).send(null);
    },
  );

  app.get(
    `${prefix}/images/:id/versions`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, params: ImageParamsSchema, response: { 200: ImageVersionListSchema } },
    },
    async (req) => ({ versions: await listVersions(db, await findImage(db, req.params.id)) }),
  );

  app.post(
    `${prefix}/images/:id/versions/:version/publish`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Publishes a draft. It becomes the released version with `release: true`, or when the image has none yet.',
        params: ImageVersionParamsSchema,
        body: PublishVersionRequestSchema,
        response: { 200: ImageVersionInfoSchema },
      },
    },
    async (req) => {
      const published = await publishVersion(
        db,
        callerOf(req),
        req.params.id,
        req.params.version,
        { release: req.body?.release ?? false },
        nowMs(),
      );
      // The first published version, or one published with `release`, is what devices get.
      if (published.released) deps.push.notify('all');
      return published;
    },
  );

  app.post(
    `${prefix}/images/:id/versions/:version/retire`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description: 'Retires a version: no new installs. Not the released one.',
        params: ImageVersionParamsSchema,
        response: { 200: ImageVersionInfoSchema },
      },
    },
    async (req) => retireVersion(db, callerOf(req), req.params.id, req.params.version, nowMs()),
  );

  app.post(
    `${prefix}/images/:id/release`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Sets the version every device on the image gets when no rollout applies; only a published one.',
        params: ImageParamsSchema,
        body: ReleaseRequestSchema,
        response: { 200: ImageInfoSchema },
      },
    },
    async (req) => {
      const image = await releaseVersion(
        db,
        callerOf(req),
        req.params.id,
        req.body.versionId,
        nowMs(),
      );
      deps.push.notify('all');
      return image;
    },
  );

  app.post(
    `${prefix}/store/missing`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description: 'Which of the given chunks (and chunk indexes) the store lacks.',
        body: MissingRequestSchema,
        response: { 200: MissingResponseSchema },
      },
    },
    async (req) => findMissing(store, req.body),
  );

  // A chunk or a chunk index, as the store keeps it (zstd-compressed), named by the SHA-256 of
  // its content. Both are content-addressed and unreferenced until a manifest names them, so
  // their uploads leave no audit entry; the manifest upload that publishes them does.
  const objects = [
    { path: 'chunks', what: 'chunk', bodyLimit: MAX_COMPRESSED_CHUNK_BYTES, put: putChunk },
    { path: 'indexes', what: 'chunk index', bodyLimit: MAX_INDEX_BYTES, put: putIndex },
  ];
  for (const object of objects) {
    app.put(
      `${prefix}/store/${object.path}/:digest`,
      {
        config: { adminRole: 'operator' },
        bodyLimit: object.bodyLimit,
        schema: {
          tags,
          description: `Uploads one ${object.what} as the store keeps it (zstd-compressed); the SHA-256 of its content must be the digest.`,
          params: DigestParamsSchema,
          response: { 200: StoredObjectSchema, 201: StoredObjectSchema },
        },
      },
      async (req, reply) => {
        const r = await object.put(store, req.params.digest, rawBody(req.body));
        return reply.code(r.created ? 201 : 200).send(r);
      },
    );
  }

  app.put(
    `${prefix}/store/images/:name/:version`,
    {
      config: { adminRole: 'operator' },
      bodyLimit: MAX_MANIFEST_BYTES,
      schema: {
        tags,
        description:
          'Uploads the signed manifest of a version whose index and chunks are in the store; records it as a draft. The same manifest again is a no-op (200).',
        params: PushVersionParamsSchema,
        querystring: PushVersionQuerySchema,
        response: { 200: PushVersionResponseSchema, 201: PushVersionResponseSchema },
      },
    },
    async (req, reply) => {
      const r = await pushVersion(
        { db, store },
        callerOf(req),
        {
          name: req.params.name,
          version: req.params.version,
          kind: req.query.kind,
          manifest: rawBody(req.body),
        },
        nowMs(),
      );
      return reply.code(r.created ? 201 : 200).send(r);
    },
  );
};
