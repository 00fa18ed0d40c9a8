import { createHash, randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type AdminRoleName,
  type ApiToken,
  type ChangePasswordRequest,
  type ChangePasswordResponse,
  type CreateApiTokenRequest,
  type LoginResponse,
} from '../../protocol/index.ts';
import { busy, type PasswordHasher, type PasswordSlot } from '../auth/password-hasher.ts';
import { UNKNOWN_USER_HASH } from '../auth/passwords.ts';
import { newId, type Database, type Row } from '../db/index.ts';
import { runCommand } from '../changes/index.ts';
import type { Actor } from './audit.ts';
import type { LoginThrottle } from './login-throttle.ts';

/*
 * Sessions and API tokens are both bearer secrets kept in `api_tokens` as SHA-256 hashes: a
 * session is a row named `session:<username>` that expires after SESSION_MS. One table means
 * one lookup per request and one place that revokes (deleting a user cascades to both). The
 * secrets have 256 bits of entropy, so a plain hash (no salt, no stretching) is enough, and it
 * lets the lookup be an index probe.
 */

export const SESSION_MS = 12 * 60 * 60_000;
const SESSION_PREFIX = 'session:';

/** Who a request acts as, resolved from its bearer token. */
export interface Caller extends Actor {
  userId: string;
  username: string;
  role: AdminRoleName;
  /** The api_tokens row presented. */
  credentialId: string;
  via: 'session' | 'token';
}

const ROLE_RANK: Record<AdminRoleName, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether `role` includes everything `required` may do. */
export function hasRole(role: AdminRoleName, required: AdminRoleName): boolean {
  return ROLE_RANK[role] >= ROLE_RANK[required];
}

function newSecret(): string {
  return `bh_${randomBytes(32).toString('base64url')}`;
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

function unauthenticated(message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.UNAUTHENTICATED, message);
}

function disabled(username: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.ACCOUNT_DISABLED,
    `the account ${username} is disabled; an administrator can enable it (bulkhead users enable ${username})`,
  );
}

/**
 * The caller an `Authorization` header names.
 * @throws BulkheadError `ERR_UNAUTHENTICATED` when it is missing, malformed, unknown or expired.
 */
export async function resolveCaller(
  db: Kysely<Database>,
  authorization: string | undefined,
  nowMs: number,
): Promise<Caller> {
  if (authorization === undefined) throw unauthenticated('authentication required');
  const match = /^Bearer\s+([A-Za-z0-9_-]{1,128})$/i.exec(authorization.trim());
  if (!match) throw unauthenticated('the Authorization header must be "Bearer <token>"');
  const row = await db
    .selectFrom('api_tokens as t')
    .innerJoin('admin_users as u', 'u.id', 't.user_id')
    .select(['t.id', 't.name', 't.expires_at', 't.last_used_at', 'u.id as user_id', 'u.username'])
    .select(['u.role', 'u.disabled_at'])
    .where('t.token_hash', '=', hashSecret(match[1]!))
    .executeTakeFirst();
  if (!row || (row.expires_at !== null && Number(row.expires_at) <= nowMs)) {
    throw unauthenticated('the token is unknown, revoked or expired');
  }
  // Checked on every request, so disabling an account stops its API tokens at once (its
  // sessions are deleted as well), on every replica.
  if (row.disabled_at !== null) throw disabled(row.username);
  // Recording use costs a write; once a minute per token is precise enough.
  if (row.last_used_at === null || Number(row.last_used_at) < nowMs - 60_000) {
    await db
      .updateTable('api_tokens')
      .set({ last_used_at: nowMs })
      .where('id', '=', row.id)
      .execute();
  }
  const via = row.name.startsWith(SESSION_PREFIX) ? 'session' : 'token';
  return {
    userId: row.user_id,
    username: row.username,
    role: row.role,
    credentialId: row.id,
    via,
    label: via === 'session' ? `user:${row.username}` : `token:${row.id}`,
  };
}

/**
 * Checks a username and password and opens a session. The attempt is throttled per username
 * and address (login-throttle.ts) and its password checked on the bounded hashing queue.
 * @throws BulkheadError `ERR_RATE_LIMITED` (details.retryAfterMs) when this username has failed
 *   too often from this address lately, or when too many password checks are already waiting;
 *   `ERR_UNAUTHENTICATED` for a wrong name or password (the same message for both);
 *   `ERR_ACCOUNT_DISABLED` for a disabled account, said only after its password was right.
 */
