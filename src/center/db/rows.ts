import type { Kysely } from 'kysely';
import type { Database } from './schema.ts';

/** Tables whose rows a command refers to by id. */
type IdTable = 'device_groups' | 'profiles' | 'apps' | 'devices' | 'images';

/** Whether `table` has a row with this id. */
export async function hasRow(db: Kysely<Database>, table: IdTable, id: string): Promise<boolean> {
  // Every table of IdTable has a string `id`; Kysely cannot see that through the union.
  const row = await db
    .selectFrom(table as 'devices')
    .select('id')
    .where('id', '=', id)
    .executeTakeFirst();
  return row !== undefined;
}
