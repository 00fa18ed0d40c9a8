import { setTimeout as sleep } from 'node:timers/promises';

/*
 * Waiting for real processes (qemu-ga, QEMU, Center, PostgreSQL, the CLI) without racing them.
 * A test waits for the event it needs; the bound only turns a hang into a failure, so it is
 * minutes: on a machine busy with other work a process may take many times its usual time, and
 * a test that is slow under load is fine where one that fails is a defect.
 */

/** How long a test waits for something a real process does before calling it a hang. */
export const PATIENCE_MS = 5 * 60_000;

/**
 * Polls `check` until it returns something other than `false`, `undefined` or `null`, and returns
 * that. Fails naming `what` when `timeoutMs` passes first; an error thrown by `check` ends the
 * wait at once.
 */
export async function waitFor<T>(
  what: string,
  check: () => T | false | undefined | null | Promise<T | false | undefined | null>,
  options: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? PATIENCE_MS;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== false && value !== undefined && value !== null) return value;
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(options.intervalMs ?? 50);
  }
}

/** `promise`, or a failure naming `what` when it has not settled within `timeoutMs`. */
export async function withTimeout<T>(
  what: string,
  promise: Promise<T>,
  timeoutMs = PATIENCE_MS,
): Promise<T> {
  const abort = new AbortController();
  try {
    return await Promise.race([
      promise,
      sleep(timeoutMs, undefined, { signal: abort.signal }).then(() => {
        throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
      }),
    ]);
  } finally {
    abort.abort();
  }
}
