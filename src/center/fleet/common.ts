import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { CommandDeps } from '../changes/index.ts';
import { constraintViolation } from '../db/index.ts';
import type { PushBus } from '../push.ts';

/** What the fleet commands that change devices' desired state need: a push bus, always. */
export interface FleetDeps extends CommandDeps {
  push: PushBus;
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
