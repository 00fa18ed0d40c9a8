import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { BulkheadError, ErrorCodes, isValidName } from '../../protocol/index.ts';
import { acceptMarker } from './executors.ts';

/**
 * The user allows a staged update to switch now (`bulkhead engine accept [--vm NAME]`): leaves
 * a marker the staged state's handler looks for at its next pass; the switch removes it.
 * Without a VM name, every VM's staged update is accepted.
 */
export async function acceptUpdate(dataDir: string, vm: string | null): Promise<string> {
  if (vm !== null && !isValidName(vm)) {
    throw new BulkheadError(ErrorCodes.USAGE, `--vm ${JSON.stringify(vm)} is not a VM name`, {
      hint: '`bulkhead engine status` lists the VMs',
    });
  }
  const path = acceptMarker(dataDir, vm);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, `${new Date().toISOString()}\n`);
  return path;
}
