import {
  ADMIN_ROLE_NAMES,
  AdminPasswordSchema,
  AdminRoleSchema,
  AdminUsernameSchema,
  BulkheadError,
  endpoints,
  ErrorCodes,
  type AdminRoleName,
  type AdminUser,
  type ApiClient,
} from '../protocol/index.ts';
import type { Command, CommandContext, Invocation } from './command.ts';
import { printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';
import { askHidden, stdinLines } from './terminal.ts';

/*
 * Center's administrators over the admin API, by username: `users …` (an admin's work; any
 * user may list them) and `passwd`, with which anyone logged in changes their own password.
 * `center admin create|reset` do the same on the database directly, for when nobody can log in.
 */

function usernameArgument(inv: Invocation, index = 0): string {
  const given = inv.positionals[index];
  if (given === undefined || given === '') {
    throw new BulkheadError(ErrorCodes.USAGE, 'give the username (NAME)');
  }
  const parsed = AdminUsernameSchema.safeParse(given);
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `NAME "${given}" is not a username (letters, digits and . _ @ -, at most 64)`,
    );
  }
  return parsed.data;
}

function roleOf(given: string | undefined, what: string): AdminRoleName {
  if (given === undefined || given === '') {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `${what} is required: ${ADMIN_ROLE_NAMES.join(', ')}`,
    );
  }
  const parsed = AdminRoleSchema.safeParse(given);
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `${what} must be one of ${ADMIN_ROLE_NAMES.join(', ')}, not "${given}"`,
    );
  }
  return parsed.data;
}

/** The user named `username`, or a one-line error saying there is none. */
async function findUser(api: ApiClient, username: string): Promise<AdminUser> {
  const { users } = await api.call(endpoints.listUsers);
  const user = users.find((u) => u.username === username);
  if (!user) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no user ${username}`, {
      hint: 'list them with `bulkhead users list`',
    });
  }
  return user;
}

function stateOf(u: AdminUser): string {
  return u.disabledAt === null ? 'active' : `disabled since ${when(u.disabledAt)}`;
}

const usersList: Command = {
  name: 'users list',
  summary: "List Center's administrators: role, state, last login.",
  usage: `Usage: bulkhead users list\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const answer = await api.call(endpoints.listUsers);
    if (!inv.json) {
      printTable(ctx, answer.users, {
        username: (u) => u.username,
        role: (u) => u.role,
        state: stateOf,
        'last login': (u) => when(u.lastLoginAt),
      });
    }
    return answer;
  },
};

const usersCreate: Command = {
  name: 'users create',
  summary: 'Create an administrator; prints their generated one-time password once.',
  usage: `Usage: bulkhead users create NAME --role admin|operator|viewer

  The password is printed on standard output, once; give it to the person, who logs in with
  \`bulkhead login\` and changes it with \`bulkhead passwd\`. Needs the admin role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, role: { type: 'string' } },
  async run(inv, ctx) {
    const username = usernameArgument(inv);
    const role = roleOf(inv.values['role'] as string | undefined, '--role');
    const api = await connect(inv);
    const created = await api.call(endpoints.createUser, { body: { username, role } });
    if (!inv.json) {
      ctx.out(created.password ?? '');
      ctx.err(
        `Created ${created.user.username} (${created.user.role}); the one-time password above is not ` +
          `shown again. They log in with \`bulkhead login --center ${api.baseUrl} --username ` +
          `${created.user.username}\`, then change it with \`bulkhead passwd\`.`,
      );
    }
    return created;
  },
};

