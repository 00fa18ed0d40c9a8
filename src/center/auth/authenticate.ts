import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { BulkheadError, ErrorCodes, type EndpointAuth } from '../../protocol/index.ts';
import { hasRole, resolveCaller, type Caller } from '../admin/credentials.ts';
import type { Database } from '../db/index.ts';
import type { DeviceCredentials } from '../devices/credentials.ts';
import type { DeviceStanding } from '../devices/standing.ts';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Who may call the route (see `EndpointAuth`); every route under `/api/v1/` says. */
    auth?: EndpointAuth;
  }
  interface FastifyRequest {
    /** The authenticated admin caller of a route that needs a role (set before validation). */
    adminCaller?: Caller;
    /** The device whose token a device route was called with (set before validation). */
    deviceId?: string;
  }
}

export interface AuthenticationDeps {
  db: Kysely<Database>;
  now: () => Date;
  /** Checks device bearer tokens. */
  deviceCredentials: DeviceCredentials;
  /** Refuses killed and retired devices, whatever their token's age. */
  deviceStanding: DeviceStanding;
}

/**
 * Authentication and authorization of every API route, in one place: each route under
 * `/api/v1/` declares `config.auth` (a route without one fails at start-up), and one onRequest
 * hook resolves the bearer token to an admin caller and compares roles, or to a device in good
 * standing (neither killed nor retired), before the body is even parsed, so an unauthenticated client learns nothing from validation errors.
 * Register on the root instance before the routes (hooks reach the scopes registered later).
 */
export function registerAuthentication(app: FastifyInstance, deps: AuthenticationDeps): void {
  app.addHook('onRoute', (route) => {
    if (route.url.startsWith('/api/v1/') && route.config?.auth === undefined) {
      throw new Error(`API route ${route.method} ${route.url} declares no config.auth`);
    }
  });

  app.addHook('onRequest', async (req) => {
    const required = req.routeOptions.config.auth;
    if (required === undefined || required === 'public') return;
    if (required === 'device') {
      const deviceId = deps.deviceCredentials.deviceOfToken(deviceBearer(req));
      // A token outlives a kill or a retirement by up to its 15 minutes; the standing does not.
      await deps.deviceStanding.check(deviceId);
      req.deviceId = deviceId;
      return;
    }
    const caller = await resolveCaller(deps.db, req.headers.authorization, deps.now().getTime());
    if (!hasRole(caller.role, required)) {
      throw new BulkheadError(
        ErrorCodes.FORBIDDEN,
        `this needs the ${required} role; ${caller.username} is ${caller.role}`,
      );
    }
    req.adminCaller = caller;
  });
}

function deviceBearer(req: FastifyRequest): string {
  const header = req.headers.authorization;
  const match = header === undefined ? null : /^Bearer ([A-Za-z0-9_.-]{1,1024})$/.exec(header);
  if (match === null) {
    throw new BulkheadError(
      ErrorCodes.UNAUTHENTICATED,
      'this route needs a device token: Authorization: Bearer <token>',
    );
  }
  return match[1] as string;
}

/** The admin caller of a route that needs a role; the onRequest hook guarantees it is set. */
export function callerOf(req: { adminCaller?: Caller }): Caller {
  if (!req.adminCaller) throw new BulkheadError(ErrorCodes.INTERNAL, 'route has no caller');
  return req.adminCaller;
}

/** The calling device of a device route; the onRequest hook guarantees it is set. */
export function deviceOf(req: { deviceId?: string }): string {
  if (req.deviceId === undefined)
    throw new BulkheadError(ErrorCodes.INTERNAL, 'route has no device');
  return req.deviceId;
}

/** The bearer scheme of the OpenAPI document a route's `auth` needs; none for public ones. */
export function securitySchemeOf(auth: EndpointAuth | undefined): 'admin' | 'device' | undefined {
  if (auth === undefined || auth === 'public') return undefined;
  return auth === 'device' ? 'device' : 'admin';
}
