import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  isBulkheadError,
  type Endpoint,
  type AuditEntry,
  type ResponseOf,
} from '../protocol/index.ts';
import { adminClient } from './api-client.ts';
import { askHidden, stdinLines } from './terminal.ts';
import {
  integerOption,
  optionalString,
  printable,
  requireString,
  type Command,
  type CommandContext,
} from './command.ts';
import {
  CONNECTION_USAGE,
  connect,
  connectionOptions,
  credentialsPath,
  forgetSession,
  readSession,
  saveSession,
} from './session.ts';

/*
 * The administrator's commands that talk to Center over its admin API: logging in and out,
 * who am I, and the audit trail. The fleet and rollout commands build on the same pieces.
 */

/** Table columns by heading: what each shows of a row. */
export type Columns<T> = Record<string, (row: T) => string | number | null | undefined>;

/**
 * Prints rows as aligned columns; `columns` maps a header to how a row shows under it. A cell
 * is `printable` with its newlines and tabs escaped too, so a row stays one row.
 */
export function printTable<T>(ctx: CommandContext, rows: readonly T[], columns: Columns<T>): void {
  const headers = Object.keys(columns);
  const cells = rows.map((r) => headers.map((h) => printable(String(columns[h]!(r) ?? '-'))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (parts: string[]) =>
    parts
      .map((p, i) => (i === parts.length - 1 ? p : p.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  ctx.out(line(headers.map((h) => h.toUpperCase())));
  for (const c of cells) ctx.out(line(c));
}

/** The rows of a list answer: its one array field. */
type RowOf<T> = { [K in keyof T]: T[K] extends readonly (infer R)[] ? R : never }[keyof T];

/**
 * A command `name` that lists what one endpoint of the admin API answers (an object with one
 * array field), as a table of `columns`; with --json, the answer as it came.
 */
export function listCommand<E extends Endpoint>(
  name: string,
  endpoint: E,
  summary: string,
  columns: Columns<RowOf<ResponseOf<E>>>,
): Command {
  return {
    name,
    summary,
    usage: `Usage: bulkhead ${name}\n\n${CONNECTION_USAGE}`,
    options: { ...connectionOptions },
    async run(inv, ctx) {
      const api = await connect(inv);
      const answer = await (api.call as (e: Endpoint) => Promise<object>)(endpoint);
      const rows = Object.values(answer).find((v) => Array.isArray(v)) as RowOf<ResponseOf<E>>[];
      if (!inv.json) printTable(ctx, rows, columns);
      return answer;
    },
  };
}

/** A time as ISO text without milliseconds, or `-`. */
export function when(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '-' : new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
}

/** The password from the first line of standard input, or asked for at the terminal. */
async function readPassword(ctx: CommandContext, fromStdin: boolean): Promise<string> {
  if (fromStdin || !process.stdin.isTTY) {
    const [text = ''] = await stdinLines();
    if (text === '') throw new BulkheadError(ErrorCodes.USAGE, 'no password on standard input');
    return text;
  }
  return askHidden(ctx, 'Password: ');
}

const login: Command = {
  name: 'login',
  summary: "Log in to Center's admin API and save the session for the other commands.",
  usage: `Usage: bulkhead login --center URL --username NAME [--password-stdin]

  Asks for the password (or reads it from standard input with --password-stdin), opens a
  12-hour session and saves it, readable by you only, in ${credentialsPath()}
  (BULKHEAD_CREDENTIALS overrides the path). Scripts should use an API token instead.`,
  options: {
    center: { type: 'string' },
    username: { type: 'string' },
    'password-stdin': { type: 'boolean' },
  },
  async run(inv, ctx) {
    const center = optionalString(inv, 'center') ?? process.env['BULKHEAD_CENTER'];
    if (!center) throw new BulkheadError(ErrorCodes.USAGE, '--center URL is required');
    const username = requireString(inv, 'username');
    const password = await readPassword(ctx, inv.values['password-stdin'] === true);
    const api = adminClient(center);
    const session = await api.call(endpoints.login, { body: { username, password } });
    const saved = {
      center: api.baseUrl,
      token: session.token,
      username: session.username,
      role: session.role,
      expiresAt: session.expiresAt,
    };
    await saveSession(saved);
    const result = {
      center: saved.center,
      username: saved.username,
      role: saved.role,
      expiresAt: saved.expiresAt,
      credentials: credentialsPath(),
    };
    if (!inv.json) {
      ctx.out(
        `Logged in to ${saved.center} as ${saved.username} (${saved.role}) until ${when(saved.expiresAt)}.`,
      );
    }
    return result;
  },
};

const logout: Command = {
  name: 'logout',
  summary: 'End the saved session at Center and forget it.',
  usage: 'Usage: bulkhead logout',
  options: {},
  async run(inv, ctx) {
    const saved = await readSession();
    if (!saved) {
      if (!inv.json) ctx.out('Not logged in.');
      return { loggedOut: false };
    }
    // Revoke at Center when it answers; forget locally in any case.
    let revoked = true;
    try {
      await adminClient(saved.center, saved.token).call(endpoints.logout);
    } catch {
      revoked = false;
    }
    await forgetSession();
    if (!inv.json) {
      ctx.out(
        revoked
          ? `Logged out of ${saved.center}.`
          : `Forgot the session; ${saved.center} could not be told (it expires by itself).`,
      );
    }
    return { loggedOut: true, revokedAtCenter: revoked };
  },
};

const whoami: Command = {
  name: 'whoami',
  summary: 'Show who the admin commands act as.',
  usage: `Usage: bulkhead whoami\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const me = await api.call(endpoints.me);
    if (!inv.json) ctx.out(`${me.username} (${me.role}, by ${me.via}) at ${api.baseUrl}`);
    return { ...me, center: api.baseUrl };
  },
};

const audit: Command = {
  name: 'audit',
  summary: 'Show the audit trail: who did what, newest first.',
  usage: `Usage: bulkhead audit [--limit N] [--all]

  --limit N   entries per page (default 50); --all follows the pages to the end.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, limit: { type: 'string' }, all: { type: 'boolean' } },
  async run(inv, ctx) {
    const api = await connect(inv);
    const limit = integerOption(inv, 'limit', 1, 500) ?? 50;
    const entries = [];
    let cursor: string | undefined;
    do {
      const page = await api.call(endpoints.listAudit, { query: { limit, cursor } });
      entries.push(...page.entries);
      cursor = page.next ?? undefined;
    } while (inv.values['all'] === true && cursor !== undefined);
    if (!inv.json) {
      const [{ images }, { groups }] = await Promise.all([
        api.call(endpoints.listImages, { query: {} }),
        api.call(endpoints.listGroups),
      ]);
      const names = new Map([...images, ...groups].map((x) => [x.id, x.name] as const));
      printTable(ctx, entries, {
        at: (e) => when(e.at),
        actor: (e) => e.actor,
        action: (e) => e.action,
        target: (e) => auditTarget(e, names),
      });
    }
    return { entries, next: cursor ?? null };
  },
};

/**
 * What an audit entry is about, as a person names it: `rollout demo-os@2`, `group lab`,
 * `user alice`; only a target with no name of its own shows (the start of) its id.
 */
export function auditTarget(e: AuditEntry, names: ReadonlyMap<string, string>): string {
  const state = (e.after ?? e.before ?? {}) as Record<string, unknown>;
  const str = (k: string) => (typeof state[k] === 'string' ? (state[k] as string) : undefined);
  const image = str('image') ?? names.get(str('imageId') ?? '');
  const version = str('version');
  const type = e.targetType.replace(/_/g, ' ');
  if (image !== undefined && version !== undefined) return `${type} ${image}@${version}`;
  const name = str('name') ?? str('username');
  if (name !== undefined) return `${type} ${name}`;
  const group = names.get(str('groupId') ?? '');
  const id = e.targetId === null ? '' : ` ${e.targetId.slice(0, 8)}…`;
  return group !== undefined ? `${type}${id} (group ${group})` : `${type}${id}`;
}

const apiTokensCreate: Command = {
  name: 'api-tokens create',
  summary: 'Create an API token for scripts; it acts as you and is shown only once.',
  usage: `Usage: bulkhead api-tokens create --name NAME [--expires-in-days N]

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    name: { type: 'string' },
    'expires-in-days': { type: 'string' },
  },
  async run(inv, ctx) {
    const api = await connect(inv);
    const days = integerOption(inv, 'expires-in-days', 1, 3650);
    const created = await api.call(endpoints.createApiToken, {
      body: { name: requireString(inv, 'name'), ...(days ? { expiresInDays: days } : {}) },
    });
    if (!inv.json) {
      ctx.out(created.token);
      ctx.err(
        `API token ${created.name} (${created.id}), expires ${when(created.expiresAt)}; ` +
          'it is not shown again: keep it in a secret store.',
      );
    }
    return created;
  },
};

const apiTokensList = listCommand(
  'api-tokens list',
  endpoints.listApiTokens,
  'List API tokens (never their secrets).',
  {
    id: (t) => t.id,
    name: (t) => t.name,
    user: (t) => t.username,
    expires: (t) => when(t.expiresAt),
    'last used': (t) => when(t.lastUsedAt),
  },
);

const apiTokensRevoke: Command = {
  name: 'api-tokens revoke',
  summary: 'Revoke an API token by id.',
  usage: `Usage: bulkhead api-tokens revoke ID\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const id = inv.positionals[0];
    if (!id) throw new BulkheadError(ErrorCodes.USAGE, 'give the id of the token to revoke');
    const none = () =>
      new BulkheadError(ErrorCodes.NOT_FOUND, `no API token ${id}`, {
        hint: 'give an id from `bulkhead api-tokens list`',
      });
    const api = await connect(inv);
    try {
      await api.call(endpoints.revokeApiToken, { params: { id } });
    } catch (err) {
      // An id Center cannot take (too long, say) names no token either.
      const malformed =
        isBulkheadError(err, ErrorCodes.VALIDATION) && err.message.startsWith('params.id');
      if (malformed || isBulkheadError(err, ErrorCodes.NOT_FOUND)) throw none();
      throw err;
    }
    if (!inv.json) ctx.out(`Revoked ${id}.`);
    return { revoked: id };
  },
};

export const remoteCommands: Command[] = [
  login,
  logout,
  whoami,
  audit,
  apiTokensCreate,
  apiTokensList,
  apiTokensRevoke,
];
