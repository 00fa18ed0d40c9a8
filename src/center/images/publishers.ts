import { createPublicKey, type KeyObject } from 'node:crypto';
import type { Kysely, Transaction } from 'kysely';
import { keyIdOf, type PublicKeyInfo } from '../../signing/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  SignatureSchema,
  type CreatePublisherRequest,
  type Publisher,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { markChanged, runCommand, type CommandDeps } from '../changes/index.ts';
import { refuseViolation, type Database, type Row } from '../db/index.ts';

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
  deps: CommandDeps,
  actor: Actor & { userId?: string | null },
  input: CreatePublisherRequest,
): Promise<Publisher> {
  const { db, nowMs: at } = deps;
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
  const publisher = presentPublisher(row);
  const create = () =>
    runCommand(deps, actor, PUBLISHER('create', row.keyid), async (trx) => {
      await trx.insertInto('publisher_keys').values(row).execute();
      await markChanged(trx, 'all', at);
      return { result: publisher, before: null, after: publisher };
    });
  return refuseViolation('unique', create, async (cause) => {
    const existing = await db
      .selectFrom('publisher_keys')
      .select(['keyid', 'name', 'revoked_at'])
      .where((eb) => eb.or([eb('keyid', '=', row.keyid), eb('name', '=', row.name)]))
      .executeTakeFirst();
    const message =
      existing?.keyid === row.keyid
        ? `this key is already registered as "${existing.name}"${existing.revoked_at === null ? '' : ' and was revoked; revocation is permanent, use a new key'}`
        : `a publisher named "${input.name}" already exists`;
    return new BulkheadError(ErrorCodes.KEY_EXISTS, message, { cause });
  });
}

/**
 * Revokes a publisher key: it verifies no upload from now on (versions it signed before stay).
 * Revoking a revoked key changes nothing.
 * @throws BulkheadError `ERR_NOT_FOUND` for an unknown key id.
 */
export async function revokePublisher(
  deps: CommandDeps,
  actor: Actor,
  keyid: string,
): Promise<Publisher> {
  return runCommand(deps, actor, PUBLISHER('revoke', keyid), async (trx, at) => {
    const row = await trx
      .selectFrom('publisher_keys')
      .selectAll()
      .where('keyid', '=', keyid)
      .executeTakeFirst();
    if (!row) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no publisher key ${keyid}`);
    if (row.revoked_at !== null) return { result: presentPublisher(row), unchanged: true };
    const after = { ...row, revoked_at: at };
    await trx
      .updateTable('publisher_keys')
      .set({ revoked_at: at })
      .where('keyid', '=', keyid)
      .execute();
    await markChanged(trx, 'all', at);
    const result = presentPublisher(after);
    return { result, before: presentPublisher(row), after: result };
  });
}

/*
 * Every desired state lists the trusted publisher keys, but its revision follows the device and
 * its images, not the keys: so a change of keys marks every device changed (one statement; keys
 * change rarely).
 */
const PUBLISHER = (verb: string, keyid: string) => ({
  action: `publisher.${verb}`,
  target: 'publisher',
  id: keyid,
});

/**
 * Refuses to let a version reach devices (publish, release, roll out) when no key Center still
 * trusts vouches for it: every publisher key whose signature verified at upload has been revoked
 * since. A revoked key is one an administrator no longer believes in (lost, leaked), so what it
 * alone signed, not yet in use, must not go out; devices would refuse its manifest anyway, as
 * the desired state lists only trusted keys. What it signed that is already released stays, as
 * revoking promises.
 *
 * @throws BulkheadError `ERR_UNTRUSTED_KEY` naming the revoked keys and what to do.
 */
export async function requireTrustedSigner(
  db: Kysely<Database> | Transaction<Database>,
  label: string,
  version: Pick<Row<'image_versions'>, 'signatures'>,
  action: 'published' | 'released' | 'rolled out',
): Promise<void> {
  const parsed = SignatureSchema.array().safeParse(JSON.parse(version.signatures));
  const keyids = parsed.success ? [...new Set(parsed.data.map((s) => s.keyid))] : [];
  const signers =
    keyids.length === 0
      ? []
      : await db
          .selectFrom('publisher_keys')
          .select(['keyid', 'name', 'revoked_at'])
          .where('keyid', 'in', keyids)
          .orderBy('keyid')
          .execute();
  if (signers.some((k) => k.revoked_at === null)) return;
  const revoked = signers.filter((k) => k.revoked_at !== null);
  const named =
    revoked.length === 0
      ? 'no publisher key Center trusts'
      : `only by publisher key${revoked.length > 1 ? 's' : ''} ${revoked
          .map(
            (k) =>
              `${k.keyid.slice(0, 16)}… ("${k.name}", revoked ${new Date(Number(k.revoked_at)).toISOString()})`,
          )
          .join(', ')}`;
  throw new BulkheadError(
    ErrorCodes.UNTRUSTED_KEY,
    `${label} is signed ${named}, so it cannot be ${action}: sign the image with a trusted publisher key and push it as a new version`,
    { details: { revokedKeys: revoked.map((k) => k.keyid) } },
  );
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
