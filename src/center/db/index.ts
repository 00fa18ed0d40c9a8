// Center's database layer: open a database by URL, bring its schema up to date, query it
// through Kysely with the `Database` types. The same code runs on SQLite and PostgreSQL.
export { constraintViolation, refuseViolation, type ConstraintKind } from './constraints.ts';
export { hasRow, machineOfRow } from './rows.ts';
export { newId } from './ids.ts';
export type { DatabaseLog } from './log.ts';
export { migrateToLatest, type MigrationReport } from './migrations.ts';
export {
  displayUrl,
  openDatabase,
  parseDatabaseUrl,
  type CenterDatabase,
  type DatabaseDialect,
  type DatabaseTarget,
  type OpenDatabaseOptions,
} from './open.ts';
export * from './schema.ts';
