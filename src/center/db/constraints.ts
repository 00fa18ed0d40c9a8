/** An integrity rule a statement broke. */
export type ConstraintKind = 'unique' | 'foreign-key' | 'check' | 'not-null';

// PostgreSQL SQLSTATE codes (class 23, integrity constraint violation).
const POSTGRES_CODES: Record<string, ConstraintKind> = {
  '23505': 'unique',
  '23503': 'foreign-key',
  '23514': 'check',
  '23502': 'not-null',
};

// SQLite extended result codes, as node:sqlite reports them in `errcode`.
const SQLITE_CODES: Record<number, ConstraintKind> = {
  2067: 'unique', // SQLITE_CONSTRAINT_UNIQUE
  1555: 'unique', // SQLITE_CONSTRAINT_PRIMARYKEY
  787: 'foreign-key', // SQLITE_CONSTRAINT_FOREIGNKEY
  // An ON DELETE RESTRICT action fails with SQLITE_CONSTRAINT_TRIGGER (that is how SQLite
  // implements it); the schema has no triggers of its own that could raise it.
  1811: 'foreign-key',
  275: 'check', // SQLITE_CONSTRAINT_CHECK
  1299: 'not-null', // SQLITE_CONSTRAINT_NOTNULL
};

/**
 * Which constraint a failed query violated, on either database, or undefined when it failed
 * for another reason. Lets a command turn "that name is taken" or "that group does not exist"
 * into a domain error without parsing driver messages.
 */
export function constraintViolation(err: unknown): ConstraintKind | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  if ('errcode' in err && typeof err.errcode === 'number' && 'code' in err) {
    return err.code === 'ERR_SQLITE_ERROR' ? SQLITE_CODES[err.errcode] : undefined;
  }
  if ('code' in err && typeof err.code === 'string' && 'severity' in err) {
    return POSTGRES_CODES[err.code];
  }
  return undefined;
}

/**
 * Runs `work`; when it violates a constraint of `kind`, throws what `refusal` makes of the
 * violation (a domain error naming what is wrong) instead. Any other failure is rethrown.
 */
export async function refuseViolation<T>(
  kind: ConstraintKind,
  work: () => Promise<T>,
  refusal: (cause: unknown) => Error | Promise<Error>,
): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (constraintViolation(err) === kind) throw await refusal(err);
    throw err;
  }
}
