import {
  createCipheriv,
  createHash,
  createDecipheriv,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

/*
 * A data key wrapped for one device (docs/keys.md, "Wrapping"): HPKE base mode in spirit, built
 * from node:crypto's primitives.
 *
 *   eph          = an X25519 key pair used for this one wrapping
 *   shared       = X25519(eph.private, device.encryptionPublic)
 *   info         = "bulkhead wrapped-data-key v1" 0x00 deviceId 0x00 profileId
 *   salt         = eph.public (32 raw bytes) || device.encryptionPublic (32 raw bytes)
 *   k            = HKDF-SHA256(ikm = shared, salt, info, 32 bytes)
 *   ct || tag    = AES-256-GCM(k, nonce (12 bytes), plaintext = data key, aad = info)
 *   wire form    = "bhwk1." base64url(eph.public) "." base64url(nonce) "." base64url(ct || tag)
 *
 * The info binds the device and the profile: a wrapped key copied into another device's or
 * another profile's document does not open. The salt binds both public keys (as HPKE's
 * key schedule does), so the ciphertext belongs to that one recipient key.
 */

const PREFIX = 'bhwk1';
const INFO_LABEL = 'bulkhead wrapped-data-key v1';

/** Who a wrapped data key belongs to; both are bound into the wrapping. */
export interface WrapContext {
  deviceId: string;
  profileId: string;
}

/** Optional fixed randomness, so that the same key wraps to the same text (see Center). */
export interface WrapRandomness {
  /** 32 bytes: the ephemeral X25519 private key. */
  ephemeralSeed: Buffer;
  /** 12 bytes: the AES-GCM nonce. */
  nonce: Buffer;
}

const info = (ctx: WrapContext) =>
  Buffer.concat([
    Buffer.from(INFO_LABEL),
    Buffer.from([0]),
    Buffer.from(ctx.deviceId),
    Buffer.from([0]),
    Buffer.from(ctx.profileId),
  ]);

/** The raw 32 bytes of an X25519 public key. */
export function rawX25519(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' }).subarray(-32);
}

/** An X25519 public key from SPKI PEM or the base64 of its raw 32 bytes. */
export function parseEncryptionPublicKey(text: string): KeyObject {
  const invalid = (cause?: unknown) =>
    new BulkheadError(
      ErrorCodes.KEY_INVALID,
      'encryptionKey must be an X25519 public key: SPKI PEM, or base64 of the raw 32 bytes',
      cause === undefined ? {} : { cause },
    );
  let key: KeyObject;
  try {
    if (text.includes('-----BEGIN')) key = createPublicKey(text);
    else {
      const raw = Buffer.from(text.trim(), 'base64');
      if (!/^[A-Za-z0-9+/]{43}=?$/.test(text.trim()) || raw.length !== 32) throw invalid();
      key = x25519PublicFromRaw(raw);
    }
  } catch (err) {
    if (err instanceof BulkheadError) throw err;
    throw invalid(err);
  }
  if (key.asymmetricKeyType !== 'x25519') throw invalid();
  return key;
}

function x25519PublicFromRaw(raw: Buffer): KeyObject {
  return createPublicKey({
    key: { kty: 'OKP', crv: 'X25519', x: raw.toString('base64url') },
    format: 'jwk',
  });
}

/** An X25519 private key from its raw 32 bytes. */
export function x25519PrivateFromSeed(seed: Buffer): KeyObject {
  // PKCS#8 DER of an X25519 private key: a fixed 16-byte prefix, then the 32 raw bytes.
  const prefix = Buffer.from('302e020100300506032b656e04220420', 'hex');
  return createPrivateKey({ key: Buffer.concat([prefix, seed]), format: 'der', type: 'pkcs8' });
}

/**
 * Wraps `dataKey` for the device whose X25519 public key is `recipient`.
 * @param randomness fixed ephemeral key and nonce; fresh random ones when omitted.
 */
export function wrapDataKey(
  recipient: KeyObject,
  dataKey: Buffer,
  ctx: WrapContext,
  randomness?: WrapRandomness,
): string {
  const eph = x25519PrivateFromSeed(randomness?.ephemeralSeed ?? randomBytes(32));
  const ephPublic = rawX25519(createPublicKey(eph));
  const shared = diffieHellman({ privateKey: eph, publicKey: recipient });
  const k = Buffer.from(
    hkdfSync('sha256', shared, Buffer.concat([ephPublic, rawX25519(recipient)]), info(ctx), 32),
  );
  const nonce = randomness?.nonce ?? randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', k, nonce);
  cipher.setAAD(info(ctx));
  const ct = Buffer.concat([cipher.update(dataKey), cipher.final(), cipher.getAuthTag()]);
  return [PREFIX, ephPublic, nonce, ct]
    .map((p) => (typeof p === 'string' ? p : p.toString('base64url')))
    .join('.');
}

/**
 * Opens a wrapped data key with the device's X25519 private key.
 * @throws BulkheadError ERR_DATA_KEY_UNWRAP when the text is malformed, was wrapped for another
 *   device or profile, or was changed on the way.
 */
export function unwrapDataKey(deviceKey: KeyObject, wrapped: string, ctx: WrapContext): Buffer {
  const refuse = (why: string, cause?: unknown) =>
    new BulkheadError(
      ErrorCodes.DATA_KEY_UNWRAP,
      `the wrapped data key of profile ${ctx.profileId} does not open on this device: ${why}`,
      {
        ...(cause === undefined ? {} : { cause }),
        hint: 'the document was wrapped for another device or profile, or altered; if this device was enrolled again, Center must send keys wrapped for its new key',
      },
    );
  const parts = wrapped.split('.');
  if (parts.length !== 4 || parts[0] !== PREFIX) throw refuse(`not a ${PREFIX} wrapped key`);
  const [ephRaw, nonce, sealed] = parts.slice(1).map((p) => Buffer.from(p, 'base64url')) as [
    Buffer,
    Buffer,
    Buffer,
  ];
  if (ephRaw.length !== 32 || nonce.length !== 12 || sealed.length < 17) {
    throw refuse('its parts have the wrong lengths');
  }
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: deviceKey, publicKey: x25519PublicFromRaw(ephRaw) });
  } catch (err) {
    throw refuse('its ephemeral key is not a usable X25519 key', err);
  }
  const recipient = rawX25519(createPublicKey(deviceKey));
  const k = Buffer.from(
    hkdfSync('sha256', shared, Buffer.concat([ephRaw, recipient]), info(ctx), 32),
  );
  try {
    const decipher = createDecipheriv('aes-256-gcm', k, nonce);
    decipher.setAAD(info(ctx));
    decipher.setAuthTag(sealed.subarray(-16));
    return Buffer.concat([decipher.update(sealed.subarray(0, -16)), decipher.final()]);
  } catch (err) {
    throw refuse('authentication failed', err);
  }
}

/**
 * The digest a desired state signs in place of a wrapped key (`wrappedDataKeyDigest`): SHA-256
 * of the wrapped key's text (UTF-8), lower-case hex.
 */
export function wrappedKeyDigest(wrapped: string): string {
  return createHash('sha256').update(wrapped, 'utf8').digest('hex');
}
