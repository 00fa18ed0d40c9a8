import { BulkheadError, ErrorCodes, type ErrorCode } from '../../protocol/index.ts';
import type { CommandDeps } from '../changes/index.ts';
import { refuseViolation } from '../db/index.ts';
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

/** Runs `work`; a unique-name violation becomes `ERR_NAME_TAKEN`. */
export function refuseNameTaken<T>(
  what: string,
  name: string | undefined,
  work: () => Promise<T>,
): Promise<T> {
  const message = `a ${what} named "${name}" already exists`;
  return refuseViolation('unique', work, (cause) => refusal(ErrorCodes.NAME_TAKEN, message, cause));
}

/** Runs `work`; a foreign-key refusal (a row still referenced) becomes `ERR_IN_USE`. */
export function refuseInUse<T>(work: () => Promise<T>, message: string): Promise<T> {
  return refuseViolation('foreign-key', work, (cause) =>
    refusal(ErrorCodes.IN_USE, message, cause),
  );
}

function refusal(code: ErrorCode, message: string, cause: unknown): BulkheadError {
  return new BulkheadError(code, message, { cause });
}

export function parseJson(text: string | null): unknown {
  return text === null ? null : (JSON.parse(text) as unknown);
}
