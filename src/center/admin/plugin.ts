import type { FastifyPluginAsync } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import {
  AdminUserListSchema,
  ApiTokenListSchema,
  AdminUserSchema,
  AuditPageSchema,
  AuditQuerySchema,
  BulkheadError,
  CreateAdminUserRequestSchema,
  CreateAdminUserResponseSchema,
  CreateApiTokenRequestSchema,
  CreateApiTokenResponseSchema,
  ErrorCodes,
  IdParamsSchema,
  LoginRequestSchema,
  LoginResponseSchema,
  MeResponseSchema,
  UpdateAdminUserRequestSchema,
  type AdminRoleName,
} from '../../protocol/index.ts';
import type { CenterContext } from '../server.ts';
import { listAudit } from './audit.ts';
import {
  createApiToken,
  listApiTokens,
  revokeApiToken,
  hasRole,
  login,
  logout,
  resolveCaller,
  type Caller,
} from './credentials.ts';
import { createLoginLimiter } from './rate-limit.ts';
import { createUser, deleteUser, listUsers, updateUser } from './users.ts';
import { rolloutRoutes } from '../rollouts/index.ts';
import { fleetRoutes } from '../fleet/index.ts';
import { imagesAdmin } from '../images/index.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The least role a route of the admin API needs; `public` needs no authentication. */
    adminRole?: AdminRoleName | 'public';
  }
  interface FastifyRequest {
    /** The authenticated caller of an admin API route (set before validation). */
    adminCaller?: Caller;
  }
}

/** The caller of a route that is not `public`; the onRequest hook guarantees it is set. */
export function callerOf(req: { adminCaller?: Caller }): Caller {
  if (!req.adminCaller) throw new BulkheadError(ErrorCodes.INTERNAL, 'route has no caller');
  return req.adminCaller;
}

/**
 * The admin API, under `/api/v1/admin`. Authorization lives in this plugin's one onRequest
 * hook: every route declares `config.adminRole` (a route without one fails at start-up), and
 * the hook resolves the bearer token to a caller (401) and compares roles (403) before the
 * body is even parsed, so an unauthenticated client learns nothing from validation errors.
 */
export const adminPlugin: FastifyPluginAsync<CenterContext> = async (parent, deps) => {
  const app = parent.withTypeProvider<ZodTypeProvider>();
  const { db } = deps.database;
  const nowMs = () => deps.now().getTime();
  const limiters = {
    perAddress: createLoginLimiter({ now: deps.now, maxFailures: 5 }),
    // Bounds guessing when addresses are forged; a lockout of one user lasts 15 minutes at most.
    perUsername: createLoginLimiter({ now: deps.now, maxFailures: 50 }),
  };

  app.addHook('onRoute', (route) => {
    if (route.config?.adminRole === undefined) {
      throw new Error(`admin route ${route.method} ${route.url} declares no config.adminRole`);
    }
  });

  app.addHook('onRequest', async (req) => {
    const required = req.routeOptions.config.adminRole;
    if (required === 'public') return;
    const caller = await resolveCaller(db, req.headers.authorization, nowMs());
    if (required === undefined || !hasRole(caller.role, required)) {
      throw new BulkheadError(
        ErrorCodes.FORBIDDEN,
        `this needs the ${required ?? 'admin'} role; ${caller.username} is ${caller.role}`,
      );
    }
    req.adminCaller = caller;
  });

  const prefix = '/api/v1/admin';
  const tags = ['admin'];

  app.post(
    `${prefix}/login`,
    {
      config: { adminRole: 'public' },
      schema: {
        tags,
        description:
          'Opens a 12-hour session. Five failures per username and address in 15 minutes lock ' +
          'that pair out (429 with Retry-After), fifty lock the username out from everywhere; ' +
          'the counts are per Center replica.',
        body: LoginRequestSchema,
        response: { 200: LoginResponseSchema },
      },
    },
    async (req) => login({ db, limiters, nowMs }, { ...req.body, ip: req.ip }),
  );

  app.post(
    `${prefix}/logout`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, description: 'Revokes the bearer token presented.' },
    },
    async (req, reply) => {
      await logout(db, callerOf(req), nowMs());
      return reply.code(204).send(null);
    },
  );

  app.get(
    `${prefix}/me`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, response: { 200: MeResponseSchema } },
    },
    async (req) => {
      const caller = callerOf(req);
      return { id: caller.userId, username: caller.username, role: caller.role, via: caller.via };
    },
  );

  app.post(
    `${prefix}/tokens`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Creates an API token acting as the caller; the token is shown only here.',
        body: CreateApiTokenRequestSchema,
        response: { 201: CreateApiTokenResponseSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await createApiToken(db, callerOf(req), req.body, nowMs())),
  );

  app.get(
    `${prefix}/tokens`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'API tokens (never their secrets), newest first.',
        response: { 200: ApiTokenListSchema },
      },
    },
    async () => ({ tokens: await listApiTokens(db) }),
  );

  app.delete(
    `${prefix}/tokens/:id`,
    {
      config: { adminRole: 'admin' },
      schema: { tags, params: IdParamsSchema, response: { 204: z.null() } },
    },
    async (req, reply) => {
      await revokeApiToken(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );

  app.get(
    `${prefix}/users`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, response: { 200: AdminUserListSchema } },
    },
    async () => ({ users: await listUsers(db) }),
  );

  app.post(
    `${prefix}/users`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description:
          'Creates an administrator; without a password, a generated one is returned once.',
        body: CreateAdminUserRequestSchema,
        response: { 201: CreateAdminUserResponseSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await createUser(db, callerOf(req), req.body, nowMs())),
  );

  app.patch(
    `${prefix}/users/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        params: IdParamsSchema,
        body: UpdateAdminUserRequestSchema,
        response: { 200: AdminUserSchema },
      },
    },
    async (req) => updateUser(db, callerOf(req), { id: req.params.id }, req.body, nowMs()),
  );

  app.delete(
    `${prefix}/users/:id`,
    {
      config: { adminRole: 'admin' },
      schema: { tags, params: IdParamsSchema, response: { 204: z.null() } },
    },
    async (req, reply) => {
      await deleteUser(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );

  app.get(
    `${prefix}/audit`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description:
          'The audit trail, newest first; pass `next` back as `cursor` for older entries.',
        querystring: AuditQuerySchema,
        response: { 200: AuditPageSchema },
      },
    },
    async (req) => listAudit(db, req.query),
  );

  // The other domains' admin routes, registered inside this scope so the role hook covers them.
  // Each registers with its own line.
  await app.register(rolloutRoutes, deps);
  await app.register(fleetRoutes, deps);
  await app.register(imagesAdmin, deps);
};
