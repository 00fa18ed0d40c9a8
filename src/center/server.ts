import { createHash, timingSafeEqual } from 'node:crypto';
import helmet from '@fastify/helmet';
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import {
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { sql } from 'kysely';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { z } from 'zod';
import {
  adminEndpoints,
  BulkheadError,
  deviceEndpoints,
  ErrorCodes,
  type EndpointAuth,
} from '../protocol/index.ts';
import type { CenterApp, CenterContext, CenterDeps } from './context.ts';
import { adminRoutes } from './admin/index.ts';
import { createPasswordHasher, registerAuthentication, securitySchemeOf } from './auth/index.ts';
import { DeviceCredentials } from './devices/credentials.ts';
import { DeviceStanding } from './devices/standing.ts';
import { deviceApi } from './devices/index.ts';
import { fleetRoutes } from './fleet/index.ts';
import { imagesAdmin } from './images/index.ts';
import { rolloutRoutes } from './rollouts/index.ts';
import { centerErrorHandler, centerNotFoundHandler } from './http-errors.ts';
import { registerBodyParsers } from './http/body.ts';
import { registerAdminEtags } from './http/etag.ts';
import {
  admitUnderPressure,
  addressMatcher,
  closeUnreadBodies,
  guardConnections,
  OVERLOAD_RETRY_AFTER_SECONDS,
  pressureOf,
  registerLoadShedding,
  serverTimeouts,
} from './http/limits.ts';
import { createLocalPushBus } from './push.ts';
import { createRateLimitStore } from './http/rate-limit-store.ts';
import { registerStoreRoute } from './store-route.ts';
import { registerConsoleRoutes } from './console-route.ts';

/** Client addresses each rate-limited route remembers. */
const RATE_LIMIT_KEYS = 10_000;
/** How often a replica on PostgreSQL shares its per-address counts with the others. */
const RATE_LIMIT_FLUSH_MS = 1000;

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Shares this replica's per-address request counts through the database and reads the
     * others' now, rather than at the next tick (for tests); a no-op on SQLite.
     */
    flushRateLimits(): Promise<void>;
  }
}

export type { CenterApp, CenterContext, CenterDeps } from './context.ts';

/** Declares in the OpenAPI document which bearer token each route needs. */
function withSecurity<T extends { schema: object }>(
  transformed: T,
  route: { config?: unknown },
): T {
  const auth = (route.config as { auth?: EndpointAuth } | undefined)?.auth;
  const scheme = securitySchemeOf(auth);
  if (scheme === undefined) return transformed;
  return { ...transformed, schema: { ...transformed.schema, security: [{ [scheme]: [] }] } };
}

/**
 * Security headers on every response (@fastify/helmet), with a Content-Security-Policy ready
 * for a console served by Center: its own scripts, styles and API only, nothing inline, never
 * framed. Answers that set no Cache-Control of their own get `no-store`: API answers are for
 * one caller and may carry secrets (sessions, tokens, desired states), so no browser or proxy
 * keeps them. The chunk store sets its own (immutable objects are cacheable by design).
 */
async function registerSecurityHeaders(app: FastifyInstance): Promise<void> {
  await app.register(helmet, {
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        defaultSrc: ["'self'"],
        baseUri: ["'self'"],
        connectSrc: ["'self'"],
        fontSrc: ["'self'"],
        formAction: ["'self'"],
        frameAncestors: ["'none'"],
        imgSrc: ["'self'", 'data:'],
        objectSrc: ["'none'"],
        scriptSrc: ["'self'"],
        scriptSrcAttr: ["'none'"],
        styleSrc: ["'self'"],
      },
    },
    referrerPolicy: { policy: 'no-referrer' },
    xFrameOptions: { action: 'deny' },
  });
  app.addHook('onSend', async (_req, reply, payload) => {
    if (!reply.hasHeader('cache-control')) void reply.header('cache-control', 'no-store');
    return payload;
  });
}

/** Whether `authorization` is `Bearer <token>`, compared in constant time. */
function isBearer(authorization: string | undefined, token: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s).digest();
  return timingSafeEqual(digest(authorization ?? ''), digest(`Bearer ${token}`));
}

/**
 * The listener of `metricsListen`: `/metrics` and nothing else, without a token, for an
 * address only the monitoring system reaches.
 */
export async function createMetricsApp(
  metrics: Registry,
  log: CenterDeps['log'],
): Promise<FastifyInstance> {
  const app = Fastify({ loggerInstance: log.child({ component: 'http' }) as FastifyBaseLogger });
  await registerSecurityHeaders(app);
  app.get('/metrics', async (_req, reply) => {
    reply.type(metrics.contentType);
    return metrics.metrics();
  });
  return app;
}

