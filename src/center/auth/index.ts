// Authentication and authorization of Center's APIs (registered by server.ts around the routes).
export {
  registerAuthentication,
  callerOf,
  deviceOf,
  securitySchemeOf,
  type AuthenticationDeps,
} from './authenticate.ts';
export { generatePassword, hashPassword, verifyPassword } from './passwords.ts';
export { createPasswordHasher, type PasswordHasher, type PasswordSlot } from './password-hasher.ts';
