import { buildDebianGuest, type DebianGuest } from '../../guest/debian.ts';

export type { DebianGuest };

let building: Promise<DebianGuest> | undefined;

/**
 * The full Debian guest's disks (guest/debian.ts), built once into guest/.cache: about a
 * minute and a half with a reachable Debian archive, then reused by every later call. Fails
 * naming the Debian package when a tool the build needs is missing.
 */
export function debianGuest(): Promise<DebianGuest> {
  building ??= buildDebianGuest({ log: (line) => process.stderr.write(`${line}\n`) });
  return building;
}
