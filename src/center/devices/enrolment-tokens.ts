import { hash, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../db/index.ts';
import { newId } from '../db/index.ts';

/** SHA-256 (hex) of an enrolment token: what the database keeps instead of the token. */
export function hashEnrolmentToken(token: string): string {
  return hash('sha256', token);
}

export interface CreateEnrolmentTokenInput {
  /** The group enrolled devices join. */
  groupId: string;
  /** Enrolments allowed (1 for a one-time token). */
  uses: number;
  /** After this the token is refused. */
  expiresAt: Date;
  now: Date;
  /** The admin user creating it, if any. */
  createdBy?: string | null;
  note?: string;
}

/**
 * Creates an enrolment token for a group. Returns the token itself, once: only its SHA-256 is
 * stored, so a copy of the database cannot enrol devices. The token is `bhe_` and 256 random
 * bits, base64url, so a hash without salt or stretching is enough (nothing to guess).
 *
 * @throws RangeError for a non-positive use count or an expiry not after `now`; the database's
 *   foreign-key error for an unknown group.
 */
export async function createEnrolmentToken(
  db: Kysely<Database>,
  input: CreateEnrolmentTokenInput,
): Promise<{ id: string; token: string; expiresAt: number; uses: number }> {
  if (!Number.isSafeInteger(input.uses) || input.uses < 1) {
    throw new RangeError(`an enrolment token needs at least one use, not ${input.uses}`);
  }
  const nowMs = input.now.getTime();
  const expiresAt = input.expiresAt.getTime();
  if (!(expiresAt > nowMs)) throw new RangeError('an enrolment token must expire in the future');
  // The prefix names what the secret is (for secret scanners and people) and keeps it from
  // starting with `-`, which a command line would read as an option.
  const token = `bhe_${randomBytes(32).toString('base64url')}`;
  const id = newId(nowMs);
  await db
    .insertInto('enrolment_tokens')
    .values({
      id,
      token_hash: hashEnrolmentToken(token),
      group_id: input.groupId,
      uses_left: input.uses,
      expires_at: expiresAt,
      created_by: input.createdBy ?? null,
      note: input.note ?? '',
      created_at: nowMs,
    })
    .execute();
  return { id, token, expiresAt, uses: input.uses };
}
