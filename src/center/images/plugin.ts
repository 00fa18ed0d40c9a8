import type { FastifyPluginAsync } from 'fastify';
import { DirectoryStore, manifestKey, rebuildCatalog } from '../../image/index.ts';
import { imageEndpoints as e } from '../../protocol/index.ts';
import { answer, route } from '../http/route.ts';
import type { CenterContext } from '../context.ts';
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
import { fillChunkCounts } from './chunk-counts.ts';
import { createPublisher, listPublishers, revokePublisher } from './publishers.ts';
import { findMissing, pushVersion, putChunk, putIndex } from './upload.ts';

/** An upload's bytes as the store takes them (the parser below gives a Buffer already). */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
}

/**
 * Images and their publishing, under the admin API (see `imageEndpoints` for the roles):
 * trusted publisher keys, images and versions, and the upload of chunks, indexes and signed
 * manifests into Center's store.
 */
export const imagesAdmin: FastifyPluginAsync<CenterContext> = async (app, deps) => {
  const { db } = deps.database;
  const store = new DirectoryStore(deps.config.storeDir);
  const nowMs = () => deps.now().getTime();

  const command = () => ({ db, push: deps.push, nowMs: nowMs() });

  // Uploads are raw bytes; the parser exists in this plugin's scope only.
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer' },
    (_req, body: Buffer, done) => done(null, body),
  );

  route(app, e.listPublishers, async () => ({ publishers: await listPublishers(db) }));
  route(app, e.createPublisher, (req, caller) => createPublisher(command(), caller, req.body));
  route(app, e.revokePublisher, (req, caller) =>
    revokePublisher(command(), caller, req.params.keyid),
  );

  route(app, e.listImages, async (req) => ({ images: await listImages(db, req.query.kind) }));
  route(app, e.createImage, (req, caller) => createImage(command(), caller, req.body));
  route(app, e.getImage, async (req) => {
    await fillChunkCounts(db, store, (await findImage(db, req.params.id)).id);
    return imageDetail(db, req.params.id);
  });
  route(app, e.updateImage, (req, caller) =>
    updateImage(command(), caller, req.params.id, req.body),
  );
  route(app, e.deleteImage, async (req, caller) => {
    const deleted = await deleteImage(command(), caller, req.params.id);
    // After the commit: a manifest left behind by a crash here is harmless, one removed
    // before it would leave a version without its manifest.
    for (const v of deleted.versions) await store.remove(manifestKey(deleted.name, v));
    await rebuildCatalog(store);
  });
  route(app, e.listVersions, async (req) => {
    const image = await findImage(db, req.params.id);
    await fillChunkCounts(db, store, image.id);
    return { versions: await listVersions(db, image) };
  });
  route(app, e.publishVersion, (req, caller) => {
    const { id, version } = req.params;
    const release = req.body?.release ?? false;
    return publishVersion(command(), caller, id, version, { release });
  });
  route(app, e.retireVersion, (req, caller) =>
    retireVersion(command(), caller, req.params.id, req.params.version),
  );
  route(app, e.releaseVersion, (req, caller) =>
    releaseVersion(command(), caller, req.params.id, req.body.versionId),
  );

  route(app, e.findMissing, (req) => findMissing(store, req.body));
  // Chunks and indexes are content-addressed and unreferenced until a manifest names them, so
  // their uploads leave no audit entry; the manifest upload that publishes them does.
  for (const [endpoint, put] of [
    [e.putChunk, putChunk],
    [e.putIndex, putIndex],
  ] as const) {
    route(app, endpoint, async (req) => {
      const r = await put(store, req.params.digest, asBuffer(req.body));
      return answer(endpoint, r.created ? 201 : 200, r);
    });
  }
  route(app, e.pushVersion, async (req, caller) => {
    const { name, version } = req.params;
    const manifest = asBuffer(req.body);
    const r = await pushVersion(
      { db, store },
      caller,
      { name, version, kind: req.query.kind, manifest },
      nowMs(),
    );
    return answer(e.pushVersion, r.created ? 201 : 200, r);
  });
};
