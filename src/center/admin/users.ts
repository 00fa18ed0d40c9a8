import { PostgresAdapter, type Kysely, type Transaction } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type AdminRoleName,
  type AdminUser,
  type UpdateAdminUserRequest,
} from '../../protocol/index.ts';
import { generatePassword, hashPassword } from '../auth/passwords.ts';
import { newId, refuseViolation, type Database, type Row } from '../db/index.ts';
import { runCommand } from '../changes/index.ts';
import type { Actor } from './audit.ts';

/**
 * Makes a password's hash: Center's routes pass their bounded hashing queue's; the CLI, which
 * works on the database directly, hashes on the threadpool (the default).
 */
export type HashPassword = (password: string) => Promise<string>;

/** A user as the API shows it: never the password hash. */
export function presentUser(row: Row<'admin_users'>): AdminUser {
  return {
    id: row.id,
    username: row.username,
    role: row.role,
    lastLoginAt: row.last_login_at === null ? null : Number(row.last_login_at),
    disabledAt: row.disabled_at === null ? null : Number(row.disabled_at),
    createdAt: Number(row.created_at),
    updatedAt: Number(row.updated_at),
  };
}

export async function listUsers(db: Kysely<Database>): Promise<AdminUser[]> {
  const rows = await db.selectFrom('admin_users').selectAll().orderBy('username').execute();
  return rows.map(presentUser);
}

/**
 * Creates an administrator; generates a password when none is given and returns it once.
 * @throws BulkheadError `ERR_ADMIN_USER_EXISTS` when the username is taken.
 */
export async function createUser(
  db: Kysely<Database>,
  actor: Actor,
  input: { username: string; role: AdminRoleName; password?: string | undefined },
  at: number,
  hash: HashPassword = hashPassword,
): Promise<{ user: AdminUser; password?: string }> {
  const password = input.password ?? generatePassword();
  const row: Row<'admin_users'> = {
    id: newId(at),
    username: input.username.toLowerCase(),
    password_hash: await hash(password),
    role: input.role,
    last_login_at: null,
    disabled_at: null,
    created_at: at,
    updated_at: at,
  };
  const user = presentUser(row);
  const taken = `an administrator named "${input.username}" already exists`;
  await refuseViolation(
    'unique',
    () =>
      runCommand({ db, nowMs: at }, actor, USER('create'), async (trx) => {
        await trx.insertInto('admin_users').values(row).execute();
        return { result: undefined, before: null, after: user, id: row.id };
      }),
    (cause) => new BulkheadError(ErrorCodes.ADMIN_USER_EXISTS, taken, { cause }),
  );
  return input.password === undefined ? { user, password } : { user };
}

/**
 * Changes a user's role and/or password, or disables or enables the account. A password change
 * ends the user's sessions (API tokens stay: scripts are revoked explicitly); disabling ends
 * them too, and the API tokens are refused while the account is disabled (see `resolveCaller`).
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_LAST_ADMIN` when it would demote or disable the
 *   last active admin.
 */
export async function updateUser(
  db: Kysely<Database>,
  actor: Actor,
  where: { id: string } | { username: string },
  input: UpdateAdminUserRequest,
  at: number,
  hash: HashPassword = hashPassword,
): Promise<AdminUser> {
  const passwordHash = input.password === undefined ? undefined : await hash(input.password);
  return runCommand({ db, nowMs: at }, actor, USER('update'), async (trx) => {
    const current = await findUser(trx, where);
    const target: Row<'admin_users'> = {
      ...current,
      role: input.role ?? current.role,
      password_hash: passwordHash ?? current.password_hash,
      disabled_at:
        input.disabled === undefined
          ? current.disabled_at
          : input.disabled
            ? (current.disabled_at ?? at)
            : null,
      updated_at: at,
    };
    if (isActiveAdmin(current) && !isActiveAdmin(target)) {
      await assertAnotherAdmin(trx, current.id);
    }
    await trx
      .updateTable('admin_users')
      .set({
        role: target.role,
        password_hash: target.password_hash,
        disabled_at: target.disabled_at,
        updated_at: at,
      })
      .where('id', '=', current.id)
      .execute();
    const disabling = current.disabled_at === null && target.disabled_at !== null;
    if (passwordHash !== undefined || disabling) {
      await trx
        .deleteFrom('api_tokens')
        .where('user_id', '=', current.id)
        .where('name', 'like', 'session:%')
        .execute();
    }
    return {
      result: presentUser(target),
      before: presentUser(current),
      // The trail says that the password changed, never what it is or its hash.
      after: { ...presentUser(target), ...(passwordHash ? { passwordChanged: true } : {}) },
      id: current.id,
    };
  });
}

/** An admin whose account works: the one kind of user that can manage the others. */
function isActiveAdmin(row: Pick<Row<'admin_users'>, 'role' | 'disabled_at'>): boolean {
  return row.role === 'admin' && row.disabled_at === null;
}

/**
 * Deletes a user, its sessions and API tokens.
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_LAST_ADMIN` for the last admin.
 */
export async function deleteUser(
  db: Kysely<Database>,
  actor: Actor,
  id: string,
  at: number,
): Promise<void> {
  await runCommand({ db, nowMs: at }, actor, USER('delete', id), async (trx) => {
    const current = await findUser(trx, { id });
    if (isActiveAdmin(current)) await assertAnotherAdmin(trx, current.id);
    await trx.deleteFrom('api_tokens').where('user_id', '=', id).execute();
    await trx.deleteFrom('admin_users').where('id', '=', id).execute();
    return { result: undefined, before: presentUser(current), after: null };
  });
}

const USER = (verb: string, id?: string) => ({ action: `user.${verb}`, target: 'user', id });

async function findUser(
  trx: Transaction<Database>,
  where: { id: string } | { username: string },
): Promise<Row<'admin_users'>> {
  const row = await trx
    .selectFrom('admin_users')
    .selectAll()
    .$call((q) =>
      'id' in where
        ? q.where('id', '=', where.id)
        : q.where('username', '=', where.username.toLowerCase()),
    )
    .executeTakeFirst();
  if (!row) {
    const name = 'id' in where ? where.id : where.username;
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no administrator "${name}"`);
  }
  return row;
}

/**
 * Refuses to remove the last active admin (a disabled one cannot step in). On PostgreSQL the admin rows are locked (`for update`), so
 * two transactions demoting the last two admins at once cannot both pass; SQLite runs one
 * writer at a time anyway.
 */
async function assertAnotherAdmin(trx: Transaction<Database>, exceptId: string): Promise<void> {
  const admins = await trx
    .selectFrom('admin_users')
    .select(['id', 'disabled_at'])
    .where('role', '=', 'admin')
    .$call((q) => (isPostgres(trx) ? q.forUpdate() : q))
    .execute();
  if (!admins.some((a) => a.id !== exceptId && a.disabled_at === null)) {
    throw new BulkheadError(
      ErrorCodes.LAST_ADMIN,
      'this is the last active administrator with the admin role; make another one admin first',
    );
  }
}

function isPostgres(trx: Transaction<Database>): boolean {
  return trx.getExecutor().adapter instanceof PostgresAdapter;
}
