import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { adminClient, type ApiClient } from './api-client.ts';
import { optionalString, type Invocation } from './command.ts';

/*
 * How the admin commands find Center and prove who they are.
 *   Credentials: --token TOKEN / BULKHEAD_TOKEN (scripts, CI), else the session `bulkhead
 *   login` saved in the credentials file (people at a terminal).
 *   Center: --center URL, else BULKHEAD_CENTER, else the saved session's Center (so a token
 *   set in the environment still goes to the Center one logged in to).
 * The file lives at $BULKHEAD_CREDENTIALS, else $XDG_CONFIG_HOME/bulkhead/credentials.json,
 * else ~/.config/bulkhead/credentials.json; it is created 0600 in a 0700 directory, because the
 * token in it acts as its administrator until it expires.
 */

export const SavedSessionSchema = z.strictObject({
  center: z.string().url(),
  token: z.string().min(1),
  username: z.string(),
  role: z.string(),
  expiresAt: z.number().int(),
});
export type SavedSession = z.infer<typeof SavedSessionSchema>;

/** The options every admin command takes. */
export const connectionOptions = {
  center: { type: 'string' },
  token: { type: 'string' },
} as const;

export const CONNECTION_USAGE = `Connection: --center URL and --token TOKEN (or BULKHEAD_CENTER and BULKHEAD_TOKEN);
  without a token, the session saved by \`bulkhead login\`; without a URL, that session's Center.`;

export function credentialsPath(env: NodeJS.ProcessEnv = process.env): string {
  const given = env['BULKHEAD_CREDENTIALS'];
  if (given) return given;
  const base = env['XDG_CONFIG_HOME'] || join(homedir(), '.config');
  return join(base, 'bulkhead', 'credentials.json');
}

export async function readSession(path = credentialsPath()): Promise<SavedSession | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new BulkheadError(
      ErrorCodes.INPUT_UNREADABLE,
      `cannot read ${path}: ${errnoCode(err) ?? String(err)}`,
    );
  }
  let parsed: ReturnType<typeof SavedSessionSchema.safeParse>;
  try {
    parsed = SavedSessionSchema.safeParse(JSON.parse(text));
  } catch {
    parsed = SavedSessionSchema.safeParse(undefined);
  }
  if (!parsed.success) {
    throw new BulkheadError(ErrorCodes.USAGE, `${path} is not a saved session`, {
      hint: 'run `bulkhead login` again (or delete the file)',
    });
  }
  return parsed.data;
}

export async function saveSession(session: SavedSession, path = credentialsPath()): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify(session, null, 2) + '\n', { mode: 0o600 });
  // writeFile's mode applies only when it creates the file.
  await chmod(tmp, 0o600);
  await rename(tmp, path);
}

export async function forgetSession(path = credentialsPath()): Promise<boolean> {
  try {
    await rm(path);
    return true;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
}

/** An API client for the command's Center and credentials, or a usage error saying how. */
export async function connect(inv: Invocation, env = process.env): Promise<ApiClient> {
  // An empty variable is an unset one (`BULKHEAD_CENTER= bulkhead …`).
  const center = optionalString(inv, 'center') || env['BULKHEAD_CENTER'] || undefined;
  const token = optionalString(inv, 'token') || env['BULKHEAD_TOKEN'] || undefined;
  if (token !== undefined) {
    // The saved session is read only for its URL, and only when no other is given.
    const url = center ?? (await readSession(credentialsPath(env)))?.center;
    if (url === undefined) {
      throw new BulkheadError(ErrorCodes.USAGE, 'no Center to send the token to', {
        hint: 'give --center URL, set BULKHEAD_CENTER, or log in once with `bulkhead login --center URL` (its Center is then used)',
      });
    }
    return adminClient(url, token);
  }
  const saved = await readSession(credentialsPath(env));
  if (!saved) {
    throw new BulkheadError(ErrorCodes.USAGE, 'not logged in to any Center', {
      hint: 'run `bulkhead login --center URL --username NAME`, or give --center and --token',
    });
  }
  if (center && new URL(center).origin !== new URL(saved.center).origin) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `the saved session is for ${saved.center}, not ${center}`,
      { hint: 'log in to that Center, or give --token' },
    );
  }
  if (saved.expiresAt <= Date.now()) {
    throw new BulkheadError(ErrorCodes.UNAUTHENTICATED, 'the saved session has expired', {
      hint: `run \`bulkhead login --center ${saved.center} --username ${saved.username}\``,
    });
  }
  return adminClient(saved.center, saved.token);
}
