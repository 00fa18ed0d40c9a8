import { z } from 'zod';
import * as admin from '../admin.ts';
import { defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';

const A = '/api/v1/admin';

/** The admin API's own domain: sessions, API tokens, administrators and the audit trail. */
export const adminEndpoints = defineEndpoints(['admin'], {
  login: endpoint(`POST ${A}/login`, 'public', 200, admin.LoginResponseSchema, {
    body: admin.LoginRequestSchema,
    errors: [ErrorCodes.UNAUTHENTICATED, ErrorCodes.ACCOUNT_DISABLED, ErrorCodes.RATE_LIMITED],
    description:
      'Opens a 12-hour session. After five failures of one username from one address, that ' +
      'pair waits before each further try, twice as long each time up to 15 minutes (429 ' +
      'with Retry-After); the same username from another address is not slowed. 429 also ' +
      'when too many logins come from one address or too many wait to be checked.',
  }),
  logout: endpoint(`POST ${A}/logout`, 'viewer', 204, z.null(), {
    description: 'Revokes the bearer token presented.',
  }),
  me: endpoint(`GET ${A}/me`, 'viewer', 200, admin.MeResponseSchema, {
    description: 'Who the bearer token acts as.',
  }),
  changePassword: endpoint(
    `POST ${A}/me/password`,
    'viewer',
    200,
    admin.ChangePasswordResponseSchema,
    {
      body: admin.ChangePasswordRequestSchema,
      errors: [ErrorCodes.WRONG_PASSWORD, ErrorCodes.RATE_LIMITED],
      description:
        "Changes the caller's own password, given the current one (checked and throttled as a " +
        "login is). The caller's other sessions end; the one that asked and API tokens stay.",
    },
  ),
  createApiToken: endpoint(`POST ${A}/tokens`, 'admin', 201, admin.CreateApiTokenResponseSchema, {
    body: admin.CreateApiTokenRequestSchema,
    description: 'Creates an API token acting as the caller; the token is shown only here.',
  }),
  listApiTokens: endpoint(`GET ${A}/tokens`, 'admin', 200, admin.ApiTokenListSchema, {
    description: 'API tokens (never their secrets), newest first.',
  }),
  revokeApiToken: endpoint(`DELETE ${A}/tokens/:id`, 'admin', 204, z.null(), {
    params: admin.IdParamsSchema,
    errors: [ErrorCodes.NOT_FOUND],
    description: 'Revokes an API token.',
  }),
  listUsers: endpoint(`GET ${A}/users`, 'viewer', 200, admin.AdminUserListSchema, {
    description: 'Administrators and their roles.',
  }),
  createUser: endpoint(`POST ${A}/users`, 'admin', 201, admin.CreateAdminUserResponseSchema, {
    body: admin.CreateAdminUserRequestSchema,
    errors: [ErrorCodes.ADMIN_USER_EXISTS],
    description: 'Creates an administrator; without a password, a generated one is returned once.',
  }),
  updateUser: endpoint(`PATCH ${A}/users/:id`, 'admin', 200, admin.AdminUserSchema, {
    params: admin.IdParamsSchema,
    body: admin.UpdateAdminUserRequestSchema,
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.LAST_ADMIN],
    description:
      "Changes an administrator's role or password, or disables (ending their sessions and " +
      'refusing their API tokens) or enables the account. The last active admin can be ' +
      'neither demoted nor disabled.',
  }),
  deleteUser: endpoint(`DELETE ${A}/users/:id`, 'admin', 204, z.null(), {
    params: admin.IdParamsSchema,
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.LAST_ADMIN],
    description: 'Deletes an administrator and revokes their tokens.',
  }),
  listAudit: endpoint(`GET ${A}/audit`, 'viewer', 200, admin.AuditPageSchema, {
    query: admin.AuditQuerySchema,
    description: 'The audit trail, newest first; pass `next` back as `cursor` for older entries.',
  }),
});