const usersSetRole: Command = {
  name: 'users set-role',
  summary: "Change an administrator's role (admin, operator, viewer).",
  usage: `Usage: bulkhead users set-role NAME ROLE

  ROLE is admin, operator or viewer. The last active admin cannot be demoted.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const username = usernameArgument(inv);
    const role = roleOf(inv.positionals[1], 'ROLE');
    const api = await connect(inv);
    const user = await findUser(api, username);
    const changed = await api.call(endpoints.updateUser, {
      params: { id: user.id },
      body: { role },
    });
    if (!inv.json) {
      ctx.out(
        user.role === changed.role
          ? `${changed.username} already is ${changed.role}.`
          : `${changed.username} is now ${changed.role} (was ${user.role}).`,
      );
    }
    return changed;
  },
};

/** `users disable|enable`: one field of the account. */
function switchVerb(verb: 'disable' | 'enable'): Command {
  const disabled = verb === 'disable';
  return {
    name: `users ${verb}`,
    summary: disabled
      ? 'Disable an administrator: no login, sessions end, API tokens refused until enabled.'
      : 'Enable a disabled administrator again (their API tokens work again).',
    usage: `Usage: bulkhead users ${verb} NAME

  ${
    disabled
      ? `A disabled account cannot log in; its sessions end at once and its API tokens are
  refused while it stays disabled. The last active admin cannot be disabled.`
      : `The account can log in again, and its API tokens work again; its old sessions stay
  ended.`
  }

${CONNECTION_USAGE}`,
    options: { ...connectionOptions },
    async run(inv, ctx) {
      const username = usernameArgument(inv);
      const api = await connect(inv);
      const user = await findUser(api, username);
      const changed = await api.call(endpoints.updateUser, {
        params: { id: user.id },
        body: { disabled },
      });
      if (!inv.json) {
        const was = user.disabledAt !== null;
        ctx.out(
          was === disabled
            ? `${changed.username} already is ${disabled ? 'disabled' : 'active'}.`
            : disabled
              ? `Disabled ${changed.username}: their sessions ended and their API tokens are refused.`
              : `Enabled ${changed.username}: they can log in again.`,
        );
      }
      return changed;
    },
  };
}

const usersDelete: Command = {
  name: 'users delete',
  summary: 'Delete an administrator and their sessions and API tokens, for good.',
  usage: `Usage: bulkhead users delete NAME

  The audit trail keeps what they did. \`bulkhead users disable NAME\` is the reversible way.
  The last active admin cannot be deleted.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const username = usernameArgument(inv);
    const api = await connect(inv);
    const user = await findUser(api, username);
    await api.call(endpoints.deleteUser, { params: { id: user.id } });
    if (!inv.json) ctx.out(`Deleted ${user.username} and their sessions and API tokens.`);
    return { deleted: user.username, id: user.id };
  },
};

async function readPasswords(
  ctx: CommandContext,
  fromStdin: boolean,
): Promise<{ current: string; next: string }> {
  if (fromStdin || !process.stdin.isTTY) {
    const [current = '', next = ''] = await stdinLines();
    if (current === '' || next === '') {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        '--password-stdin reads two lines: the current password, then the new one',
      );
    }
    return { current, next };
  }
  const current = await askHidden(ctx, 'Current password: ');
  const next = await askHidden(ctx, 'New password (at least 12 characters): ');
  const again = await askHidden(ctx, 'New password again: ');
  if (next !== again) throw new BulkheadError(ErrorCodes.USAGE, 'the new passwords differ');
  return { current, next };
}

const passwd: Command = {
  name: 'passwd',
  summary: 'Change your own password at Center; your other sessions end.',
  usage: `Usage: bulkhead passwd [--password-stdin]

  Asks for your current password and the new one (at least 12 characters), or reads two lines
  from standard input with --password-stdin: the current password, then the new one. Your
  other sessions end; this one, and your API tokens, stay.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, 'password-stdin': { type: 'boolean' } },
  async run(inv, ctx) {
    const api = await connect(inv);
    const { current, next } = await readPasswords(ctx, inv.values['password-stdin'] === true);
    if (!AdminPasswordSchema.safeParse(next).success) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        'the new password must be 12 to 256 characters, without control characters',
      );
    }
    const me = await api.call(endpoints.me);
    const answer = await api.call(endpoints.changePassword, {
      body: { currentPassword: current, newPassword: next },
    });
    if (!inv.json) {
      const n = answer.sessionsRevoked;
      ctx.out(
        `Changed the password of ${me.username}; ${n === 0 ? 'no other session was open' : `${n} other session${n === 1 ? '' : 's'} ended`}` +
          `${me.via === 'session' ? ' (this one stays)' : ''}; API tokens are unchanged.`,
      );
    }
    return { username: me.username, ...answer };
  },
};

export const userCommands: Command[] = [
  usersList,
  usersCreate,
  usersSetRole,
  switchVerb('disable'),
  switchVerb('enable'),
  usersDelete,
  passwd,
];