export async function login(
  deps: {
    db: Kysely<Database>;
    throttle: LoginThrottle;
    passwords: PasswordHasher;
    nowMs: () => number;
  },
  input: { username: string; password: string; ip: string },
): Promise<LoginResponse> {
  const name = input.username.toLowerCase();
  // A place in the hashing queue first: a full queue refuses the attempt before it counts.
  const slot = deps.passwords.reserve();
  if (!('verify' in slot)) throw busy(slot.retryAfterMs);
  let user: Row<'admin_users'> | undefined;
  try {
    user = await checkPassword(deps, slot, name, input);
  } finally {
    slot.release();
  }
  if (!user) throw unauthenticated('wrong username or password');
  await deps.throttle.succeeded(name, input.ip);
  if (user.disabled_at !== null) throw disabled(user.username);
  const at = deps.nowMs();
  const token = newSecret();
  const id = newId(at);
  const expiresAt = at + SESSION_MS;
  const actor = { label: `user:${user.username}` };
  await runCommand({ db: deps.db, nowMs: at }, actor, SESSION('create', id), async (trx) => {
    await trx
      .insertInto('api_tokens')
      .values({
        id,
        user_id: user.id,
        name: `${SESSION_PREFIX}${user.username}`,
        token_hash: hashSecret(token),
        expires_at: expiresAt,
        last_used_at: at,
        created_at: at,
      })
      .execute();
    await trx
      .updateTable('admin_users')
      .set({ last_login_at: at })
      .where('id', '=', user.id)
      .execute();
    const after = { id, userId: user.id, expiresAt, ip: input.ip };
    return { result: undefined, before: null, after };
  });
  return { token, expiresAt, username: user.username, role: user.role };
}

/**
 * The user named `name` if `input` gives their password, else undefined; counted by the
 * throttle first (as a failure until the caller says it succeeded).
 * @throws BulkheadError `ERR_RATE_LIMITED` while the pair must wait.
 */
async function checkPassword(
  deps: { db: Kysely<Database>; throttle: LoginThrottle },
  slot: PasswordSlot,
  name: string,
  input: { password: string; ip: string },
): Promise<Row<'admin_users'> | undefined> {
  const wait = await deps.throttle.claim(name, input.ip);
  if (wait > 0) {
    const seconds = Math.ceil(wait / 1000);
    throw new BulkheadError(
      ErrorCodes.RATE_LIMITED,
      `too many failed logins for this username from this address; try again in ${seconds} s`,
      { retryable: true, details: { retryAfterMs: seconds * 1000 } },
    );
  }
  const user = await deps.db
    .selectFrom('admin_users')
    .selectAll()
    .where('username', '=', name)
    .executeTakeFirst();
  // An unknown name is checked against a hash too, so its answer takes as long.
  const matches = await slot.verify(input.password, user?.password_hash ?? UNKNOWN_USER_HASH);
  return user && matches ? user : undefined;
}

/**
 * Changes the caller's own password. The current one is checked as a login's is (throttled per
 * username and address, on the bounded hashing queue), so a session left open is not enough to
 * take the account over. The caller's other sessions end; the session that asked stays, and so
 * do API tokens (scripts are revoked explicitly).
 * @throws BulkheadError `ERR_WRONG_PASSWORD`; `ERR_RATE_LIMITED` as for a login;
 *   `ERR_VALIDATION` when the new password is the current one.
 */
export async function changeOwnPassword(
  deps: {
    db: Kysely<Database>;
    throttle: LoginThrottle;
    passwords: PasswordHasher;
    nowMs: () => number;
  },
  caller: Caller,
  input: ChangePasswordRequest & { ip: string },
): Promise<ChangePasswordResponse> {
  if (input.newPassword === input.currentPassword) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'body.newPassword: the new password is the current one; choose another',
    );
  }
  const slot = deps.passwords.reserve();
  if (!('verify' in slot)) throw busy(slot.retryAfterMs);
  let checked: Row<'admin_users'> | undefined;
  try {
    checked = await checkPassword(deps, slot, caller.username, {
      password: input.currentPassword,
      ip: input.ip,
    });
  } finally {
    slot.release();
  }
  const user = checked;
  if (!user || user.id !== caller.userId) {
    throw new BulkheadError(ErrorCodes.WRONG_PASSWORD, 'the current password is wrong');
  }
  await deps.throttle.succeeded(caller.username, input.ip);
  const passwordHash = await deps.passwords.hash(input.newPassword);
  const at = deps.nowMs();
  const spec = { action: 'user.password', target: 'user', id: user.id };
  return runCommand({ db: deps.db, nowMs: at }, caller, spec, async (trx) => {
    await trx
      .updateTable('admin_users')
      .set({ password_hash: passwordHash, updated_at: at })
      .where('id', '=', user.id)
      .execute();
    const ended = await trx
      .deleteFrom('api_tokens')
      .where('user_id', '=', user.id)
      .where('name', 'like', `${SESSION_PREFIX}%`)
      .where('id', '!=', caller.credentialId)
      .executeTakeFirst();
    const sessionsRevoked = Number(ended.numDeletedRows);
    // The trail says that the password changed, never what it is or its hash.
    const after = { id: user.id, username: user.username, passwordChanged: true, sessionsRevoked };
    return { result: { sessionsRevoked }, before: null, after };
  });
}

