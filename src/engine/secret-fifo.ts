import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

const exec = promisify(execFile);

/** A path for a secret's FIFO in `dir`, unguessable so nothing else opens it first. */
export function secretFifoPath(dir: string): string {
  return join(dir, `.secret-${randomBytes(8).toString('hex')}.fifo`);
}

/**
 * A secret handed to a child process (QEMU, qemu-img) through a named pipe: the child opens the
 * path it is given, and the bytes pass through the kernel's pipe buffer, so the key is never on
 * disk, on a command line or in an environment. (Node's own child pipes are socket pairs, which
 * QEMU cannot open by `/dev/fd/N` path; a FIFO it can.)
 */
export interface SecretFifo {
  /** Where the child reads the secret, once. */
  readonly path: string;
  /**
   * Removes the FIFO. Call it once the child has read the secret (or failed): a writer still
   * waiting for a reader is released and the secret discarded.
   */
  close(): Promise<void>;
}

/** A FIFO at `path` (replacing a stale one) that gives `content` to the first reader. */
export async function secretFifo(path: string, content: string): Promise<SecretFifo> {
  await rm(path, { force: true });
  try {
    await exec('mkfifo', ['-m', '0600', path]);
  } catch (err) {
    throw new BulkheadError(ErrorCodes.TOOL_MISSING, `cannot make a pipe for a secret at ${path}`, {
      cause: err,
      hint: 'mkfifo comes with the Debian package coreutils',
    });
  }
  let opened = false;
  // Opening a FIFO for writing waits (in libuv's thread pool) until a reader opens it.
  const writer = open(path, constants.O_WRONLY).then(async (handle) => {
    opened = true;
    try {
      await handle.write(content);
    } finally {
      await handle.close();
    }
  });
  writer.catch(() => undefined);
  return {
    path,
    async close() {
      if (!opened) {
        // No reader came: open one ourselves (non-blocking) so the writer is released.
        const reader = await open(path, constants.O_RDONLY | constants.O_NONBLOCK).catch(
          () => undefined,
        );
        await writer.catch(() => undefined);
        await reader?.close();
      } else {
        await writer.catch(() => undefined);
      }
      await rm(path, { force: true });
    },
  };
}
