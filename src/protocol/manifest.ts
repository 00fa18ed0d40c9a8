import { z } from 'zod';
import { text } from './text.ts';
import { DigestSchema, ImageNameSchema, ImageVersionSchema } from './names.ts';

const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/**
 * Block-aligned content-defined chunking: the image is read in `blockSize` blocks; all-zero
 * blocks are holes; a chunk of data blocks ends after block b when
 * `fingerprint(b) % avgBlocks === avgBlocks - 1` and it holds at least `minBlocks`, or when it
 * reaches `maxBlocks`. `fingerprint(b)` is the first four bytes, little-endian, of the SHA-256
 * of the block's bytes — fixed, so every machine cuts every version the same way.
 */
export const BlockCdcParamsSchema = z.strictObject({
  algorithm: z.literal('block-cdc'),
  blockSize: z
    .number()
    .int()
    .min(512)
    .max(1 << 20),
  minBlocks: z.number().int().min(1).max(4096),
  avgBlocks: z.number().int().min(1).max(4096),
  maxBlocks: z.number().int().min(1).max(4096),
});

/**
 * FastCDC (Xia et al., 2016) with normalised chunking over bytes, kept for comparison. The gear
 * table is derived from `gearSeed` (SHA-256 in counter mode), so it is fixed and documented.
 */
export const FastCdcParamsSchema = z.strictObject({
  algorithm: z.literal('fastcdc'),
  minSize: z
    .number()
    .int()
    .min(64)
    .max(1 << 24),
  avgSize: z
    .number()
    .int()
    .min(256)
    .max(1 << 24),
  maxSize: z
    .number()
    .int()
    .min(1024)
    .max(1 << 26),
  gearSeed: text({ min: 1, max: 64 }),
});

export const ChunkerParamsSchema = z.discriminatedUnion('algorithm', [
  BlockCdcParamsSchema,
  FastCdcParamsSchema,
]);
export type ChunkerParams = z.infer<typeof ChunkerParamsSchema>;
export type BlockCdcParams = z.infer<typeof BlockCdcParamsSchema>;
export type FastCdcParams = z.infer<typeof FastCdcParamsSchema>;

/** The part of a manifest that is signed. Its canonical JSON's SHA-256 is the manifest id. */
export const ManifestBodySchema = z.strictObject({
  type: z.literal('bulkhead.image-manifest'),
  formatVersion: z.literal(1),
  name: ImageNameSchema,
  version: ImageVersionSchema,
  /** Bytes of the raw image. */
  size: count,
  /** SHA-256 of the whole raw image. */
  sha256: DigestSchema,
  created: z.iso.datetime(),
  chunker: ChunkerParamsSchema,
  /** The binary chunk index (see src/image/chunk-index.ts), addressed by its SHA-256. */
  index: z.strictObject({
    digest: DigestSchema,
    bytes: count,
    entries: count,
  }),
  stats: z.strictObject({
    /** Data chunks (holes excluded). */
    chunks: count,
    /** Distinct data chunks. */
    uniqueChunks: count,
    /** Bytes of data chunks. */
    dataBytes: count,
    /** Bytes recorded as holes: all zero, never stored or sent. */
    zeroBytes: count,
  }),
  /** The version this one was built to follow; packs from it may exist. */
  parent: z
    .strictObject({
      version: ImageVersionSchema,
      manifest: DigestSchema,
    })
    .nullable(),
});
export type ManifestBody = z.infer<typeof ManifestBodySchema>;

export const SignatureSchema = z.strictObject({
  /** SHA-256 of the signer's raw 32-byte Ed25519 public key. */
  keyid: DigestSchema,
  /** Ed25519 signature, base64. */
  sig: z.string().regex(/^[A-Za-z0-9+/]{86}==$/, 'must be a base64 Ed25519 signature'),
});

export const SignedManifestSchema = z.strictObject({
  signed: ManifestBodySchema,
  signatures: z.array(SignatureSchema).max(16),
});
export type SignedManifest = z.infer<typeof SignedManifestSchema>;

/** Largest manifest a reader accepts; real ones are well under 4 KiB. */
export const MAX_MANIFEST_BYTES = 64 * 1024;

const packIndexHead = {
  type: z.literal('bulkhead.pack-index'),
  name: ImageNameSchema,
  version: ImageVersionSchema,
  from: ImageVersionSchema,
  /** Digest of the pack file, so a reader can tell a stale one. */
  pack: z.strictObject({ bytes: count, sha256: DigestSchema }),
};

const frameHead = {
  /** Where the frame starts in the pack file, and its compressed bytes. */
  offset: count,
  bytes: count,
  /** Uncompressed bytes of the frame: the chunks' bytes, concatenated in this order. */
  rawBytes: count,
};

/** Hex digits of a chunk digest that name a reference: unambiguous among a seed's chunks. */
export const REF_PREFIX_HEX = 16;

/**
 * Index of a pack: the new chunks of `version` relative to `from`, as zstd frames in one file.
 * Not signed — every chunk taken from a pack is checked against the signed index — so a bad
 * pack can only cost bandwidth, never corrupt an image.
 *
 * Format 1 names each frame's chunks by digest. Format 2 names them by their place in the
 * version's signed chunk index (`at`: each entry's position minus the previous one's, the first
 * counted from -1), and adds `refs`: chunks of `from`, by the first REF_PREFIX_HEX hex digits of
 * their digest, whose raw bytes concatenated in that order are the frame's zstd dictionary
 * (delta encoding against what a holder of `from` has). Readers of format 1 do not parse a
 * format 2 index and fetch the chunks one by one instead.
 */
export const PackIndexSchema = z.discriminatedUnion('formatVersion', [
  z.strictObject({
    ...packIndexHead,
    formatVersion: z.literal(1),
    frames: z
      .array(z.strictObject({ ...frameHead, chunks: z.array(DigestSchema).max(1 << 16) }))
      .max(1 << 20),
  }),
  z.strictObject({
    ...packIndexHead,
    formatVersion: z.literal(2),
    frames: z
      .array(
        z.strictObject({
          ...frameHead,
          at: z.array(z.number().int().min(1).max(Number.MAX_SAFE_INTEGER)).max(1 << 16),
          refs: z.array(z.string().regex(new RegExp(`^[0-9a-f]{${REF_PREFIX_HEX}}$`))).max(1 << 16),
        }),
      )
      .max(1 << 20),
  }),
]);
export type PackIndex = z.infer<typeof PackIndexSchema>;

/** A frame as readers use it, whatever the format: its chunks by digest, its references. */
export interface PackFrame {
  offset: number;
  bytes: number;
  rawBytes: number;
  chunks: string[];
  /** Digest prefixes (REF_PREFIX_HEX) of the chunks of `from` it was compressed against. */
  refs: string[];
}
export const MAX_PACK_INDEX_BYTES = 64 * 1024 * 1024;

/** `catalog.json` at a store's root: what the store holds, for listing over plain HTTP. */
export const CatalogSchema = z.strictObject({
  type: z.literal('bulkhead.catalog'),
  images: z.array(
    z.strictObject({
      name: ImageNameSchema,
      version: ImageVersionSchema,
      manifest: DigestSchema,
      size: count,
      created: z.iso.datetime(),
      parent: ImageVersionSchema.nullable(),
      packs: z.array(ImageVersionSchema),
    }),
  ),
});
export type Catalog = z.infer<typeof CatalogSchema>;
export const MAX_CATALOG_BYTES = 16 * 1024 * 1024;
