import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';

/**
 * Turns a file-system error met while writing into a domain error that says what to do.
 * A full disk is the case users meet; other errors keep their errno in the message.
 */
export function writeError(err: unknown, path: string): BulkheadError {
  if (err instanceof BulkheadError) return err;
  const code = errnoCode(err);
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new BulkheadError(ErrorCodes.DISK_FULL, `no space left on the device writing ${path}`, {
      cause: err,
      hint: 'free some space (or choose another location) and run the command again; nothing was published',
    });
  }
  return new BulkheadError(
    ErrorCodes.STORE_UNAVAILABLE,
    `cannot write ${path}: ${code ?? String(err)}`,
    { cause: err },
  );
}

/**
 * A failure of a worker that reads and writes files: one of writing (a full or read-only disk,
 * no permission, an I/O error) as writeError says it, any other as it was.
 */
export function workerWriteError(err: unknown, path: string): unknown {
  const code = errnoCode(err);
  return code && ['ENOSPC', 'EDQUOT', 'EROFS', 'EACCES', 'EPERM', 'EIO'].includes(code)
    ? writeError(err, path)
    : err;
}
