import { isIP } from 'node:net';
import { isAbsolute, join, resolve } from 'node:path';
import { getHeapStatistics } from 'node:v8';
import { z } from 'zod';
import {
  configError,
  configFromVariables,
  numberOrText,
  readConfigFile as readConfigFileOf,
  validateConfig,
} from '../config/index.ts';
import { MAX_REPORT_BYTES, MAX_REPORT_EVENTS } from '../protocol/index.ts';

/** Where the set-up builds the console: web/console/dist of this checkout. */
const BUILT_CONSOLE = resolve(import.meta.dirname, '../../web/console/dist');

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/, 'must be HOST:PORT, e.g. 127.0.0.1:8080')
  .refine((v) => Number(v.slice(v.lastIndexOf(':') + 1)) <= 65535, 'port must be at most 65535');

const httpUrl = z
  .string()
  .url()
  .refine((v) => /^https?:\/\//.test(v), 'must be an http(s) URL');

/** An IPv4 or IPv6 address, or a CIDR block of them (`10.0.0.0/8`, `fd00::/8`). */
const addressOrCidr = z.string().refine((v) => {
  const [address = '', prefix, ...rest] = v.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}, 'must be an IP address or CIDR block, e.g. 10.0.0.5 or 10.0.0.0/8');

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
  /**
   * Largest request body, in bytes, of an admin or device route that declares no limit of its
   * own. Uploads (chunks, indexes, manifests) and device reports declare theirs, and anonymous
   * routes (login, enrolment, device authentication) accept a few KiB; a body over its route's
   * limit is refused with 413 from its Content-Length, or cut off once it passes the limit.
   */
  bodyLimit: z
    .number()
    .int()
    .min(1024)
    .max(256 * 1024 * 1024)
    .default(1024 * 1024),
  /**
   * Seconds a client has to send a request's complete headers, from when it connects or from
   * the request's first byte; a connection that sends nothing is closed after as long.
   */
  headersTimeoutSeconds: z.number().int().min(1).max(300).default(10),
  /**
   * Seconds a client has to send a whole request, body included (the largest upload is a
   * 64 MiB chunk index). At least `headersTimeoutSeconds`.
   */
  requestTimeoutSeconds: z.number().int().min(1).max(3600).default(300),
  /**
   * Seconds an idle keep-alive connection stays open between requests. Keep it longer than
   * the idle timeout of a load balancer in front (60 s for most), so that the balancer, not
   * Center, closes an idle connection.
   */
  keepAliveTimeoutSeconds: z.number().int().min(1).max(3600).default(72),
  /**
   * Connections one client address may hold open at once; a connection over the cap is
   * closed as soon as it is accepted, so one client cannot take every file descriptor. PCs
   * behind one NAT share an address and each holds its push connection: raise it for a site
   * with more PCs than this behind one address.
   */
  maxConnectionsPerAddress: z.number().int().min(1).max(1_000_000).default(256),
  /**
   * Load shedding: while the event loop's mean delay is over this many milliseconds, requests
   * are answered 503 with Retry-After (and /healthz says so) instead of queuing up.
   */
  maxEventLoopDelayMs: z.number().int().min(1).max(60_000).default(1000),
  /**
   * Load shedding: while the V8 heap in use is over this many bytes, requests are answered 503
   * with Retry-After. Default: 90% of the heap limit Node runs with.
   */
  maxHeapUsedBytes: z
    .number()
    .int()
    .min(1024 * 1024)
    .optional(),
  /**
   * Events one device may report per minute (per replica); more are answered 429 with
   * Retry-After, stored nothing, and Engine sends them again after that. At least
   * MAX_REPORT_EVENTS, so that a full batch always fits.
   */
  reportEventsPerMinute: z.number().int().min(MAX_REPORT_EVENTS).max(1_000_000).default(2_000),
  /**
   * Bytes of events (as JSON) one device may report per minute (per replica), answered like
   * `reportEventsPerMinute`. At least MAX_REPORT_BYTES, so that a full batch always fits.
   */
  reportBytesPerMinute: z
    .number()
    .int()
    .min(MAX_REPORT_BYTES)
    .max(1024 * 1024 * 1024)
    .default(4 * 1024 * 1024),

  // Addresses, limits and metrics (see README "Deploying Center safely").
  /**
   * Addresses or CIDR blocks of the reverse proxies or load balancers Center sits behind. Only a
   * request arriving from one of them has its client address taken from `X-Forwarded-For` (and
   * its protocol and host from `X-Forwarded-Proto`/`-Host`); from anywhere else the header is
   * ignored and the peer's own address counts. Default none: a client cannot choose the address
   * that rate limits, login throttling and the audit trail see.
   */
  trustedProxies: z.array(addressOrCidr).max(256).default([]),
  /** Login attempts one client address may make per minute, whatever the usernames. */
  loginPerMinute: z.number().int().min(1).max(100_000).default(30),
  /** Enrolment attempts one client address may make per minute. */
  enrolPerMinute: z.number().int().min(1).max(100_000).default(20),
  /**
   * Device challenge and token requests one client address may make per minute, together. A
   * site whose PCs share one public address makes about 2 per PC per 15 minutes, and all of
   * them at once after an outage: raise it for large sites behind NAT.
   */
  deviceAuthPerMinute: z.number().int().min(1).max(1_000_000).default(600),
  /**
   * Password checks that may wait for the one thread that hashes passwords (scrypt). Beyond
   * them a login is answered at once with 429 and Retry-After, so a flood of logins never
   * delays anything but logins.
   */
  passwordHashQueue: z.number().int().min(1).max(10_000).default(32),
  /**
   * A separate address (HOST:PORT) serving only `/metrics`, without a token: bind it where only
   * the monitoring system reaches it (loopback, a management network). Unset: no such listener.
   */
  metricsListen: hostPort.optional(),
  /**
   * A bearer token (at least 32 characters) that lets `/metrics` be read on the main listener
   * with `Authorization: Bearer <token>`. Unset: the main listener has no `/metrics`. Give it by
   * the config file or `BULKHEAD_METRICS_TOKEN`, not a flag (others on the host see flags).
   */
  metricsToken: z.string().min(32).max(256).optional(),
  /**
   * Directory of the built web console (`index.html` and `assets/`) that Center serves at `/`;
   * by default the one the set-up builds, `web/console/dist` beside Center's code.
   */
  consoleDir: z.string().min(1).optional(),
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
  readonly headersTimeoutSeconds: number;
  readonly requestTimeoutSeconds: number;
  readonly keepAliveTimeoutSeconds: number;
  readonly maxConnectionsPerAddress: number;
  readonly maxEventLoopDelayMs: number;
  /** Resolved: the configured value, or 90% of the V8 heap limit. */
  readonly maxHeapUsedBytes: number;
  readonly reportEventsPerMinute: number;
  readonly reportBytesPerMinute: number;
  readonly trustedProxies: readonly string[];
  readonly loginPerMinute: number;
  readonly enrolPerMinute: number;
  readonly deviceAuthPerMinute: number;
  readonly passwordHashQueue: number;
  readonly metricsListen: { readonly host: string; readonly port: number } | null;
  readonly metricsToken: string | null;
  /** The chunk store Center owns and serves. */
  readonly storeDir: string;
  /** The built web console Center serves at `/`. */
  readonly consoleDir: string;
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
  BULKHEAD_HEADERS_TIMEOUT_SECONDS: 'headersTimeoutSeconds',
  BULKHEAD_REQUEST_TIMEOUT_SECONDS: 'requestTimeoutSeconds',
  BULKHEAD_KEEP_ALIVE_TIMEOUT_SECONDS: 'keepAliveTimeoutSeconds',
  BULKHEAD_MAX_CONNECTIONS_PER_ADDRESS: 'maxConnectionsPerAddress',
  BULKHEAD_MAX_EVENT_LOOP_DELAY_MS: 'maxEventLoopDelayMs',
  BULKHEAD_MAX_HEAP_USED_BYTES: 'maxHeapUsedBytes',
  BULKHEAD_REPORT_EVENTS_PER_MINUTE: 'reportEventsPerMinute',
  BULKHEAD_REPORT_BYTES_PER_MINUTE: 'reportBytesPerMinute',
  BULKHEAD_TRUSTED_PROXIES: 'trustedProxies',
  BULKHEAD_LOGIN_PER_MINUTE: 'loginPerMinute',
  BULKHEAD_ENROL_PER_MINUTE: 'enrolPerMinute',
  BULKHEAD_DEVICE_AUTH_PER_MINUTE: 'deviceAuthPerMinute',
  BULKHEAD_PASSWORD_HASH_QUEUE: 'passwordHashQueue',
  BULKHEAD_METRICS_LISTEN: 'metricsListen',
  BULKHEAD_METRICS_TOKEN: 'metricsToken',
  BULKHEAD_CONSOLE_DIR: 'consoleDir',
};

