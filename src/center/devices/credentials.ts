import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { signPayload, verifyPayload, canonicalJson } from '../../signing/index.ts';
import { BulkheadError, DEVICE_SIGNATURE_DOMAINS, ErrorCodes } from '../../protocol/index.ts';

/*
 * Device credentials, stateless so that any Center replica can check them without the
 * database: a challenge and a bearer token are each `base64url(canonical JSON).signature`,
 * signed by Center's Ed25519 key under their own domain, so neither can pass for the other
 * (nor for a desired state or a manifest).
 *
 * A challenge is not remembered, so within its short life a captured (challenge, signature)
 * pair could be exchanged again; the pair only ever travels inside TLS, and what it buys is a
 * token the same device could get anyway.
 */

/** Domains of Center's and the device's signatures (see `signPayload`), as the protocol names them. */
export const DOMAINS = DEVICE_SIGNATURE_DOMAINS;

export const CHALLENGE_TTL_MS = 60_000;
export const TOKEN_TTL_MS = 15 * 60_000;
/** Verified tokens remembered (about 200 bytes each). */
const VERIFIED_TOKEN_CACHE = 100_000;

interface Signer {
  key: KeyObject;
  keyid: string;
}

function seal(domain: string, body: object, signer: Signer): string {
  const payload = Buffer.from(canonicalJson(body)).toString('base64url');
  const sig = Buffer.from(signPayload(domain, payload, signer.key), 'base64').toString('base64url');
  return `${payload}.${sig}`;
}

/** The body of a sealed string if Center signed it under `domain`, else undefined. */
function open(domain: string, sealed: string, publicKey: KeyObject): unknown {
  const dot = sealed.indexOf('.');
  if (dot <= 0 || dot !== sealed.lastIndexOf('.')) return undefined;
  const payload = sealed.slice(0, dot);
  const sig = Buffer.from(sealed.slice(dot + 1), 'base64url');
  if (sig.length !== 64) return undefined;
  if (!verifyPayload(domain, payload, sig.toString('base64'), publicKey)) return undefined;
  try {
    return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Issues and checks device challenges and bearer tokens with Center's key. */
export class DeviceCredentials {
  readonly #signer: Signer;
  readonly #publicKey: KeyObject;
  readonly #now: () => Date;
  /**
   * Tokens whose signature already verified, by token. Verifying Ed25519 costs ~150 µs, most
   * of a 304's CPU; a device polls several times with one token, so remembering the outcome
   * (never a failure) saves most of it. Expiry is still checked on every use.
   */
  readonly #verifiedTokens = new Map<string, { sub: string; exp: number }>();

  constructor(signer: Signer, now: () => Date) {
    this.#signer = signer;
    this.#publicKey = createPublicKey(signer.key);
    this.#now = now;
  }

  /** A fresh challenge for a device to sign; valid `CHALLENGE_TTL_MS`. */
  issueChallenge(deviceId: string): { challenge: string; expiresAt: number } {
    const expiresAt = this.#now().getTime() + CHALLENGE_TTL_MS;
    const body = { sub: deviceId, exp: expiresAt, nonce: randomBytes(16).toString('base64url') };
    return { challenge: seal(DOMAINS.challenge, body, this.#signer), expiresAt };
  }

  /**
   * Checks that Center issued `challenge` for `deviceId` and that it has not expired.
   * @throws BulkheadError `ERR_DEVICE_CHALLENGE_INVALID` otherwise.
   */
  checkChallenge(challenge: string, deviceId: string): void {
    const body = open(DOMAINS.challenge, challenge, this.#publicKey);
    if (!isRecord(body) || typeof body['exp'] !== 'number') {
      throw challengeError('the challenge was not issued by this Center');
    }
    if (body['sub'] !== deviceId) throw challengeError('the challenge is for another device');
    if (body['exp'] <= this.#now().getTime()) throw challengeError('the challenge has expired');
  }

  /** A bearer token naming the device; valid `TOKEN_TTL_MS`. */
  issueToken(deviceId: string): { token: string; expiresAt: number } {
    const nowMs = this.#now().getTime();
    const expiresAt = nowMs + TOKEN_TTL_MS;
    return {
      token: seal(DOMAINS.token, { sub: deviceId, iat: nowMs, exp: expiresAt }, this.#signer),
      expiresAt,
    };
  }

  /**
   * The device a bearer token names.
   * @throws BulkheadError `ERR_UNAUTHENTICATED` for a forged, malformed or expired token.
   */
  deviceOfToken(token: string): string {
    let verified = this.#verifiedTokens.get(token);
    if (verified === undefined) {
      const body = open(DOMAINS.token, token, this.#publicKey);
      if (!isRecord(body) || typeof body['sub'] !== 'string' || typeof body['exp'] !== 'number') {
        throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device token is not valid');
      }
      verified = { sub: body['sub'], exp: body['exp'] };
      // Oldest first out: Map keeps insertion order.
      if (this.#verifiedTokens.size >= VERIFIED_TOKEN_CACHE) {
        this.#verifiedTokens.delete(this.#verifiedTokens.keys().next().value as string);
      }
      this.#verifiedTokens.set(token, verified);
    }
    if (verified.exp <= this.#now().getTime()) {
      this.#verifiedTokens.delete(token);
      throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the device token has expired', {
        hint: 'get a new token with a fresh challenge',
      });
    }
    return verified.sub;
  }
}

function challengeError(message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.DEVICE_CHALLENGE_INVALID, message, {
    hint: 'ask for a new challenge and sign it with the device key',
  });
}
