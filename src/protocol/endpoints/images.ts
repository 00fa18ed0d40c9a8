import { z } from 'zod';
import { BYTES, defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import * as images from '../images.ts';
import { MAX_MANIFEST_BYTES } from '../manifest.ts';

const A = '/api/v1/admin';
const { NOT_FOUND, IN_USE, VERSION_STATE } = ErrorCodes;
/** Errors of an upload whose bytes are not what their digest or signature says. */
const uploadErrors = [
  ErrorCodes.INVALID_DIGEST,
  ErrorCodes.CHUNK_DIGEST_MISMATCH,
  ErrorCodes.INDEX_CORRUPT,
  ErrorCodes.OBJECT_TOO_LARGE,
];

/**
 * The upload of a chunk or a chunk index, as the store keeps it (zstd-compressed), named by the
 * SHA-256 of its content: 201 when stored, 200 when the store already had it.
 */
function storeUpload(folder: 'chunks' | 'indexes', what: string, bodyLimit: number) {
  const answer = images.StoredObjectSchema;
  return endpoint(`PUT ${A}/store/${folder}/:digest`, 'operator', 200, answer, {
    also: { 201: answer },
    params: images.DigestParamsSchema,
    body: BYTES,
    bodyLimit,
    errors: uploadErrors,
    description: `Uploads one ${what} as the store keeps it (zstd-compressed); the SHA-256 of its content must be the digest.`,
  });
}

/**
 * Images and their publishing: trusted publisher keys (admin), images and versions (viewer
 * reads, operator changes), and the upload of chunks, indexes and signed manifests into
 * Center's store (operator).
 */
export const imageEndpoints = defineEndpoints(['images'], {
  listPublishers: endpoint(`GET ${A}/publishers`, 'viewer', 200, images.PublisherListSchema, {
    description: 'Publisher keys, trusted and revoked.',
  }),
  createPublisher: endpoint(`POST ${A}/publishers`, 'admin', 201, images.PublisherSchema, {
    body: images.CreatePublisherRequestSchema,
    errors: [ErrorCodes.KEY_INVALID, ErrorCodes.KEY_EXISTS],
    description: 'Trusts an Ed25519 publisher key: manifests it signs may be uploaded.',
  }),
  revokePublisher: endpoint(`DELETE ${A}/publishers/:keyid`, 'admin', 200, images.PublisherSchema, {
    params: images.KeyIdParamsSchema,
    errors: [NOT_FOUND],
    description: 'Revokes a publisher key: it verifies no new upload. Versions it signed stay.',
  }),
  listImages: endpoint(`GET ${A}/images`, 'viewer', 200, images.ImageListSchema, {
    query: images.ImageListQuerySchema,
    description: 'Images, optionally of one kind.',
  }),
  createImage: endpoint(`POST ${A}/images`, 'operator', 201, images.ImageInfoSchema, {
    body: images.CreateImageRequestSchema,
    errors: [ErrorCodes.IMAGE_EXISTS],
    description: 'Creates an image with no versions yet.',
  }),
  getImage: endpoint(`GET ${A}/images/:id`, 'viewer', 200, images.ImageDetailSchema, {
    params: images.ImageParamsSchema,
    errors: [NOT_FOUND],
    description: 'An image (by id or name) with its versions.',
  }),
  updateImage: endpoint(`PATCH ${A}/images/:id`, 'operator', 200, images.ImageInfoSchema, {
    params: images.ImageParamsSchema,
    body: images.UpdateImageRequestSchema,
    errors: [NOT_FOUND, IN_USE],
    description: "Changes an image's description, or its kind while nothing uses it.",
  }),
  deleteImage: endpoint(`DELETE ${A}/images/:id`, 'operator', 204, z.null(), {
    params: images.ImageParamsSchema,
    errors: [NOT_FOUND, IN_USE],
    description:
      'Deletes an image and its versions when no profile, app or rollout refers to them (409 otherwise).',
  }),
  listVersions: endpoint(
    `GET ${A}/images/:id/versions`,
    'viewer',
    200,
    images.ImageVersionListSchema,
    {
      params: images.ImageParamsSchema,
      errors: [NOT_FOUND],
      description: "An image's versions.",
    },
  ),
  publishVersion: endpoint(
    `POST ${A}/images/:id/versions/:version/publish`,
    'operator',
    200,
    images.ImageVersionInfoSchema,
    {
      params: images.ImageVersionParamsSchema,
      body: images.PublishVersionRequestSchema,
      errors: [NOT_FOUND, VERSION_STATE],
      description:
        'Publishes a draft. It becomes the released version with `release: true`, or when the image has none yet.',
    },
  ),
  retireVersion: endpoint(
    `POST ${A}/images/:id/versions/:version/retire`,
    'operator',
    200,
    images.ImageVersionInfoSchema,
    {
      params: images.ImageVersionParamsSchema,
      errors: [NOT_FOUND, VERSION_STATE, IN_USE],
      description: 'Retires a version: no new installs. Not the released one.',
    },
  ),
  releaseVersion: endpoint(
    `POST ${A}/images/:id/release`,
    'operator',
    200,
    images.ImageInfoSchema,
    {
      params: images.ImageParamsSchema,
      body: images.ReleaseRequestSchema,
      errors: [NOT_FOUND, VERSION_STATE],
      description:
        'Sets the version every device on the image gets when no rollout applies; only a published one.',
    },
  ),
  findMissing: endpoint(`POST ${A}/store/missing`, 'operator', 200, images.MissingResponseSchema, {
    body: images.MissingRequestSchema,
    // Every digest the schema allows, each quoted and followed by a comma, and the keys.
    bodyLimit: (images.MAX_MISSING_QUERY + 16) * 67 + 1024,
    description: 'Which of the given chunks (and chunk indexes) the store lacks.',
  }),
  putChunk: storeUpload('chunks', 'chunk', images.MAX_COMPRESSED_CHUNK_BYTES),
  putIndex: storeUpload('indexes', 'chunk index', images.MAX_INDEX_BYTES),
  pushVersion: endpoint(
    `PUT ${A}/store/images/:name/:version`,
    'operator',
    200,
    images.PushVersionResponseSchema,
    {
      also: { 201: images.PushVersionResponseSchema },
      params: images.PushVersionParamsSchema,
      query: images.PushVersionQuerySchema,
      body: BYTES,
      bodyLimit: MAX_MANIFEST_BYTES,
      errors: [
        ErrorCodes.MANIFEST_MALFORMED,
        ErrorCodes.MANIFEST_UNSIGNED,
        ErrorCodes.MANIFEST_SIGNATURE,
        ErrorCodes.MANIFEST_MISMATCH,
        ErrorCodes.UNTRUSTED_KEY,
        ErrorCodes.CHUNKS_MISSING,
        ErrorCodes.IMAGE_EXISTS,
        ErrorCodes.VERSION_STATE,
        ErrorCodes.OBJECT_TOO_LARGE,
      ],
      description:
        'Uploads the signed manifest of a version whose index and chunks are in the store; records it as a draft. The same manifest again is a no-op (200).',
    },
  ),
});
