// Center's admin API: sessions and API tokens, roles, users, the audit trail.
export { adminRoutes } from './plugin.ts';
export type { Caller } from './credentials.ts';
export { createUser, updateUser } from './users.ts';
export type { Actor } from './audit.ts';
