import { z } from 'zod';
import { text } from './text.ts';
import { DigestSchema, ImageNameSchema, ImageVersionSchema } from './names.ts';
import { SignatureSchema } from './manifest.ts';

/*
 * Wire schemas of Center's image admin API (`/api/v1/admin/publishers`, `/images`, `/store/…`):
 * trusted publisher keys, images and their versions, and the upload of chunks and manifests.
 * Request bodies, params and queries are strict: an unknown field is a 400 naming it.
 */

export const IMAGE_KIND_NAMES = ['system', 'app'] as const;
/** A VM's system volume, or an app volume attached read-only. */
export const ImageKindSchema = z.enum(IMAGE_KIND_NAMES);
export type ImageKindName = z.infer<typeof ImageKindSchema>;

export const IMAGE_VERSION_STATE_NAMES = ['draft', 'published', 'retired'] as const;
export const ImageVersionStateSchema = z.enum(IMAGE_VERSION_STATE_NAMES);

/**
 * Largest uncompressed chunk Center accepts: above the largest either chunker cuts (block-cdc
 * at most 8 × 4 KiB by default, fastcdc at most 64 KiB), with room for other parameters.
 */
export const MAX_CHUNK_BYTES = 1024 * 1024;
/** Largest compressed body a chunk of MAX_CHUNK_BYTES may arrive as (zstd's worst case). */
export const MAX_COMPRESSED_CHUNK_BYTES = MAX_CHUNK_BYTES + (MAX_CHUNK_BYTES >> 7) + 1024;

/** Largest uncompressed chunk index accepted (about 1.8 million chunks, a 28 GiB image). */
export const MAX_INDEX_BYTES = 64 * 1024 * 1024;

/** Digests one `POST /store/missing` may ask about. */
export const MAX_MISSING_QUERY = 100_000;

/** Labels of publisher keys: short, printable, no spaces, so they read well in the audit trail. */
export const PublisherNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]*$/, 'letters, digits and . _ @ - only');

export const PublisherSchema = z.object({
  /** SHA-256 of the raw Ed25519 key, as manifests' signatures name it. */
  keyid: z.string(),
  name: z.string(),
  /** SPKI PEM. */
  publicKey: z.string(),
  createdAt: z.number().int(),
  /** Null while trusted; a revoked key verifies no new upload. */
  revokedAt: z.number().int().nullable(),
});
export type Publisher = z.infer<typeof PublisherSchema>;

export const PublisherListSchema = z.object({ publishers: z.array(PublisherSchema) });

export const CreatePublisherRequestSchema = z.strictObject({
  name: PublisherNameSchema,
  /** The Ed25519 public key, SPKI PEM (`bulkhead keys generate` writes one). */
  publicKey: text({ min: 1, max: 4096 }),
});
export type CreatePublisherRequest = z.infer<typeof CreatePublisherRequestSchema>;

export const KeyIdParamsSchema = z.strictObject({ keyid: DigestSchema });

export const ImageVersionInfoSchema = z.object({
  id: z.string(),
  imageId: z.string(),
  version: z.string(),
  /** SHA-256 of the manifest's canonical body. */
  manifestId: z.string(),
  /** The manifest's signatures that verified with a publisher key Center trusted at upload. */
  signatures: z.array(SignatureSchema),
  /** Bytes of the raw image. */
  size: z.number().int(),
  sha256: z.string(),
  parentVersion: z.string().nullable(),
  state: ImageVersionStateSchema,
  /** True for the image's released version. */
  released: z.boolean(),
  /** Distinct stored chunks of the version (all-zero runs are holes, not chunks). */
  chunks: z.number().int(),
  /** Chunks its parent version does not have (all of them for a version without a parent). */
  addedChunks: z.number().int(),
  /** Stored (compressed) bytes of those chunks: what a PC on the parent version downloads. */
  addedBytes: z.number().int(),
  createdAt: z.number().int(),
  publishedAt: z.number().int().nullable(),
  retiredAt: z.number().int().nullable(),
});
export type ImageVersionInfo = z.infer<typeof ImageVersionInfoSchema>;

