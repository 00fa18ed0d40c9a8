import {
  configFromEnv,
  createUser,
  generatePassword,
  migrateToLatest,
  openDatabase,
  readConfigFile,
  resolveConfig,
  updateUser,
  type CenterConfigInput,
  type CenterDatabase,
} from '../center/index.ts';
import {
  AdminRoleSchema,
  AdminUsernameSchema,
  BulkheadError,
  ErrorCodes,
} from '../protocol/index.ts';
import { optionalString, requireString, type Command, type Invocation } from './command.ts';

const databaseOptions = {
  data: { type: 'string' },
  database: { type: 'string' },
  config: { type: 'string' },
} as const;

/**
 * Opens the database the configuration names, as `center serve` would, and migrates it (safe
 * while a Center runs: the migrator locks). Works whether Center is running or not.
 */
async function withDatabase<T>(
  inv: Invocation,
  use: (database: CenterDatabase) => Promise<T>,
): Promise<T> {
  const file = optionalString(inv, 'config');
  const config = resolveConfig([
    file ? await readConfigFile(file) : {},
    configFromEnv(process.env),
    { dataDir: optionalString(inv, 'data'), database: optionalString(inv, 'database') },
  ] satisfies CenterConfigInput[]);
  const database = await openDatabase({ url: config.database });
  try {
    await migrateToLatest(database.db);
    return await use(database);
  } finally {
    await database.close();
  }
}

function username(inv: Invocation): string {
  const name = requireString(inv, 'username');
  const parsed = AdminUsernameSchema.safeParse(name);
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--username "${name}" is not a valid name (letters, digits and . _ @ -, at most 64)`,
    );
  }
  return parsed.data;
}

// The audit trail names the command line as the actor: it acts with the database's authority.
const CLI_ACTOR = { label: 'system' };

const create: Command = {
  name: 'center admin create',
  summary: "Create a Center administrator in Center's database; prints a one-time password.",
  usage: `Usage: bulkhead center admin create --username NAME --role admin|operator|viewer
         [--data DIR] [--database URL] [--config FILE]

  Works on the database directly (the same one \`center serve\` uses), with Center running or not.`,
  options: { ...databaseOptions, username: { type: 'string' }, role: { type: 'string' } },
  async run(inv, ctx) {
    const name = username(inv);
    const role = AdminRoleSchema.safeParse(requireString(inv, 'role'));
    if (!role.success) {
      throw new BulkheadError(ErrorCodes.USAGE, '--role must be admin, operator or viewer');
    }
    const created = await withDatabase(inv, (database) =>
      createUser(database.db, CLI_ACTOR, { username: name, role: role.data }, Date.now()),
    );
    if (!inv.json) {
      ctx.out(`Administrator "${name}" (${role.data}) created with the one-time password`);
      ctx.out(`  ${created.password ?? ''}`);
      ctx.out('It is shown only now.');
    }
    return { username: name, role: role.data, id: created.user.id, password: created.password };
  },
};

const reset: Command = {
  name: 'center admin reset',
  summary: "Give a Center administrator a new one-time password; ends the user's sessions.",
  usage: `Usage: bulkhead center admin reset --username NAME [--data DIR] [--database URL]
         [--config FILE]

  Works on the database directly, with Center running or not.`,
  options: { ...databaseOptions, username: { type: 'string' } },
  async run(inv, ctx) {
    const name = username(inv);
    const password = generatePassword();
    await withDatabase(inv, (database) =>
      updateUser(database.db, CLI_ACTOR, { username: name }, { password }, Date.now()),
    );
    if (!inv.json) {
      ctx.out(`New one-time password for "${name}":`);
      ctx.out(`  ${password}`);
      ctx.out('It is shown only now; their sessions have ended.');
    }
    return { username: name, password };
  },
};

export const adminCommands: Command[] = [create, reset];
