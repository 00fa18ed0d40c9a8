import { hash, type KeyObject } from 'node:crypto';
import { canonicalJson, signPayload, verifyPayload, type PublicKeyInfo } from '../signing/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  MAX_MANIFEST_BYTES,
  SignedManifestSchema,
  type ManifestBody,
  type SignedManifest,
} from '../protocol/index.ts';

const DOMAIN = 'image-manifest';

/** The manifest id: SHA-256 of the canonical JSON of its signed body. */
export function manifestId(body: ManifestBody): string {
  return hash('sha256', canonicalJson(body));
}

export function signManifest(
  body: ManifestBody,
  key: { key: KeyObject; keyid: string },
): SignedManifest {
  return {
    signed: body,
    signatures: [{ keyid: key.keyid, sig: signPayload(DOMAIN, canonicalJson(body), key.key) }],
  };
}

export function encodeManifest(manifest: SignedManifest): Buffer {
  return Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`, 'utf8');
}

/**
 * Parses manifest bytes from an untrusted source and checks them: well-formed, the expected
 * name and version (a mirror must not pass one version off as another), and signed by at least
 * one trusted key. Returns the verified body and its id.
 */
export function verifyManifest(
  bytes: Uint8Array,
  trusted: readonly PublicKeyInfo[],
  expect?: { name: string; version: string },
): { body: ManifestBody; id: string } {
  const manifest = parseManifest(bytes);
  const { signed, signatures } = manifest;
  if (expect && (signed.name !== expect.name || signed.version !== expect.version)) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MISMATCH,
      `asked for ${expect.name}@${expect.version} but the store's manifest is for ${signed.name}@${signed.version}`,
      { hint: 'the store or mirror is misconfigured or lying; use another one' },
    );
  }
  if (signatures.length === 0) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_UNSIGNED,
      `manifest of ${signed.name}@${signed.version} is not signed`,
      {
        hint: 're-import the image with --key',
      },
    );
  }
  const payload = canonicalJson(signed);
  let sawTrustedKey = false;
  for (const s of signatures) {
    const key = trusted.find((k) => k.keyid === s.keyid);
    if (!key) continue;
    sawTrustedKey = true;
    if (verifyPayload(DOMAIN, payload, s.sig, key.key))
      return { body: signed, id: manifestId(signed) };
  }
  if (!sawTrustedKey) {
    throw new BulkheadError(
      ErrorCodes.UNTRUSTED_KEY,
      `manifest of ${signed.name}@${signed.version} is signed by key ${signatures.map((s) => s.keyid.slice(0, 16)).join(', ')}, which is not trusted`,
      { hint: 'pass the publisher public key with --trust' },
    );
  }
  throw new BulkheadError(
    ErrorCodes.MANIFEST_SIGNATURE,
    `manifest of ${signed.name}@${signed.version} has a bad signature: it was altered after signing`,
    { hint: 'do not use this store or mirror; re-publish the image from a trusted source' },
  );
}

/**
 * The signatures of a manifest that verify with one of the `trusted` keys: who vouches for it.
 * (`verifyManifest` stops at the first; Center keeps them all, to judge the version again when a
 * key is revoked.)
 */
export function trustedSignatures(
  manifest: SignedManifest,
  trusted: readonly PublicKeyInfo[],
): SignedManifest['signatures'] {
  const payload = canonicalJson(manifest.signed);
  return manifest.signatures.filter((s) => {
    const key = trusted.find((k) => k.keyid === s.keyid);
    return key !== undefined && verifyPayload(DOMAIN, payload, s.sig, key.key);
  });
}

/** Parses without checking signatures (for `inspect`); throws ERR_MANIFEST_MALFORMED. */
export function parseManifest(bytes: Uint8Array): SignedManifest {
  if (bytes.byteLength > MAX_MANIFEST_BYTES) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MALFORMED,
      `manifest is ${bytes.byteLength} bytes, more than the ${MAX_MANIFEST_BYTES} allowed`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MALFORMED,
      'manifest is not valid JSON (truncated or garbage)',
      {
        cause: err,
        hint: 'the store holds a damaged manifest; re-import the image or use another mirror',
      },
    );
  }
  const parsed = SignedManifestSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MALFORMED,
      `manifest is malformed: ${issue.path.join('.') || '(root)'}: ${issue.message}`,
      {
        cause: parsed.error,
        hint: 'the store holds a damaged manifest; re-import the image or use another mirror',
      },
    );
  }
  return parsed.data;
}
