import type { FastifyPluginAsync } from 'fastify';
import { adminEndpoints as e } from '../../protocol/index.ts';
import { route } from '../http/route.ts';
import type { CenterContext } from '../context.ts';
import { listAudit } from './audit.ts';
import {
  changeOwnPassword,
  createApiToken,
  listApiTokens,
  login,
  logout,
  revokeApiToken,
} from './credentials.ts';
import { createLoginThrottle } from './login-throttle.ts';
import { createUser, deleteUser, listUsers, updateUser } from './users.ts';

/**
 * The admin domain's own routes under `/api/v1/admin`: login, the caller, API tokens,
 * administrators and the audit trail. Authentication and roles are checked by src/center/auth
 * from each endpoint's declaration.
 */
export const adminRoutes: FastifyPluginAsync<CenterContext> = async (app, deps) => {
  const { db } = deps.database;
  const nowMs = () => deps.now().getTime();
  const throttle = createLoginThrottle({ db, now: deps.now });
  const { passwords } = deps;
  const hash = (password: string) => passwords.hash(password);

  // req.ip is the peer's address, or what a trusted proxy forwarded (config trustedProxies).
  route(app, e.login, (req) =>
    login({ db, throttle, passwords, nowMs }, { ...req.body, ip: req.ip }),
  );
  route(app, e.logout, (_req, caller) => logout(db, caller, nowMs()));
  route(app, e.me, async (_req, caller) => ({
    id: caller.userId,
    username: caller.username,
    role: caller.role,
    via: caller.via,
  }));
  route(app, e.changePassword, (req, caller) =>
    changeOwnPassword({ db, throttle, passwords, nowMs }, caller, { ...req.body, ip: req.ip }),
  );
  route(app, e.createApiToken, (req, caller) => createApiToken(db, caller, req.body, nowMs()));
  route(app, e.listApiTokens, async () => ({ tokens: await listApiTokens(db) }));
  route(app, e.revokeApiToken, (req, caller) => revokeApiToken(db, caller, req.params.id, nowMs()));
  route(app, e.listUsers, async () => ({ users: await listUsers(db) }));
  route(app, e.createUser, (req, caller) => createUser(db, caller, req.body, nowMs(), hash));
  route(app, e.updateUser, (req, caller) =>
    updateUser(db, caller, { id: req.params.id }, req.body, nowMs(), hash),
  );
  route(app, e.deleteUser, (req, caller) => deleteUser(db, caller, req.params.id, nowMs()));
  route(app, e.listAudit, (req) => listAudit(db, req.query));
};
