import type { Kysely } from 'kysely';
import type { CreateEnrolmentTokenRequest, EnrolmentToken } from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import type { Caller } from '../admin/credentials.ts';
import { runCommand, type CommandDeps } from '../changes/index.ts';
import { hasRow, type Database, type Row } from '../db/index.ts';
import { createEnrolmentToken } from '../devices/index.ts';
import { badReference, notFound } from './common.ts';

function presentToken(row: Row<'enrolment_tokens'>): EnrolmentToken {
  return {
    id: row.id,
    groupId: row.group_id,
    usesLeft: row.uses_left,
    expiresAt: Number(row.expires_at),
    createdBy: row.created_by,
    note: row.note,
    createdAt: Number(row.created_at),
  };
}

/**
 * Creates an enrolment token for a group; the secret is in the answer only (the database
 * keeps its hash, the audit trail not even that).
 * @throws BulkheadError `ERR_VALIDATION` (body.groupId) for a missing group.
 */
export async function issueEnrolmentToken(
  deps: CommandDeps,
  caller: Caller,
  input: CreateEnrolmentTokenRequest,
): Promise<EnrolmentToken & { token: string }> {
  return runCommand(deps, caller, TOKEN('create'), async (trx, at) => {
    if (!(await hasRow(trx, 'device_groups', input.groupId))) {
      throw badReference('body.groupId', `no device group ${input.groupId}`);
    }
    const created = await createEnrolmentToken(trx, {
      groupId: input.groupId,
      uses: input.uses,
      expiresAt: new Date(at + input.expiresInHours * 3600_000),
      now: new Date(at),
      createdBy: caller.userId,
      note: input.note,
    });
    const row = await trx
      .selectFrom('enrolment_tokens')
      .selectAll()
      .where('id', '=', created.id)
      .executeTakeFirstOrThrow();
    const after = presentToken(row);
    return { result: { ...after, token: created.token }, before: null, after, id: row.id };
  });
}

/** Every enrolment token (never the secret), newest first; the latest 1000. */
export async function listEnrolmentTokens(db: Kysely<Database>): Promise<EnrolmentToken[]> {
  const rows = await db
    .selectFrom('enrolment_tokens')
    .selectAll()
    .orderBy('created_at', 'desc')
    .orderBy('id', 'desc')
    .limit(1000)
    .execute();
  return rows.map(presentToken);
}

/** Revokes (deletes) a token: devices can no longer enrol with it. @throws `ERR_NOT_FOUND`. */
export async function revokeEnrolmentToken(
  deps: CommandDeps,
  actor: Actor,
  id: string,
): Promise<void> {
  await runCommand(deps, actor, TOKEN('revoke', id), async (trx) => {
    const row = await trx
      .selectFrom('enrolment_tokens')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) throw notFound('enrolment token', id);
    await trx.deleteFrom('enrolment_tokens').where('id', '=', id).execute();
    return { result: undefined, before: presentToken(row), after: null };
  });
}

const TOKEN = (verb: string, id?: string) => ({
  action: `enrolment-token.${verb}`,
  target: 'enrolment-token',
  id,
});
