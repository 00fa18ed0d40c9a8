import type { Kysely, Transaction } from 'kysely';
import type { AuditEntry } from '../../protocol/index.ts';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import { newId, type Database } from '../db/index.ts';

/** Who did something, as the audit trail names them. */
export interface Actor {
  /** `user:<username>`, `token:<id>` (acting as a user) or `system`. */
  readonly label: string;
}

/**
 * Appends one row to the audit trail, in the transaction that makes the change, so the trail
 * and the change commit together or not at all. Commands reach it through `runCommand`
 * (src/center/changes), never directly.
 */
export async function writeAudit(
  trx: Transaction<Database>,
  entry: {
    actor: Actor;
    action: string;
    targetType: string;
    targetId: string | null;
    before: unknown;
    after: unknown;
    at: number;
  },
): Promise<void> {
  await trx
    .insertInto('audit_log')
    .values({
      id: newId(entry.at),
      actor: entry.actor.label,
      action: entry.action,
      target_type: entry.targetType,
      target_id: entry.targetId,
      before: entry.before === null ? null : JSON.stringify(entry.before),
      after: entry.after === null ? null : JSON.stringify(entry.after),
      at: entry.at,
    })
    .execute();
}

/**
 * One page of the trail, newest first, by keyset on (at, id): a page costs the same however
 * deep it is, and rows written meanwhile never shift it. Filters narrow it to one actor, one
 * action (or the actions under a prefix) and one target type or target.
 *
 * @throws BulkheadError `ERR_VALIDATION` for a cursor this function did not make.
 */
export async function listAudit(
  db: Kysely<Database>,
  query: {
    limit: number;
    cursor?: string | undefined;
    actor?: string | undefined;
    action?: string | undefined;
    targetType?: string | undefined;
    targetId?: string | undefined;
  },
): Promise<{ entries: AuditEntry[]; next: string | null }> {
  let q = db
    .selectFrom('audit_log')
    .selectAll()
    .orderBy('at', 'desc')
    .orderBy('id', 'desc')
    .limit(query.limit + 1);
  if (query.actor !== undefined) q = q.where('actor', '=', query.actor);
  if (query.targetType !== undefined) q = q.where('target_type', '=', query.targetType);
  if (query.targetId !== undefined) q = q.where('target_id', '=', query.targetId);
  const { action } = query;
  if (action !== undefined) {
    // The schema allows no LIKE wildcard in an action, so `group` matches `group.*` only.
    q = q.where((eb) => eb.or([eb('action', '=', action), eb('action', 'like', `${action}.%`)]));
  }
  if (query.cursor !== undefined) {
    const { at, id } = decodeCursor(query.cursor);
    q = q.where((eb) => eb.or([eb('at', '<', at), eb.and([eb('at', '=', at), eb('id', '<', id)])]));
  }
  const rows = await q.execute();
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    entries: page.map((r) => ({
      id: r.id,
      actor: r.actor,
      action: r.action,
      targetType: r.target_type,
      targetId: r.target_id,
      before: r.before === null ? null : (JSON.parse(r.before) as unknown),
      after: r.after === null ? null : (JSON.parse(r.after) as unknown),
      at: Number(r.at),
    })),
    next:
      rows.length > query.limit && last
        ? Buffer.from(`${Number(last.at)}:${last.id}`).toString('base64url')
        : null,
  };
}

function decodeCursor(cursor: string): { at: number; id: string } {
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  const match = /^(\d{1,16}):([0-9a-f-]{36})$/.exec(text);
  if (!match) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'querystring.cursor: not a cursor from this API',
    );
  }
  return { at: Number(match[1]), id: match[2]! };
}
