import { z } from 'zod';

/**
 * Image names and versions become path segments in a store (`manifests/<name>/<version>.json`)
 * that any static HTTP server may serve, so they are restricted to a safe alphabet: they start
 * with a letter or digit (no `.` or `..`), contain no `/` or `\`, and are at most 128 bytes.
 */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/;

export const ImageNameSchema = z
  .string()
  .regex(
    NAME_PATTERN,
    'must be 1-128 characters of A-Z a-z 0-9 . _ + -, starting with a letter or digit',
  );

export const ImageVersionSchema = ImageNameSchema;

/** A SHA-256 digest in lower-case hex: the identity of a chunk, an index or a manifest. */
export const DigestSchema = z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 lower-case hex digits');

export function isValidName(value: string): boolean {
  return NAME_PATTERN.test(value);
}

export function isValidDigest(value: string): boolean {
  return /^[0-9a-f]{64}$/.test(value);
}
