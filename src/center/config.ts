import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import {
  configFromVariables,
  readConfigFile as readConfigFileOf,
  validateConfig,
} from '../config/index.ts';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, 'must be HOST:PORT, e.g. 127.0.0.1:8080')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

const httpUrl = z
  .string()
  .url()
  .refine((v) => /^https?:\/\//.test(v), 'must be an http(s) URL');

/**
 * Center's configuration: one schema, every key documented, validated at start. Values come
 * from (lowest first) the defaults, a JSON file (`--config`), `BULKHEAD_*` environment variables
 * and command-line flags.
 */
export const CenterConfigSchema = z.strictObject({
  /** Directory of Center's state: the SQLite file, the chunk store, the signing key. */
  dataDir: z.string().min(1).default('./data'),
  /** Address and port the HTTP API listens on. */
  listen: hostPort.default('127.0.0.1:8080'),
  /**
   * Database URL: `sqlite:PATH` (default: `sqlite:<dataDir>/center.db`) or
   * `postgres://USER:PASSWORD@HOST:PORT/DB` when several Center replicas share one database.
   */
  database: z.string().min(1).optional(),
  /** The URL devices and browsers reach this Center at (behind a proxy, its public address). */
  publicUrl: httpUrl.optional(),
  /** Base URLs of mirrors or CDNs serving a copy of the chunk store, handed to devices. */
  mirrors: z.array(httpUrl).max(32).default([]),
  /**
   * How often devices poll for their desired state when no push arrives, in seconds (sent to
   * them in the document). A million devices every 300 s is 3,333 requests/s.
   */
  pollIntervalSeconds: z.number().int().min(10).max(86_400).default(60),
  /** Log level of the structured (pino) log. */
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Largest request body accepted, in bytes (chunk uploads are the large ones). */
  bodyLimit: z
    .number()
    .int()
    .min(1024)
    .max(256 * 1024 * 1024)
    .default(64 * 1024 * 1024),
});

export type CenterConfigInput = z.input<typeof CenterConfigSchema>;

/** The validated, resolved, frozen configuration. */
export interface CenterConfig {
  readonly dataDir: string;
  readonly listen: { readonly host: string; readonly port: number };
  readonly database: string;
  readonly publicUrl: string;
  readonly mirrors: readonly string[];
  readonly pollIntervalSeconds: number;
  readonly logLevel: z.infer<typeof CenterConfigSchema>['logLevel'];
  readonly bodyLimit: number;
  /** The chunk store Center owns and serves. */
  readonly storeDir: string;
}

/** Environment variables Center reads, and the key each sets. */
const ENV: Record<string, keyof CenterConfigInput> = {
  BULKHEAD_DATA_DIR: 'dataDir',
  BULKHEAD_LISTEN: 'listen',
  BULKHEAD_DATABASE: 'database',
  BULKHEAD_PUBLIC_URL: 'publicUrl',
  BULKHEAD_MIRRORS: 'mirrors',
  BULKHEAD_POLL_INTERVAL_SECONDS: 'pollIntervalSeconds',
  BULKHEAD_LOG_LEVEL: 'logLevel',
  BULKHEAD_BODY_LIMIT: 'bodyLimit',
};

/** Reads the `--config` file: a JSON object of the schema's keys. */
export function readConfigFile(path: string): Promise<CenterConfigInput> {
  return readConfigFileOf<CenterConfigInput>(path);
}

/** Configuration keys given by `BULKHEAD_*` environment variables. */
export function configFromEnv(env: NodeJS.ProcessEnv): CenterConfigInput {
  return configFromVariables(env, ENV, (key, value) => {
    if (key === 'mirrors') {
      return value
        .split(',')
        .map((m) => m.trim())
        .filter(Boolean);
    }
    return key === 'bodyLimit' || key === 'pollIntervalSeconds' ? Number(value) : value;
  }) as CenterConfigInput;
}

/**
 * Merges the sources (later wins), validates, resolves paths against `cwd` and freezes.
 * Throws ERR_CONFIG_INVALID naming the key and what is wrong with it.
 */
export function resolveConfig(sources: CenterConfigInput[], cwd = process.cwd()): CenterConfig {
  const c = validateConfig(CenterConfigSchema, sources);
  const dataDir = isAbsolute(c.dataDir) ? c.dataDir : resolve(cwd, c.dataDir);
  const sep = c.listen.lastIndexOf(':');
  const host = c.listen.slice(0, sep).replace(/^\[|\]$/g, '');
  const port = Number(c.listen.slice(sep + 1));
  const database = c.database ?? `sqlite:${join(dataDir, 'center.db')}`;
  const publicUrl = c.publicUrl ?? `http://${c.listen}`;
  return Object.freeze({
    dataDir,
    listen: Object.freeze({ host, port }),
    database,
    publicUrl: publicUrl.replace(/\/+$/, ''),
    mirrors: Object.freeze([...c.mirrors]),
    pollIntervalSeconds: c.pollIntervalSeconds,
    logLevel: c.logLevel,
    bodyLimit: c.bodyLimit,
    storeDir: join(dataDir, 'store'),
  });
}