/** Revokes the credential the caller presented (its session, or the API token itself). */
export async function logout(db: Kysely<Database>, caller: Caller, at: number): Promise<void> {
  const spec = SESSION('delete', caller.credentialId, caller.via);
  await runCommand({ db, nowMs: at }, caller, spec, async (trx) => {
    await trx.deleteFrom('api_tokens').where('id', '=', caller.credentialId).execute();
    return {
      result: undefined,
      before: { id: caller.credentialId, userId: caller.userId },
      after: null,
    };
  });
}

/** Creates an API token acting as the caller's user; the secret is returned only here. */
export async function createApiToken(
  db: Kysely<Database>,
  caller: Caller,
  input: CreateApiTokenRequest,
  at: number,
): Promise<{ id: string; name: string; token: string; expiresAt: number | null }> {
  if (input.name.startsWith(SESSION_PREFIX)) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `body.name: must not start with "${SESSION_PREFIX}"`,
    );
  }
  const token = newSecret();
  const id = newId(at);
  const expiresAt =
    input.expiresInDays === undefined ? null : at + input.expiresInDays * 86_400_000;
  await runCommand({ db, nowMs: at }, caller, SESSION('create', id, 'token'), async (trx) => {
    await trx
      .insertInto('api_tokens')
      .values({
        id,
        user_id: caller.userId,
        name: input.name,
        token_hash: hashSecret(token),
        expires_at: expiresAt,
        last_used_at: null,
        created_at: at,
      })
      .execute();
    const after = { id, userId: caller.userId, name: input.name, expiresAt };
    return { result: undefined, before: null, after };
  });
  return { id, name: input.name, token, expiresAt };
}

/** Every API token (not sessions), without its hash, newest first. */
export async function listApiTokens(db: Kysely<Database>): Promise<ApiToken[]> {
  const rows = await db
    .selectFrom('api_tokens as t')
    .innerJoin('admin_users as u', 'u.id', 't.user_id')
    .select(['t.id', 't.name', 'u.username', 't.expires_at', 't.last_used_at', 't.created_at'])
    .where('t.name', 'not like', `${SESSION_PREFIX}%`)
    .orderBy('t.created_at', 'desc')
    .orderBy('t.id', 'desc')
    .execute();
  return rows.map(presentToken);
}

function presentToken(r: {
  id: string;
  name: string;
  username: string;
  expires_at: number | null;
  last_used_at: number | null;
  created_at: number;
}): ApiToken {
  return {
    id: r.id,
    name: r.name,
    username: r.username,
    expiresAt: r.expires_at === null ? null : Number(r.expires_at),
    lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
    createdAt: Number(r.created_at),
  };
}

/**
 * Revokes an API token (sessions end by logout, a password change, or deleting the user).
 * @throws BulkheadError `ERR_NOT_FOUND` when there is no such token.
 */
export async function revokeApiToken(
  db: Kysely<Database>,
  actor: Actor,
  id: string,
  at: number,
): Promise<void> {
  await runCommand({ db, nowMs: at }, actor, SESSION('delete', id, 'token'), async (trx) => {
    const current = await trx
      .selectFrom('api_tokens as t')
      .innerJoin('admin_users as u', 'u.id', 't.user_id')
      .select(['t.id', 't.name', 'u.username', 't.expires_at', 't.last_used_at', 't.created_at'])
      .where('t.id', '=', id)
      .where('t.name', 'not like', `${SESSION_PREFIX}%`)
      .executeTakeFirst();
    if (!current) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no API token "${id}"`);
    await trx.deleteFrom('api_tokens').where('id', '=', id).execute();
    return { result: undefined, before: presentToken(current), after: null };
  });
}

/** The audit trail's name for a change of a session or an API token. */
const SESSION = (verb: string, id: string, target: 'session' | 'token' = 'session') => ({
  action: `${target}.${verb}`,
  target,
  id,
});