export const ImageInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  kind: ImageKindSchema,
  description: z.string(),
  /** The version devices get when no rollout gives them another; null until released. */
  release: z.object({ id: z.string(), version: z.string() }).nullable(),
  createdAt: z.number().int(),
  updatedAt: z.number().int(),
});
export type ImageInfo = z.infer<typeof ImageInfoSchema>;

export const ImageListSchema = z.object({ images: z.array(ImageInfoSchema) });

export const ImageListQuerySchema = z.strictObject({ kind: ImageKindSchema.optional() });

export const ImageDetailSchema = ImageInfoSchema.extend({
  versions: z.array(ImageVersionInfoSchema),
});
export type ImageDetail = z.infer<typeof ImageDetailSchema>;

export const ImageVersionListSchema = z.object({ versions: z.array(ImageVersionInfoSchema) });

export const ImageDescriptionSchema = text({ max: 2000 });

export const CreateImageRequestSchema = z.strictObject({
  name: ImageNameSchema,
  kind: ImageKindSchema,
  description: ImageDescriptionSchema.default(''),
});
export type CreateImageRequest = z.input<typeof CreateImageRequestSchema>;

export const UpdateImageRequestSchema = z
  .strictObject({
    description: ImageDescriptionSchema.optional(),
    /** Only while no profile or app uses the image. */
    kind: ImageKindSchema.optional(),
  })
  .refine((b) => b.description !== undefined || b.kind !== undefined, {
    message: 'give description or kind',
  });
export type UpdateImageRequest = z.infer<typeof UpdateImageRequestSchema>;

/** `:id` of an image route: its id, or its name. */
export const ImageParamsSchema = z.strictObject({ id: text({ min: 1, max: 128 }) });

export const ImageVersionParamsSchema = z.strictObject({
  id: text({ min: 1, max: 128 }),
  version: ImageVersionSchema,
});

export const PublishVersionRequestSchema = z
  .strictObject({
    /** Also make it the released version (it becomes so anyway when the image has none). */
    release: z.boolean().default(false),
  })
  // No body at all is the same as `{}`.
  .nullish();

export const ReleaseRequestSchema = z.strictObject({ versionId: text({ min: 1, max: 64 }) });

export const MissingRequestSchema = z.strictObject({
  chunks: z.array(DigestSchema).max(MAX_MISSING_QUERY),
  /** Chunk index digests to ask about too. */
  indexes: z.array(DigestSchema).max(16).default([]),
});
export type MissingRequest = z.input<typeof MissingRequestSchema>;

export const MissingResponseSchema = z.object({
  /** The asked chunks the store lacks, each once, in the order asked. */
  missing: z.array(z.string()),
  /** The asked indexes the store lacks. */
  missingIndexes: z.array(z.string()),
});
export type MissingResponse = z.infer<typeof MissingResponseSchema>;

export const DigestParamsSchema = z.strictObject({ digest: DigestSchema });

export const StoredObjectSchema = z.object({
  digest: z.string(),
  /** False when the store already held it (nothing was written). */
  created: z.boolean(),
});

export const PushVersionParamsSchema = z.strictObject({
  name: ImageNameSchema,
  version: ImageVersionSchema,
});

export const PushVersionQuerySchema = z.strictObject({
  /** The kind of the image when this upload creates it (default system). */
  kind: ImageKindSchema.optional(),
});

export const PushVersionResponseSchema = z.object({
  image: ImageInfoSchema,
  version: ImageVersionInfoSchema,
  /** False when the same manifest was already there (a repeated push changes nothing). */
  created: z.boolean(),
});
export type PushVersionResponse = z.infer<typeof PushVersionResponseSchema>;
