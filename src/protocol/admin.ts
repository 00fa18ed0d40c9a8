import { z } from 'zod';
import { name, text } from './text.ts';

/*
 * Wire schemas of Center's admin API (`/api/v1/admin/…`). Request bodies and queries are strict:
 * an unknown field is a 400 naming it, so a typo never silently does nothing.
 */

export const ADMIN_ROLE_NAMES = ['admin', 'operator', 'viewer'] as const;
/** `admin`: everything; `operator`: day-to-day changes, no users or tokens; `viewer`: read only. */
export const AdminRoleSchema = z.enum(ADMIN_ROLE_NAMES);
export type AdminRoleName = z.infer<typeof AdminRoleSchema>;

/**
 * Login names: short, printable, no spaces, so they read well in the audit trail. Names are
 * case-insensitive: stored and compared in lower case, so `Alice` and `alice` are one account.
 */
export const AdminUsernameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._@-]*$/, 'letters, digits and . _ @ - only')
  .transform((name) => name.toLowerCase());

/** Passwords: at least 12 characters; the upper bound keeps scrypt's input small. */
export const AdminPasswordSchema = text({ min: 12, max: 256 });

export const LoginRequestSchema = z.strictObject({
  username: text({ min: 1, max: 64 }),
  password: text({ min: 1, max: 256 }),
});
export type LoginRequest = z.infer<typeof LoginRequestSchema>;

export const LoginResponseSchema = z.object({
  /** The bearer token, shown once. */
  token: z.string(),
  /** Milliseconds since the epoch. */
  expiresAt: z.number().int(),
  username: z.string(),
  role: AdminRoleSchema,
});
export type LoginResponse = z.infer<typeof LoginResponseSchema>;

export const MeResponseSchema = z.object({
  id: z.string(),
  username: z.string(),
  role: AdminRoleSchema,
  /** How the caller authenticated. */
  via: z.enum(['session', 'token']),
});
export type MeResponse = z.infer<typeof MeResponseSchema>;

export const AdminUserSchema = z.object({
  id: z.string(),
  username: z.string(),
  role: AdminRoleSchema,
  lastLoginAt: z.number().int().nullable(),
  /** When the account was disabled; null while it is active. A disabled account cannot log in. */
  disabledAt: z.number().int().nullable(),
  createdAt: z.number().int(),
  updatedAt: z.number().int(),
});
export type AdminUser = z.infer<typeof AdminUserSchema>;

export const AdminUserListSchema = z.object({ users: z.array(AdminUserSchema) });

export const CreateAdminUserRequestSchema = z.strictObject({
  username: AdminUsernameSchema,
  role: AdminRoleSchema,
  /** Omitted: Center generates one and returns it once. */
  password: AdminPasswordSchema.optional(),
});
export type CreateAdminUserRequest = z.infer<typeof CreateAdminUserRequestSchema>;

export const CreateAdminUserResponseSchema = z.object({
  user: AdminUserSchema,
  /** The generated one-time password, when none was given. */
  password: z.string().optional(),
});

export const UpdateAdminUserRequestSchema = z
  .strictObject({
    role: AdminRoleSchema.optional(),
    password: AdminPasswordSchema.optional(),
    /**
     * True disables the account: it cannot log in, its sessions end and its API tokens are
     * refused until it is enabled again (false). The last active admin cannot be disabled.
     */
    disabled: z.boolean().optional(),
  })
  .refine((b) => b.role !== undefined || b.password !== undefined || b.disabled !== undefined, {
    message: 'give role, password or disabled',
  });
export type UpdateAdminUserRequest = z.infer<typeof UpdateAdminUserRequestSchema>;

/** One's own password change: the current password proves it is the person, not a left-open session. */
export const ChangePasswordRequestSchema = z.strictObject({
  currentPassword: text({ min: 1, max: 256 }),
  newPassword: AdminPasswordSchema,
});
export type ChangePasswordRequest = z.infer<typeof ChangePasswordRequestSchema>;

export const ChangePasswordResponseSchema = z.object({
  /** The caller's other sessions, ended by the change (the one that asked stays). */
  sessionsRevoked: z.number().int(),
});
export type ChangePasswordResponse = z.infer<typeof ChangePasswordResponseSchema>;

export const IdParamsSchema = z.strictObject({ id: text({ min: 1, max: 64 }) });

export const CreateApiTokenRequestSchema = z.strictObject({
  name: name({ min: 1, max: 100 }),
  /** Lifetime in days; omitted: no expiry. */
  expiresInDays: z.number().int().min(1).max(3650).optional(),
});
export type CreateApiTokenRequest = z.infer<typeof CreateApiTokenRequestSchema>;

export const CreateApiTokenResponseSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** The bearer token, shown once. */
  token: z.string(),
  expiresAt: z.number().int().nullable(),
});

export const ApiTokenSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** The user the token acts as. */
  username: z.string(),
  expiresAt: z.number().int().nullable(),
  lastUsedAt: z.number().int().nullable(),
  createdAt: z.number().int(),
});
export type ApiToken = z.infer<typeof ApiTokenSchema>;

export const ApiTokenListSchema = z.object({ tokens: z.array(ApiTokenSchema) });

export const AuditEntrySchema = z.object({
  id: z.string(),
  actor: z.string(),
  action: z.string(),
  targetType: z.string(),
  targetId: z.string().nullable(),
  before: z.unknown().nullable(),
  after: z.unknown().nullable(),
  at: z.number().int(),
});
export type AuditEntry = z.infer<typeof AuditEntrySchema>;

export const AuditQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(500).default(100),
  /** The `next` of the previous page (made with the same filters). */
  cursor: text({ max: 200 }).optional(),
  /** Only entries by this actor, as the trail names it (`user:alice`, `system`). */
  actor: text({ min: 1, max: 200 }).optional(),
  /** Only this action (`group.create`), or every action under a prefix (`group`). */
  action: z
    .string()
    .min(1)
    .max(100)
    .regex(/^[a-z][a-z0-9-]*(\.[a-z0-9-]+)*$/, 'an action such as group.create, or its start')
    .optional(),
  /** Only entries about this kind of target (`device_group`, `rollout`, …). */
  targetType: text({ min: 1, max: 100 }).optional(),
  /** Only entries about this target (its id). */
  targetId: text({ min: 1, max: 200 }).optional(),
});

export const AuditPageSchema = z.object({
  entries: z.array(AuditEntrySchema),
  /** Pass as `cursor` for the next (older) page; null at the end. */
  next: z.string().nullable(),
});
