import { z } from 'zod';
import {
  AdminUserListSchema,
  AdminUserSchema,
  ApiTokenListSchema,
  AuditPageSchema,
  AuditQuerySchema,
  CreateAdminUserRequestSchema,
  CreateAdminUserResponseSchema,
  CreateApiTokenRequestSchema,
  CreateApiTokenResponseSchema,
  IdParamsSchema,
  LoginRequestSchema,
  LoginResponseSchema,
  MeResponseSchema,
  UpdateAdminUserRequestSchema,
} from '../admin.ts';
import { defineEndpoints } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';

const A = '/api/v1/admin';
const tags = ['admin'];
const noContent = { 204: z.null() };

/** The admin API's own domain: sessions, API tokens, administrators and the audit trail. */
export const adminEndpoints = defineEndpoints({
  login: {
    method: 'POST',
    path: `${A}/login`,
    auth: 'public',
    tags,
    description:
      'Opens a 12-hour session. Five failures per username and address in 15 minutes lock ' +
      'that pair out (429 with Retry-After), fifty lock the username out from everywhere; ' +
      'the counts are per Center replica.',
    body: LoginRequestSchema,
    response: { 200: LoginResponseSchema },
    errors: [ErrorCodes.UNAUTHENTICATED, ErrorCodes.RATE_LIMITED],
  },
  logout: {
    method: 'POST',
    path: `${A}/logout`,
    auth: 'viewer',
    tags,
    description: 'Revokes the bearer token presented.',
    response: noContent,
  },
  me: {
    method: 'GET',
    path: `${A}/me`,
    auth: 'viewer',
    tags,
    description: 'Who the bearer token acts as.',
    response: { 200: MeResponseSchema },
  },
  createApiToken: {
    method: 'POST',
    path: `${A}/tokens`,
    auth: 'admin',
    tags,
    description: 'Creates an API token acting as the caller; the token is shown only here.',
    body: CreateApiTokenRequestSchema,
    response: { 201: CreateApiTokenResponseSchema },
  },
  listApiTokens: {
    method: 'GET',
    path: `${A}/tokens`,
    auth: 'admin',
    tags,
    description: 'API tokens (never their secrets), newest first.',
    response: { 200: ApiTokenListSchema },
  },
  revokeApiToken: {
    method: 'DELETE',
    path: `${A}/tokens/:id`,
    auth: 'admin',
    tags,
    description: 'Revokes an API token.',
    params: IdParamsSchema,
    response: noContent,
    errors: [ErrorCodes.NOT_FOUND],
  },
  listUsers: {
    method: 'GET',
    path: `${A}/users`,
    auth: 'viewer',
    tags,
    description: 'Administrators and their roles.',
    response: { 200: AdminUserListSchema },
  },
  createUser: {
    method: 'POST',
    path: `${A}/users`,
    auth: 'admin',
    tags,
    description: 'Creates an administrator; without a password, a generated one is returned once.',
    body: CreateAdminUserRequestSchema,
    response: { 201: CreateAdminUserResponseSchema },
    errors: [ErrorCodes.ADMIN_USER_EXISTS],
  },
  updateUser: {
    method: 'PATCH',
    path: `${A}/users/:id`,
    auth: 'admin',
    tags,
    description: "Changes an administrator's role or password.",
    params: IdParamsSchema,
    body: UpdateAdminUserRequestSchema,
    response: { 200: AdminUserSchema },
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.LAST_ADMIN],
  },
  deleteUser: {
    method: 'DELETE',
    path: `${A}/users/:id`,
    auth: 'admin',
    tags,
    description: 'Deletes an administrator and revokes their tokens.',
    params: IdParamsSchema,
    response: noContent,
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.LAST_ADMIN],
  },
  listAudit: {
    method: 'GET',
    path: `${A}/audit`,
    auth: 'viewer',
    tags,
    description: 'The audit trail, newest first; pass `next` back as `cursor` for older entries.',
    query: AuditQuerySchema,
    response: { 200: AuditPageSchema },
  },
});
