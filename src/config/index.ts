import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

/*
 * How Center and Engine read their configuration: one zod schema each (every key documented
 * there, with its default), filled from (lowest first) a JSON file (`--config`), `BULKHEAD_*`
 * environment variables and command-line flags, validated once at start. A bad value stops
 * start-up with ERR_CONFIG_INVALID naming the key.
 */

export function configError(message: string, hint?: string): BulkheadError {
  return new BulkheadError(ErrorCodes.CONFIG_INVALID, message, hint ? { hint } : {});
}

/** Reads a `--config` file: a JSON object of the schema's keys (validated with the rest). */
export async function readConfigFile<T>(path: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw configError(`cannot read the configuration file ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw configError(`the configuration file ${path} is not valid JSON`);
  }
}

/**
 * The keys set by environment variables: `variables` maps each variable to its key, `parse`
 * turns a value's text into what the key holds. Unset and empty variables set nothing.
 */
export function configFromVariables<K extends string>(
  env: NodeJS.ProcessEnv,
  variables: Readonly<Record<string, K>>,
  parse: (key: K, text: string) => unknown,
): Partial<Record<K, unknown>> {
  const out: Partial<Record<K, unknown>> = {};
  for (const [name, key] of Object.entries(variables) as [string, K][]) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    out[key] = parse(key, value);
  }
  return out;
}

/** Text as a number when it is one; otherwise the text, so validation names the key. */
export function numberOrText(text: string): unknown {
  const n = Number(text);
  return text.trim() === '' || Number.isNaN(n) ? text : n;
}

/**
 * Merges `sources` (later wins; undefined values set nothing) and validates them with `schema`.
 * @throws BulkheadError ERR_CONFIG_INVALID naming the first bad key and what is wrong with it.
 */
export function validateConfig<S extends z.ZodObject>(
  schema: S,
  sources: readonly object[],
): z.infer<S> {
  const merged: Record<string, unknown> = {};
  for (const s of sources) {
    for (const [k, v] of Object.entries(s)) if (v !== undefined) merged[k] = v;
  }
  const parsed = schema.safeParse(merged);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const key = issue.path.join('.') || '(root)';
  throw configError(
    `configuration key "${key}": ${issue.message}`,
    issue.code === 'unrecognized_keys'
      ? `known keys: ${Object.keys(schema.shape).join(', ')}`
      : undefined,
  );
}
