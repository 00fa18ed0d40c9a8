import { Worker } from 'node:worker_threads';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import {
  formatHash,
  KEY_BYTES,
  keysMatch,
  newHashInput,
  parseHash,
  SCRYPT_MAXMEM,
  type ScryptInput,
} from './passwords.ts';
import type { ScryptReply, ScryptRequest } from './scrypt-worker.ts';

/*
 * Password hashing for Center's routes, on a bounded queue of its own. scrypt costs ~32 MiB and
 * tens of milliseconds of CPU per call; run on libuv's threadpool (4 threads, shared with every
 * file read of the chunk store, DNS lookups and other crypto) a flood of bad logins queued
 * ahead of everything else, and a store download waited 40 s behind it. Here one worker thread
 * derives keys one at a time, and at most `maxQueued` may wait for it: beyond that a caller is
 * refused at once (ERR_RATE_LIMITED with a retry hint), so a flood costs one core and slows
 * logins only.
 */

/** A place held in the queue for one password check. */
export interface PasswordSlot {
  /** Checks `password` against `stored` (false for a malformed hash), then frees the place. */
  verify(password: string, stored: string): Promise<boolean>;
  /** Frees the place unused. Calling it after `verify` does nothing. */
  release(): void;
}

export interface PasswordHasher {
  /**
   * Holds a place in the queue, or says how long to wait when it is full: a login takes one
   * before its other checks, so that a full queue refuses it without counting a failure.
   */
  reserve(): PasswordSlot | { retryAfterMs: number };
  /**
   * A new hash of `password`.
   * @throws BulkheadError `ERR_RATE_LIMITED` (details.retryAfterMs) when the queue is full.
   */
  hash(password: string): Promise<string>;
  /** How many checks hold a place now (running or waiting). */
  pending(): number;
  /** Stops the worker thread; checks still waiting fail. */
  close(): Promise<void>;
}

/** Expected cost of one derivation before any has been measured. */
const INITIAL_ESTIMATE_MS = 100;

export function createPasswordHasher(options: { maxQueued: number }): PasswordHasher {
  let worker: Worker | undefined;
  let nextId = 1;
  let held = 0;
  let estimateMs = INITIAL_ESTIMATE_MS;
  let lastReplyAt = 0;
  const waiting = new Map<
    number,
    { resolve: (key: Buffer) => void; reject: (err: Error) => void; startedAt: number }
  >();

  const failAll = (err: Error) => {
    for (const job of waiting.values()) job.reject(err);
    waiting.clear();
  };

  const start = (): Worker => {
    const w = new Worker(new URL('./scrypt-worker.ts', import.meta.url));
    // The thread never keeps the process alive: Center closes it, a CLI run just exits.
    w.unref();
    w.on('message', (reply: ScryptReply) => {
      const job = waiting.get(reply.id);
      if (job === undefined) return;
      waiting.delete(reply.id);
      if ('error' in reply) {
        job.reject(new Error(`scrypt: ${reply.error}`));
        return;
      }
      // The worker takes jobs in order: this one ran from when it was asked or when the one
      // before it was answered, whichever is later. The newest measure weighs one eighth.
      const at = performance.now();
      estimateMs = (estimateMs * 7 + (at - Math.max(job.startedAt, lastReplyAt))) / 8;
      lastReplyAt = at;
      job.resolve(Buffer.from(reply.key));
    });
    const lost = (err: Error) => {
      if (worker === w) worker = undefined;
      failAll(err);
    };
    w.on('error', lost);
    w.on('exit', (code) => lost(new Error(`the password hashing thread exited with ${code}`)));
    return w;
  };

  const derive = (input: ScryptInput, keyBytes: number): Promise<Buffer> => {
    worker ??= start();
    const id = nextId++;
    const request: ScryptRequest = {
      id,
      password: input.password,
      salt: input.salt,
      ...input.params,
      keyBytes,
      maxmem: SCRYPT_MAXMEM,
    };
    const w = worker;
    return new Promise((resolve, reject) => {
      waiting.set(id, { resolve, reject, startedAt: performance.now() });
      w.postMessage(request);
    });
  };

  const reserve = (): PasswordSlot | { retryAfterMs: number } => {
    if (held >= options.maxQueued) {
      return { retryAfterMs: Math.max(1000, Math.ceil((held * estimateMs) / 1000) * 1000) };
    }
    held += 1;
    let done = false;
    const release = () => {
      if (done) return;
      done = true;
      held -= 1;
    };
    return {
      release,
      async verify(password, stored) {
        try {
          const parsed = parseHash(password, stored);
          if (parsed === undefined) return false;
          return keysMatch(await derive(parsed.input, parsed.expected.length), parsed.expected);
        } finally {
          release();
        }
      },
    };
  };

  return {
    reserve,
    async hash(password) {
      const slot = reserve();
      if (!('verify' in slot)) throw busy(slot.retryAfterMs);
      try {
        const input = newHashInput(password);
        return formatHash(input, await derive(input, KEY_BYTES));
      } finally {
        slot.release();
      }
    },
    pending: () => held,
    async close() {
      const w = worker;
      worker = undefined;
      failAll(new Error('the password hasher is closed'));
      await w?.terminate();
    },
  };
}

/** The answer to a check refused because the queue is full. */
export function busy(retryAfterMs: number): BulkheadError {
  return new BulkheadError(
    ErrorCodes.RATE_LIMITED,
    `too many password checks are waiting; try again in ${Math.ceil(retryAfterMs / 1000)} s`,
    { retryable: true, details: { retryAfterMs } },
  );
}
