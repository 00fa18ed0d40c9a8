/**
 * Domain errors. Every failure a user or operator can meet carries a stable `code` (tests and
 * the HTTP layer match on it), a `retryable` flag (a transient network fault is; a bad
 * signature is not) and, where it helps, a `hint` saying what to do about it.
 */
export const ErrorCodes = {
  USAGE: 'ERR_USAGE',
  INVALID_NAME: 'ERR_INVALID_NAME',
  INVALID_DIGEST: 'ERR_INVALID_DIGEST',
  KEY_INVALID: 'ERR_KEY_INVALID',
  KEY_EXISTS: 'ERR_KEY_EXISTS',
  MANIFEST_MALFORMED: 'ERR_MANIFEST_MALFORMED',
  MANIFEST_UNSIGNED: 'ERR_MANIFEST_UNSIGNED',
  MANIFEST_SIGNATURE: 'ERR_MANIFEST_SIGNATURE',
  MANIFEST_MISMATCH: 'ERR_MANIFEST_MISMATCH',
  UNTRUSTED_KEY: 'ERR_UNTRUSTED_KEY',
  INDEX_CORRUPT: 'ERR_INDEX_CORRUPT',
  CHUNK_CORRUPT: 'ERR_CHUNK_CORRUPT',
  PACK_CORRUPT: 'ERR_PACK_CORRUPT',
  IMAGE_NOT_FOUND: 'ERR_IMAGE_NOT_FOUND',
  IMAGE_EXISTS: 'ERR_IMAGE_EXISTS',
  IMAGE_DIGEST_MISMATCH: 'ERR_IMAGE_DIGEST_MISMATCH',
  OBJECT_NOT_FOUND: 'ERR_OBJECT_NOT_FOUND',
  OBJECT_TOO_LARGE: 'ERR_OBJECT_TOO_LARGE',
  STORE_UNAVAILABLE: 'ERR_STORE_UNAVAILABLE',
  STORE_READ_ONLY: 'ERR_STORE_READ_ONLY',
  INPUT_UNREADABLE: 'ERR_INPUT_UNREADABLE',
  OUTPUT_EXISTS: 'ERR_OUTPUT_EXISTS',
  DISK_FULL: 'ERR_DISK_FULL',
  TOOL_MISSING: 'ERR_TOOL_MISSING',
  DATABASE_URL: 'ERR_DATABASE_URL',
  DATABASE: 'ERR_DATABASE',
  DATABASE_MIGRATION: 'ERR_DATABASE_MIGRATION',
  CONFIG_INVALID: 'ERR_CONFIG_INVALID',
  VALIDATION: 'ERR_VALIDATION',
  // A request body nested too deep to parse, or of a content type the route does not take
  // (one that is not JSON at all is ERR_VALIDATION, naming the body).
  BODY_TOO_DEEP: 'ERR_BODY_TOO_DEEP',
  UNSUPPORTED_MEDIA_TYPE: 'ERR_UNSUPPORTED_MEDIA_TYPE',
  UNAUTHENTICATED: 'ERR_UNAUTHENTICATED',
  FORBIDDEN: 'ERR_FORBIDDEN',
  RATE_LIMITED: 'ERR_RATE_LIMITED',
  /** Center sheds load (event loop or memory past their thresholds): try again later. */
  OVERLOADED: 'ERR_OVERLOADED',
  NOT_FOUND: 'ERR_NOT_FOUND',
  // Fleet admin: a name already taken, a row still in use, a device in the wrong state.
  NAME_TAKEN: 'ERR_NAME_TAKEN',
  IN_USE: 'ERR_IN_USE',
  DEVICE_STATE: 'ERR_DEVICE_STATE',
  ADMIN_USER_EXISTS: 'ERR_ADMIN_USER_EXISTS',
  LAST_ADMIN: 'ERR_LAST_ADMIN',
  // An administrator whose account is disabled: refused at login (after a correct password)
  // and on every request with their sessions or API tokens.
  ACCOUNT_DISABLED: 'ERR_ACCOUNT_DISABLED',
  // The current password given to change one's own password is not the current password.
  WRONG_PASSWORD: 'ERR_WRONG_PASSWORD',
  INTERNAL: 'ERR_INTERNAL',
  ENROLMENT_TOKEN_REFUSED: 'ERR_ENROLMENT_TOKEN_REFUSED',
  DEVICE_EXISTS: 'ERR_DEVICE_EXISTS',
  DEVICE_CHALLENGE_INVALID: 'ERR_DEVICE_CHALLENGE_INVALID',
  // A device cut off for good: killed (the answer carries a signed kill notice) or retired.
  DEVICE_KILLED: 'ERR_DEVICE_KILLED',
  DEVICE_RETIRED: 'ERR_DEVICE_RETIRED',
  // Image upload: a chunk whose bytes do not match its digest, a manifest naming chunks the
  // store lacks, a version transition its state does not allow.
  CHUNK_DIGEST_MISMATCH: 'ERR_CHUNK_DIGEST_MISMATCH',
  CHUNKS_MISSING: 'ERR_CHUNKS_MISSING',
  VERSION_STATE: 'ERR_VERSION_STATE',
  // Engine: a desired state it refuses, each reason with its own code.
  DESIRED_STATE_MALFORMED: 'ERR_DESIRED_STATE_MALFORMED',
  DESIRED_STATE_KEY: 'ERR_DESIRED_STATE_KEY',
  DESIRED_STATE_SIGNATURE: 'ERR_DESIRED_STATE_SIGNATURE',
  DESIRED_STATE_DEVICE: 'ERR_DESIRED_STATE_DEVICE',
  DESIRED_STATE_ROLLBACK: 'ERR_DESIRED_STATE_ROLLBACK',
  DESIRED_STATE_EXPIRED: 'ERR_DESIRED_STATE_EXPIRED',
  // A wrapped data key beside the signature that the signed body's digest does not vouch for.
  DESIRED_STATE_WRAPPED_KEY: 'ERR_DESIRED_STATE_WRAPPED_KEY',
  // Engine: talking to Center, and its own files.
  CENTER_UNREACHABLE: 'ERR_CENTER_UNREACHABLE',
  CENTER_UNAVAILABLE: 'ERR_CENTER_UNAVAILABLE',
  CENTER_PROTOCOL: 'ERR_CENTER_PROTOCOL',
  IDENTITY_EXISTS: 'ERR_IDENTITY_EXISTS',
  IDENTITY_MISSING: 'ERR_IDENTITY_MISSING',
  STATE_CORRUPT: 'ERR_STATE_CORRUPT',
  // Engine's local API: a VM that must run for what was asked (its screen, input) does not.
  VM_NOT_RUNNING: 'ERR_VM_NOT_RUNNING',
  // The switcher's "restart now" for a VM with no staged update waiting for the user.
  NO_UPDATE_WAITING: 'ERR_NO_UPDATE_WAITING',
  // Rollouts: an action its state does not allow (pause a halted one, say).
  ROLLOUT_STATE: 'ERR_ROLLOUT_STATE',
  // Keys (docs/keys.md): a wrapped data key that does not open with this device's key, a VM
  // whose key Center could not send, a profile that needs a TPM this PC lacks, a TPM that fails.
  DATA_KEY_UNWRAP: 'ERR_DATA_KEY_UNWRAP',
  DATA_KEY_UNAVAILABLE: 'ERR_DATA_KEY_UNAVAILABLE',
  TPM_REQUIRED: 'ERR_TPM_REQUIRED',
  TPM: 'ERR_TPM',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface BulkheadErrorOptions {
  /** The error this one explains, kept for logs and debugging. */
  cause?: unknown;
  /** True when the same operation may succeed if tried again unchanged. */
  retryable?: boolean;
  /** One sentence telling the user what to do about it. */
  hint?: string;
  /** Structured facts about the failure (a verification report, say), for `--json` output. */
  details?: unknown;
}

export class BulkheadError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly hint: string | undefined;
  readonly details: unknown;

  constructor(code: ErrorCode, message: string, options: BulkheadErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BulkheadError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.hint = options.hint;
    this.details = options.details;
  }
}

export function isBulkheadError(err: unknown, code?: ErrorCode): err is BulkheadError {
  return err instanceof BulkheadError && (code === undefined || err.code === code);
}

/** Node's errno code of a system error, if it is one. */
export function errnoCode(err: unknown): string | undefined {
  if (err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}
