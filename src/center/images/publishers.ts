import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import { keyIdOf, type PublicKeyInfo } from '../../signing/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  type CreatePublisherRequest,
  type Publisher,
} from '../../protocol/index.ts';
import { writeAudit, type Actor } from '../admin/audit.ts';
import { constraintViolation, type Database, type Row } from '../db/index.ts';

/** A publisher key as the API shows it. */
export function presentPublisher(row: Row<'publisher_keys'>): Publisher {
  return {
    keyid: row.keyid,
    name: row.name,
    publicKey: row.public_key,
    createdAt: Number(row.created_at),
    revokedAt: row.revoked_at === null ? null : Number(row.revoked_at),
  };
}

export async function listPublishers(db: Kysely<Database>): Promise<Publisher[]> {
  const rows = await db.selectFrom('publisher_keys').selectAll().orderBy('name').execute();
  return rows.map(presentPublisher);
}

/**
 * Reads an Ed25519 public key in PEM form.
 * @throws BulkheadError `ERR_VALIDATION` naming `field` when it is not one.
 */
export function parsePublisherKey(pem: string, field = 'body.publicKey'): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `${field}: not a public key in PEM form ("-----BEGIN PUBLIC KEY-----" …)`,
      { cause: err },
    );
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `${field}: a ${key.asymmetricKeyType ?? 'unknown'} key; publishers sign with Ed25519`,
    );
  }
  return key;
}

/**
 * Trusts a publisher key: manifests it signs may be uploaded from now on.
 * @throws BulkheadError `ERR_VALIDATION` for a key that is not Ed25519 PEM, `ERR_KEY_EXISTS`
 *   when the key (revoked or not) or the name is already there.
 */
export async function createPublisher(
  db: Kysely<Database>,
  actor: Actor & { userId?: string | null },
  input: CreatePublisherRequest,
  at: number,
): Promise<Publisher> {
  const key = parsePublisherKey(input.publicKey);
  const row: Row<'publisher_keys'> = {
    keyid: keyIdOf(key),
    name: input.name,
    // Stored in one canonical form, whatever spacing the caller's PEM had.
    public_key: key.export({ type: 'spki', format: 'pem' }).toString(),
    created_by: actor.userId ?? null,
    created_at: at,
    revoked_at: null,
  };
  try {
    await db.transaction().execute(async (trx) => {
      await trx.insertInto('publisher_keys').values(row).execute();
      await writeAudit(trx, {
        actor,
        action: 'publisher.create',
        targetType: 'publisher',
        targetId: row.keyid,
        before: null,
        after: presentPublisher(row),
        at,
      });
    });
  } catch (err) {
    if (constraintViolation(err) === 'unique') {
      const existing = await db
        .selectFrom('publisher_keys')
        .select(['keyid', 'name', 'revoked_at'])
        .where((eb) => eb.or([eb('keyid', '=', row.keyid), eb('name', '=', row.name)]))
        .executeTakeFirst();
      const message =
        existing?.keyid === row.keyid
          ? `this key is already registered as "${existing.name}"${existing.revoked_at === null ? '' : ' and was revoked; revocation is permanent, use a new key'}`
          : `a publisher named "${input.name}" already exists`;
      throw new BulkheadError(ErrorCodes.KEY_EXISTS, message, { cause: err });
    }
    throw err;
  }
  return presentPublisher(row);
}

/**
 * Revokes a publisher key: it verifies no upload from now on (versions it signed before stay).
 * Revoking a revoked key changes nothing.
 * @throws BulkheadError `ERR_NOT_FOUND` for an unknown key id.
 */
export async function revokePublisher(
  db: Kysely<Database>,
  actor: Actor,
  keyid: string,
  at: number,
): Promise<Publisher> {
  return db.transaction().execute(async (trx) => {
    const row = await trx
      .selectFrom('publisher_keys')
      .selectAll()
      .where('keyid', '=', keyid)
      .executeTakeFirst();
    if (!row) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no publisher key ${keyid}`);
    if (row.revoked_at !== null) return presentPublisher(row);
    const after = { ...row, revoked_at: at };
    await trx
      .updateTable('publisher_keys')
      .set({ revoked_at: at })
      .where('keyid', '=', keyid)
      .execute();
    await writeAudit(trx, {
      actor,
      action: 'publisher.revoke',
      targetType: 'publisher',
      targetId: keyid,
      before: presentPublisher(row),
      after: presentPublisher(after),
      at,
    });
    return presentPublisher(after);
  });
}

/** The keys uploads may be signed with (not revoked), and the ids of the revoked ones. */
export async function publisherTrust(
  db: Kysely<Database>,
): Promise<{ trusted: PublicKeyInfo[]; revoked: Set<string> }> {
  const rows = await db
    .selectFrom('publisher_keys')
    .select(['keyid', 'public_key', 'revoked_at'])
    .execute();
  const trusted: PublicKeyInfo[] = [];
  const revoked = new Set<string>();
  for (const r of rows) {
    if (r.revoked_at !== null) revoked.add(r.keyid);
    else trusted.push({ keyid: r.keyid, key: createPublicKey(r.public_key) });
  }
  return { trusted, revoked };
}
