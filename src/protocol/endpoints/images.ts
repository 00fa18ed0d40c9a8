import { z } from 'zod';
import { BYTES, defineEndpoints } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import {
  CreateImageRequestSchema,
  CreatePublisherRequestSchema,
  DigestParamsSchema,
  ImageDetailSchema,
  ImageInfoSchema,
  ImageListQuerySchema,
  ImageListSchema,
  ImageParamsSchema,
  ImageVersionInfoSchema,
  ImageVersionListSchema,
  ImageVersionParamsSchema,
  KeyIdParamsSchema,
  MAX_COMPRESSED_CHUNK_BYTES,
  MAX_INDEX_BYTES,
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
} from '../images.ts';
import { MAX_MANIFEST_BYTES } from '../manifest.ts';

const A = '/api/v1/admin';
const tags = ['images'];
const { NOT_FOUND, IN_USE, VERSION_STATE } = ErrorCodes;
/** Errors of an upload whose bytes are not what their digest or signature says. */
const uploadErrors = [
  ErrorCodes.INVALID_DIGEST,
  ErrorCodes.CHUNK_DIGEST_MISMATCH,
  ErrorCodes.INDEX_CORRUPT,
  ErrorCodes.OBJECT_TOO_LARGE,
];

/**
 * Images and their publishing: trusted publisher keys (admin), images and versions (viewer
 * reads, operator changes), and the upload of chunks, indexes and signed manifests into
 * Center's store (operator).
 */
export const imageEndpoints = defineEndpoints({
  listPublishers: {
    method: 'GET',
    path: `${A}/publishers`,
    auth: 'viewer',
    tags,
    description: 'Publisher keys, trusted and revoked.',
    response: { 200: PublisherListSchema },
  },
  createPublisher: {
    method: 'POST',
    path: `${A}/publishers`,
    auth: 'admin',
    tags,
    description: 'Trusts an Ed25519 publisher key: manifests it signs may be uploaded.',
    body: CreatePublisherRequestSchema,
    response: { 201: PublisherSchema },
    errors: [ErrorCodes.KEY_INVALID, ErrorCodes.KEY_EXISTS],
  },
  revokePublisher: {
    method: 'DELETE',
    path: `${A}/publishers/:keyid`,
    auth: 'admin',
    tags,
    description: 'Revokes a publisher key: it verifies no new upload. Versions it signed stay.',
    params: KeyIdParamsSchema,
    response: { 200: PublisherSchema },
    errors: [NOT_FOUND],
  },
  listImages: {
    method: 'GET',
    path: `${A}/images`,
    auth: 'viewer',
    tags,
    description: 'Images, optionally of one kind.',
    query: ImageListQuerySchema,
    response: { 200: ImageListSchema },
  },
  createImage: {
    method: 'POST',
    path: `${A}/images`,
    auth: 'operator',
    tags,
    description: 'Creates an image with no versions yet.',
    body: CreateImageRequestSchema,
    response: { 201: ImageInfoSchema },
    errors: [ErrorCodes.IMAGE_EXISTS],
  },
  getImage: {
    method: 'GET',
    path: `${A}/images/:id`,
    auth: 'viewer',
    tags,
    description: 'An image (by id or name) with its versions.',
    params: ImageParamsSchema,
    response: { 200: ImageDetailSchema },
    errors: [NOT_FOUND],
  },
  updateImage: {
    method: 'PATCH',
    path: `${A}/images/:id`,
    auth: 'operator',
    tags,
    description: "Changes an image's description, or its kind while nothing uses it.",
    params: ImageParamsSchema,
    body: UpdateImageRequestSchema,
    response: { 200: ImageInfoSchema },
    errors: [NOT_FOUND, IN_USE],
  },
  deleteImage: {
    method: 'DELETE',
    path: `${A}/images/:id`,
    auth: 'operator',
    tags,
    description:
      'Deletes an image and its versions when no profile, app or rollout refers to them (409 otherwise).',
    params: ImageParamsSchema,
    response: { 204: z.null() },
    errors: [NOT_FOUND, IN_USE],
  },
  listVersions: {
    method: 'GET',
    path: `${A}/images/:id/versions`,
    auth: 'viewer',
    tags,
    description: "An image's versions.",
    params: ImageParamsSchema,
    response: { 200: ImageVersionListSchema },
    errors: [NOT_FOUND],
  },
  publishVersion: {
    method: 'POST',
    path: `${A}/images/:id/versions/:version/publish`,
    auth: 'operator',
    tags,
    description:
      'Publishes a draft. It becomes the released version with `release: true`, or when the image has none yet.',
    params: ImageVersionParamsSchema,
    body: PublishVersionRequestSchema,
    response: { 200: ImageVersionInfoSchema },
    errors: [NOT_FOUND, VERSION_STATE],
  },
  retireVersion: {
    method: 'POST',
    path: `${A}/images/:id/versions/:version/retire`,
    auth: 'operator',
    tags,
    description: 'Retires a version: no new installs. Not the released one.',
    params: ImageVersionParamsSchema,
    response: { 200: ImageVersionInfoSchema },
    errors: [NOT_FOUND, VERSION_STATE, IN_USE],
  },
  releaseVersion: {
    method: 'POST',
    path: `${A}/images/:id/release`,
    auth: 'operator',
    tags,
    description:
      'Sets the version every device on the image gets when no rollout applies; only a published one.',
    params: ImageParamsSchema,
    body: ReleaseRequestSchema,
    response: { 200: ImageInfoSchema },
    errors: [NOT_FOUND, VERSION_STATE],
  },
  findMissing: {
    method: 'POST',
    path: `${A}/store/missing`,
    auth: 'operator',
    tags,
    description: 'Which of the given chunks (and chunk indexes) the store lacks.',
    body: MissingRequestSchema,
    response: { 200: MissingResponseSchema },
  },
  // A chunk or a chunk index, as the store keeps it (zstd-compressed), named by the SHA-256 of
  // its content. Both are content-addressed and unreferenced until a manifest names them.
  putChunk: {
    method: 'PUT',
    path: `${A}/store/chunks/:digest`,
    auth: 'operator',
    tags,
    description:
      'Uploads one chunk as the store keeps it (zstd-compressed); the SHA-256 of its content must be the digest.',
    params: DigestParamsSchema,
    body: BYTES,
    bodyLimit: MAX_COMPRESSED_CHUNK_BYTES,
    response: { 200: StoredObjectSchema, 201: StoredObjectSchema },
    errors: uploadErrors,
  },
  putIndex: {
    method: 'PUT',
    path: `${A}/store/indexes/:digest`,
    auth: 'operator',
    tags,
    description:
      'Uploads one chunk index as the store keeps it (zstd-compressed); the SHA-256 of its content must be the digest.',
    params: DigestParamsSchema,
    body: BYTES,
    bodyLimit: MAX_INDEX_BYTES,
    response: { 200: StoredObjectSchema, 201: StoredObjectSchema },
    errors: uploadErrors,
  },
  pushVersion: {
    method: 'PUT',
    path: `${A}/store/images/:name/:version`,
    auth: 'operator',
    tags,
    description:
      'Uploads the signed manifest of a version whose index and chunks are in the store; records it as a draft. The same manifest again is a no-op (200).',
    params: PushVersionParamsSchema,
    query: PushVersionQuerySchema,
    body: BYTES,
    bodyLimit: MAX_MANIFEST_BYTES,
    response: { 200: PushVersionResponseSchema, 201: PushVersionResponseSchema },
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
  },
});
