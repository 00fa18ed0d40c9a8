import type { Kysely } from 'kysely';
import type { VmMachineHint } from '../../protocol/index.ts';
import type { Database, Row } from './schema.ts';

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

/** A profile's machine from its columns. */
export function machineOfRow(
  row: Pick<Row<'profiles'>, 'firmware' | 'secure_boot' | 'tpm' | 'guest_os' | 'guest_devices'>,
): VmMachineHint {
  return {
    firmware: row.firmware,
    secureBoot: row.secure_boot === 'on',
    tpm: row.tpm === 'on',
    os: row.guest_os,
    devices: row.guest_devices,
  };
}