/** Keys whose variable holds a number. */
const NUMERIC_KEYS: ReadonlySet<keyof CenterConfigInput> = new Set([
  'bodyLimit',
  'pollIntervalSeconds',
  'headersTimeoutSeconds',
  'requestTimeoutSeconds',
  'keepAliveTimeoutSeconds',
  'maxConnectionsPerAddress',
  'maxEventLoopDelayMs',
  'maxHeapUsedBytes',
  'reportEventsPerMinute',
  'reportBytesPerMinute',
  'loginPerMinute',
  'enrolPerMinute',
  'deviceAuthPerMinute',
  'passwordHashQueue',
]);

/** `a, b,c` as `['a', 'b', 'c']`. */
function commaList(value: string): string[] {
  return value
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
}

/** Reads the `--config` file: a JSON object of the schema's keys. */
export function readConfigFile(path: string): Promise<CenterConfigInput> {
  return readConfigFileOf<CenterConfigInput>(path);
}

/** Configuration keys given by `BULKHEAD_*` environment variables. */
export function configFromEnv(env: NodeJS.ProcessEnv): CenterConfigInput {
  return configFromVariables(env, ENV, (key, value) => {
    if (key === 'mirrors' || key === 'trustedProxies') return commaList(value);
    return NUMERIC_KEYS.has(key) ? numberOrText(value) : value;
  }) as CenterConfigInput;
}

