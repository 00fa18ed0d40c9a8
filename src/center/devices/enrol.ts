import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import { constraintViolation, newId, type Database } from '../db/index.ts';
import { BulkheadError, ErrorCodes, type EnrolRequest } from '../../protocol/index.ts';
import { parseEncryptionPublicKey, rawX25519 } from '../../signing/index.ts';
import { hashEnrolmentToken } from './enrolment-tokens.ts';

/** The raw 32 bytes of an Ed25519 public key, as the `devices.public_key` column stores them. */
export function rawPublicKey(key: KeyObject): Buffer {
  return key.export({ type: 'spki', format: 'der' }).subarray(-32);
}

/** An Ed25519 public key from SPKI PEM or the base64 of its raw 32 bytes. */
export function parseDevicePublicKey(text: string): KeyObject {
  const invalid = (cause?: unknown) =>
    new BulkheadError(
      ErrorCodes.KEY_INVALID,
      'publicKey must be an Ed25519 public key: SPKI PEM, or base64 of the raw 32 bytes',
      { cause },
    );
  let key: KeyObject;
  try {
    if (text.includes('-----BEGIN')) {
      key = createPublicKey(text);
    } else {
      if (!/^[A-Za-z0-9+/]{43}=?$/.test(text.trim())) throw invalid();
      const raw = Buffer.from(text.trim(), 'base64');
      if (raw.length !== 32) throw invalid();
      key = createPublicKey({
        key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') },
        format: 'jwk',
      });
    }
  } catch (err) {
    if (err instanceof BulkheadError) throw err;
    throw invalid(err);
  }
  if (key.asymmetricKeyType !== 'ed25519') throw invalid();
  return key;
}

/**
 * Enrols a device: spends one use of the token and creates the device in the token's group,
 * in one transaction. The use is spent by a conditional UPDATE (`uses_left > 0` and not
 * expired) whose row count says whether this request won it, so two devices racing for the
 * last use cannot both get it, on either database.
 *
 * @throws BulkheadError `ERR_KEY_INVALID` for a malformed key; `ERR_ENROLMENT_TOKEN_REFUSED`
 *   for an unknown, exhausted or expired token; `ERR_DEVICE_EXISTS` when the key is already
 *   enrolled (the use is not spent then).
 */
export async function enrolDevice(
  db: Kysely<Database>,
  request: EnrolRequest,
  now: Date,
): Promise<{ deviceId: string }> {
  const publicKey = rawPublicKey(parseDevicePublicKey(request.publicKey)).toString('base64');
  const encryptionKey = rawX25519(parseEncryptionPublicKey(request.encryptionKey)).toString(
    'base64',
  );
  const nowMs = now.getTime();
  const tokenHash = hashEnrolmentToken(request.token);
  try {
    return await db.transaction().execute(async (tx) => {
      const spent = await tx
        .updateTable('enrolment_tokens')
        .set((eb) => ({ uses_left: eb('uses_left', '-', 1) }))
        .where('token_hash', '=', tokenHash)
        .where('uses_left', '>', 0)
        .where('expires_at', '>', nowMs)
        .executeTakeFirst();
      if (Number(spent.numUpdatedRows) !== 1) {
        throw await refusal(tx, tokenHash, nowMs);
      }
      const token = await tx
        .selectFrom('enrolment_tokens')
        .select('group_id')
        .where('token_hash', '=', tokenHash)
        .executeTakeFirstOrThrow();
      const deviceId = newId(nowMs);
      await tx
        .insertInto('devices')
        .values({
          id: deviceId,
          name: request.name ?? request.inventory.hostname,
          public_key: publicKey,
          encryption_key: encryptionKey,
          inventory: JSON.stringify(request.inventory),
          group_id: token.group_id,
          current_versions: '{}',
          state: 'active',
          enrolled_at: nowMs,
          last_contact_at: nowMs,
          updated_at: nowMs,
        })
        .execute();
      return { deviceId };
    });
  } catch (err) {
    if (constraintViolation(err) === 'unique') {
      throw new BulkheadError(ErrorCodes.DEVICE_EXISTS, 'a device with this key is enrolled', {
        cause: err,
        hint: 'generate a new key pair for a new enrolment',
      });
    }
    throw err;
  }
}

/** Why a token could not be spent, for a message an installer can act on. */
async function refusal(
  tx: Kysely<Database>,
  tokenHash: string,
  nowMs: number,
): Promise<BulkheadError> {
  const row = await tx
    .selectFrom('enrolment_tokens')
    .select(['uses_left', 'expires_at'])
    .where('token_hash', '=', tokenHash)
    .executeTakeFirst();
  const why =
    row === undefined
      ? 'the enrolment token is not known'
      : row.expires_at <= nowMs
        ? 'the enrolment token has expired'
        : 'the enrolment token has been used up';
  return new BulkheadError(ErrorCodes.ENROLMENT_TOKEN_REFUSED, why, {
    hint: 'ask an administrator for a new enrolment token',
  });
}