/** `POST /api/v1/admin/login`: a route's method and path, as one key. */
function routeKey(route: { method: string | readonly string[]; path: string }): string {
  return `${String(route.method)} ${route.path}`;
}

/**
 * Builds Center's HTTP application (not listening): health, metrics, the OpenAPI document and
 * the read-only chunk store. Later plugins add the device and admin APIs.
 */
export async function createCenterApp(given: CenterDeps): Promise<CenterApp> {
  const push = given.push ?? createLocalPushBus();
  const deps: CenterContext = {
    ...given,
    push,
    deviceCredentials: new DeviceCredentials(given.signingKey, given.now),
    deviceStanding: new DeviceStanding({
      db: given.database.db,
      signer: given.signingKey,
      now: given.now,
      push,
    }),
    passwords: createPasswordHasher({ maxQueued: given.config.passwordHashQueue }),
  };
  const { trustedProxies } = deps.config;
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'http' }) as FastifyBaseLogger,
    bodyLimit: deps.config.bodyLimit,
    ...serverTimeouts(deps.config),
    // X-Forwarded-For is believed only from the proxies the admin named: anyone else could
    // pick the address that rate limits, the login throttle and the audit trail see.
    trustProxy: trustedProxies.length > 0 ? [...trustedProxies] : false,
    // The router's own refusals (bad percent-encoding, a parameter too long) get the one
    // error body too.
    frameworkErrors: centerErrorHandler,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(centerErrorHandler);
  registerBodyParsers(app);
  // Before any route, so that every route sheds load.
  await registerLoadShedding(app, deps.config);
  closeUnreadBodies(app);
  app.addHook('onClose', async () => deps.deviceStanding.close());
  app.addHook('onClose', async () => deps.passwords.close());

  await registerSecurityHeaders(app);
  registerAdminEtags(app);

  // Per-address limits of the anonymous routes, keyed by req.ip (an IPv6 address by its /64),
  // refused with 429 and Retry-After before the body is read. The table below gives each route
  // its limit; this hook runs before the plugin's own, which reads `config.rateLimit`.
  const perAddressPerMinute = new Map<string, number>([
    [routeKey(adminEndpoints.login), deps.config.loginPerMinute],
    [routeKey(deviceEndpoints.enrol), deps.config.enrolPerMinute],
    [routeKey(deviceEndpoints.challenge), deps.config.deviceAuthPerMinute],
    [routeKey(deviceEndpoints.token), deps.config.deviceAuthPerMinute],
  ]);
  app.addHook('onRoute', (route) => {
    const max = perAddressPerMinute.get(routeKey({ method: route.method, path: route.url }));
    if (max === undefined) return;
    route.config = { ...route.config, rateLimit: { max, timeWindow: 60_000 } };
  });
  // Counted in this process's memory, bounded per route (http/rate-limit-store.ts). On
  // PostgreSQL the replicas share the counts through the database, within about a second:
  // each flushes its increments once a second in one batched upsert and reads the totals back,
  // so a flood costs one write a second, not one a request, and N replicas do not give N times
  // the limit. On SQLite there is one process and nothing to share. The login throttle, which
  // guards passwords, is in the database on both (admin/login-throttle.ts).
  const rateLimits = createRateLimitStore({
    now: deps.now,
    maxKeys: RATE_LIMIT_KEYS,
    ...(deps.database.dialect === 'postgres'
      ? {
          shared: {
            db: deps.database.db,
            log: deps.log.child({ component: 'rate-limit' }),
            flushEveryMs:
              given.rateLimitFlushMs === undefined ? RATE_LIMIT_FLUSH_MS : given.rateLimitFlushMs,
          },
        }
      : {}),
  });
  app.addHook('onClose', () => rateLimits.close());
  app.decorate('flushRateLimits', rateLimits.flush);
  await app.register(rateLimit, {
    global: false,
    store: rateLimits.Store,
    errorResponseBuilder: (_req, context) => {
      const seconds = Math.max(1, Math.ceil(context.ttl / 1000));
      return new BulkheadError(
        ErrorCodes.RATE_LIMITED,
        `too many requests to this route from this address; try again in ${seconds} s`,
        { retryable: true, details: { retryAfterMs: seconds * 1000 } },
      );
    },
  });

  await app.register(swagger, {
    openapi: {
      info: { title: 'Bulkhead Center', version: '0.1.0' },
      servers: [{ url: deps.config.publicUrl }],
      components: {
        securitySchemes: {
          admin: {
            type: 'http',
            scheme: 'bearer',
            description: 'A session token from POST /api/v1/admin/login, or an API token.',
          },
          device: {
            type: 'http',
            scheme: 'bearer',
            description: 'A device token from POST /api/v1/device/auth/token.',
          },
        },
      },
    },
    transform: (route) => withSecurity(jsonSchemaTransform(route), route.route),
  });

  const metrics = deps.metrics ?? new Registry();
  collectDefaultMetrics({ register: metrics, prefix: 'bulkhead_center_' });
  deps.metrics = metrics;
  const requests = new Counter({
    name: 'bulkhead_center_http_requests_total',
    help: 'HTTP requests answered, by route and status class.',
    labelNames: ['method', 'route', 'status'],
    registers: [metrics],
  });
  new Gauge({
    name: 'bulkhead_center_push_connections',
    help: 'Push channels devices hold open to this replica.',
    registers: [metrics],
    collect() {
      this.set(deps.push.connections());
    },
  });
  const latency = new Histogram({
    name: 'bulkhead_center_http_request_seconds',
    help: 'Time to answer an HTTP request, by route.',
    labelNames: ['method', 'route'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [metrics],
  });
  const refusedConnections = new Counter({
    name: 'bulkhead_center_connections_refused_total',
    help: 'Connections closed on accept because their address held maxConnectionsPerAddress.',
    registers: [metrics],
  });
  guardConnections(app.server, {
    maxPerAddress: deps.config.maxConnectionsPerAddress,
    headersTimeoutMs: deps.config.headersTimeoutSeconds * 1000,
    // A trusted reverse proxy is one address carrying every client.
    isExempt: addressMatcher(trustedProxies),
    onRefused: () => refusedConnections.inc(),
  });
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    requests.inc({ method: req.method, route, status: `${Math.floor(reply.statusCode / 100)}xx` });
    latency.observe({ method: req.method, route }, reply.elapsedTime / 1000);
  });

  app.get(
    '/healthz',
    {
      // Answered while Center sheds load, to say so.
      config: { pressureHandler: admitUnderPressure },
      schema: {
        description:
          'Liveness and readiness: the process answers, is not shedding load, and its database is reachable.',
        response: {
          200: z.object({ status: z.literal('ok') }),
          503: z.object({ status: z.literal('unavailable'), reason: z.string() }),
        },
      },
    },
    async (_req, reply) => {
      const pressure = pressureOf(app, deps.config);
      if (pressure !== undefined) {
        return reply
          .code(503)
          .header('retry-after', String(OVERLOAD_RETRY_AFTER_SECONDS))
          .send({ status: 'unavailable' as const, reason: `overloaded: ${pressure}` });
      }
      try {
        await sql`select 1`.execute(deps.database.db);
        return { status: 'ok' as const };
      } catch (err) {
        return reply
          .code(503)
          .send({ status: 'unavailable' as const, reason: `database: ${(err as Error).message}` });
      }
    },
  );

  // /metrics on the main listener only with a token (metricsToken); else at most on the
  // separate listener of metricsListen (createMetricsApp), or nowhere.
  const { metricsToken } = deps.config;
  if (metricsToken !== null) {
    app.get('/metrics', { schema: { hide: true } }, async (req, reply) => {
      if (!isBearer(req.headers.authorization, metricsToken)) {
        throw new BulkheadError(
          ErrorCodes.UNAUTHENTICATED,
          '/metrics needs "Authorization: Bearer <metricsToken>" (Center\'s configuration)',
        );
      }
      reply.type(metrics.contentType);
      return metrics.metrics();
    });
  }

  app.get('/api/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  registerStoreRoute(app, deps.config.storeDir);
  // Pages of the console that match no route (client-side routes) get its page.
  const consolePages = registerConsoleRoutes(app, deps.config.consoleDir);
  app.setNotFoundHandler((req, reply) =>
    consolePages.isPage(req) ? consolePages.sendPage(reply) : centerNotFoundHandler(req, reply),
  );
  // Authentication first: its hooks reach every route the domains below register.
  registerAuthentication(app, {
    db: deps.database.db,
    now: deps.now,
    deviceCredentials: deps.deviceCredentials,
    deviceStanding: deps.deviceStanding,
  });
  // Each domain registers its routes here, in its own line.
  await app.register(deviceApi(deps));
  await app.register(adminRoutes, deps);
  await app.register(fleetRoutes, deps);
  await app.register(imagesAdmin, deps);
  await app.register(rolloutRoutes, deps);
  return app;
}