/**
 * Merges the sources (later wins), validates, resolves paths against `cwd` and freezes.
 * Throws ERR_CONFIG_INVALID naming the key and what is wrong with it.
 */
export function resolveConfig(sources: CenterConfigInput[], cwd = process.cwd()): CenterConfig {
  const c = validateConfig(CenterConfigSchema, sources);
  if (c.headersTimeoutSeconds > c.requestTimeoutSeconds) {
    throw configError(
      `configuration key "headersTimeoutSeconds": ${c.headersTimeoutSeconds} is longer than requestTimeoutSeconds (${c.requestTimeoutSeconds})`,
    );
  }
  const dataDir = isAbsolute(c.dataDir) ? c.dataDir : resolve(cwd, c.dataDir);
  const listen = splitHostPort(c.listen);
  const database = c.database ?? `sqlite:${join(dataDir, 'center.db')}`;
  const publicUrl = c.publicUrl ?? `http://${c.listen}`;
  return Object.freeze({
    dataDir,
    listen,
    database,
    publicUrl: publicUrl.replace(/\/+$/, ''),
    mirrors: Object.freeze([...c.mirrors]),
    pollIntervalSeconds: c.pollIntervalSeconds,
    logLevel: c.logLevel,
    bodyLimit: c.bodyLimit,
    headersTimeoutSeconds: c.headersTimeoutSeconds,
    requestTimeoutSeconds: c.requestTimeoutSeconds,
    keepAliveTimeoutSeconds: c.keepAliveTimeoutSeconds,
    maxConnectionsPerAddress: c.maxConnectionsPerAddress,
    maxEventLoopDelayMs: c.maxEventLoopDelayMs,
    maxHeapUsedBytes: c.maxHeapUsedBytes ?? Math.floor(getHeapStatistics().heap_size_limit * 0.9),
    reportEventsPerMinute: c.reportEventsPerMinute,
    reportBytesPerMinute: c.reportBytesPerMinute,
    trustedProxies: Object.freeze([...c.trustedProxies]),
    loginPerMinute: c.loginPerMinute,
    enrolPerMinute: c.enrolPerMinute,
    deviceAuthPerMinute: c.deviceAuthPerMinute,
    passwordHashQueue: c.passwordHashQueue,
    metricsListen: c.metricsListen === undefined ? null : splitHostPort(c.metricsListen),
    metricsToken: c.metricsToken ?? null,
    storeDir: join(dataDir, 'store'),
    consoleDir:
      c.consoleDir === undefined
        ? BUILT_CONSOLE
        : isAbsolute(c.consoleDir)
          ? c.consoleDir
          : resolve(cwd, c.consoleDir),
  });
}

function splitHostPort(value: string): { readonly host: string; readonly port: number } {
  const sep = value.lastIndexOf(':');
  const host = value.slice(0, sep).replace(/^\[|\]$/g, '');
  return Object.freeze({ host, port: Number(value.slice(sep + 1)) });
}
