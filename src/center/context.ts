import type { FastifyBaseLogger, FastifyInstance, RawServerDefault } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { CenterConfig } from './config.ts';
import type { PasswordHasher } from './auth/password-hasher.ts';
import type { CenterDatabase } from './db/index.ts';
import type { DeviceCredentials } from './devices/credentials.ts';
import type { DeviceStanding } from './devices/standing.ts';
import type { PushBus } from './push.ts';

/*
 * What every domain's routes are given, apart from server.ts (which builds it), so that the
 * domains never import the module that registers them.
 */

/** Center's Fastify instance, with zod schemas as its type provider. */
export type CenterApp = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse,
  FastifyBaseLogger,
  ZodTypeProvider
>;

export interface CenterDeps {
  config: CenterConfig;
  /** pino logger (component `http` is derived from it). */
  log: Logger;
  /** The migrated database; `/healthz` checks that it answers. */
  database: CenterDatabase;
  /** Center's Ed25519 signing key (desired states and device tokens are signed with it). */
  signingKey: { key: KeyObject; keyid: string };
  /** The clock; every time Center records or compares comes from it. */
  now: () => Date;
  /** Tells online devices their desired state changed; a process-local bus when omitted. */
  push?: PushBus;
  /** The registry `/metrics` exposes; a new one when omitted. */
  metrics?: Registry;
  /**
   * How often a replica shares its rate-limit counts (PostgreSQL), in real milliseconds;
   * 1000 when omitted. `null`: only when `app.flushRateLimits()` is called (tests that judge
   * what a replica knows between two flushes).
   */
  rateLimitFlushMs?: number | null;
}

/** What Center's plugins get: the dependencies, with every optional one filled in. */
export type CenterContext = CenterDeps & {
  push: PushBus;
  /** Issues and checks device challenges and tokens (one per app: it caches verified tokens). */
  deviceCredentials: DeviceCredentials;
  /** Whether a device may still use Center (not killed or retired); one per app: it caches. */
  deviceStanding: DeviceStanding;
  /** The app's Prometheus registry (`/metrics`), for plugins that add metrics of their own. */
  metrics?: Registry;
  /** Hashes and checks passwords on a bounded queue of its own (closed with the app). */
  passwords: PasswordHasher;
};
