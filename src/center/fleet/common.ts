import { sql, type Kysely, type Transaction } from 'kysely';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import { constraintViolation, type Database } from '../db/index.ts';
import type { PushBus } from '../push.ts';

/** What the fleet commands need: the database, the clock and the push bus. */
export interface FleetDeps {
  db: Kysely<Database>;
  push: PushBus;
  /** Epoch ms of the request, from the injected clock. */
  nowMs: number;
}

/** More devices than this are told with one `notify('all')` rather than by id. */
const NOTIFY_BY_ID_MAX = 1000;

const bumped = (nowMs: number) =>
  sql<number>`case when updated_at >= ${nowMs} then updated_at + 1 else ${nowMs} end`;

/**
 * Moves `updated_at` of the devices `ids` to max(now, old + 1): the desired state's ETag and
 * revision follow `devices.updated_at`, so every change to what a device should run must move
 * it, and strictly forward even when two changes land in one millisecond. Call it in the
 * transaction that makes the change; returns the ids it moved, for `tellDevices` after commit.
 */
export async function bumpDevices(
  trx: Transaction<Database>,
  nowMs: number,
  ids: readonly string[],
): Promise<string[]> {
  if (ids.length === 0) return [];
  const rows = await trx
    .updateTable('devices')
    .set({ updated_at: bumped(nowMs) })
    .where('id', 'in', ids)
    .returning('id')
    .execute();
  return rows.map((r) => r.id);
}

/**
 * `bumpDevices` for every device holding one of `profileIds` (any number of devices: the
 * selection is a sub-select, never a list of parameters).
 */
export async function bumpDevicesHolding(
  trx: Transaction<Database>,
  nowMs: number,
  profileIds: readonly string[],
): Promise<string[]> {
  if (profileIds.length === 0) return [];
  const rows = await trx
    .updateTable('devices')
    .set({ updated_at: bumped(nowMs) })
    .where('id', 'in', (eb) =>
      eb.selectFrom('device_profiles').select('device_id').where('profile_id', 'in', profileIds),
    )
    .returning('id')
    .execute();
  return rows.map((r) => r.id);
}

/** Tells the devices, after commit, that their desired state changed. */
export function tellDevices(push: PushBus, ids: readonly string[]): void {
  if (ids.length === 0) return;
  push.notify(ids.length > NOTIFY_BY_ID_MAX ? 'all' : ids);
}

export function notFound(what: string, id: string): BulkheadError {
  return new BulkheadError(ErrorCodes.NOT_FOUND, `no ${what} ${id}`);
}

/** A 400 naming the field, for a reference to a row that is missing or of the wrong kind. */
export function badReference(field: string, message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.VALIDATION, `${field}: ${message}`);
}

/** Turns a unique-name violation into `ERR_NAME_TAKEN`; rethrows anything else. */
export function rethrowNameTaken(err: unknown, what: string, name: string | undefined): never {
  if (constraintViolation(err) === 'unique') {
    throw new BulkheadError(ErrorCodes.NAME_TAKEN, `a ${what} named "${name}" already exists`, {
      cause: err,
    });
  }
  throw err;
}

/** Runs `work`; a foreign-key refusal (a row still referenced) becomes `ERR_IN_USE`. */
export async function refuseInUse<T>(work: () => Promise<T>, message: string): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (constraintViolation(err) === 'foreign-key') {
      throw new BulkheadError(ErrorCodes.IN_USE, message, { cause: err });
    }
    throw err;
  }
}

export function parseJson(text: string | null): unknown {
  return text === null ? null : (JSON.parse(text) as unknown);
}
