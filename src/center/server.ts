import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger } from 'fastify';
import {
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from 'fastify-type-provider-zod';
import { sql } from 'kysely';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { z } from 'zod';
import type { EndpointAuth } from '../protocol/index.ts';
import type { CenterApp, CenterContext, CenterDeps } from './context.ts';
import { adminRoutes } from './admin/index.ts';
import { registerAuthentication, securitySchemeOf } from './auth/index.ts';
import { DeviceCredentials } from './devices/credentials.ts';
import { DeviceStanding } from './devices/standing.ts';
import { deviceApi } from './devices/index.ts';
import { fleetRoutes } from './fleet/index.ts';
import { imagesAdmin } from './images/index.ts';
import { rolloutRoutes } from './rollouts/index.ts';
import { centerErrorHandler, centerNotFoundHandler } from './http-errors.ts';
import { registerBodyParsers } from './http/body.ts';
import {
  admitUnderPressure,
  closeUnreadBodies,
  guardConnections,
  OVERLOAD_RETRY_AFTER_SECONDS,
  pressureOf,
  registerLoadShedding,
  serverTimeouts,
} from './http/limits.ts';
import { createLocalPushBus } from './push.ts';
import { registerStoreRoute } from './store-route.ts';

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
  };
  const app = Fastify({
    loggerInstance: deps.log.child({ component: 'http' }) as FastifyBaseLogger,
    bodyLimit: deps.config.bodyLimit,
    ...serverTimeouts(deps.config),
    // Behind a load balancer, the client's address comes from X-Forwarded-For.
    trustProxy: true,
    // The router's own refusals (bad percent-encoding, a parameter too long) get the one
    // error body too.
    frameworkErrors: centerErrorHandler,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(centerErrorHandler);
  app.setNotFoundHandler(centerNotFoundHandler);
  registerBodyParsers(app);
  // Before any route, so that every route sheds load.
  await registerLoadShedding(app, deps.config);
  closeUnreadBodies(app);
  app.addHook('onClose', async () => deps.deviceStanding.close());

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

  const metrics = new Registry();
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
    // TODO(issue 10): exempt the configured trusted proxies (`trustedProxies`): a reverse proxy
    // is one address carrying every client.
    isExempt: () => false,
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

  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    reply.type(metrics.contentType);
    return metrics.metrics();
  });

  app.get('/api/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  registerStoreRoute(app, deps.config.storeDir);
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
