// Center, the management server (DESIGN §1): what the CLI and other parts may use. Inside
// Center, modules import each other's folders directly.
export { configFromEnv, readConfigFile, resolveConfig, type CenterConfigInput } from './config.ts';
export { startCenter, type RunningCenter } from './start.ts';
export { generatePassword, verifyPassword } from './auth/passwords.ts';
export { createUser, updateUser } from './admin/index.ts';
export { migrateToLatest, openDatabase, type CenterDatabase } from './db/index.ts';
export { seedImages } from './images/index.ts';
