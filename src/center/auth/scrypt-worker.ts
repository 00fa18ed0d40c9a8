import { scryptSync } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

/*
 * The thread that derives password keys for a PasswordHasher (password-hasher.ts), one at a
 * time, in the order asked. It runs scrypt synchronously on its own thread, so hashing never
 * takes one of libuv's threadpool threads, which file reads, DNS and other crypto share.
 */

/** One derivation asked of the thread. */
export interface ScryptRequest {
  id: number;
  password: string;
  salt: Uint8Array;
  N: number;
  r: number;
  p: number;
  keyBytes: number;
  maxmem: number;
}

/** Its answer: the key, or why there is none. */
export type ScryptReply = { id: number; key: Uint8Array } | { id: number; error: string };

parentPort?.on('message', (m: ScryptRequest) => {
  let reply: ScryptReply;
  try {
    const key = scryptSync(m.password, m.salt, m.keyBytes, {
      N: m.N,
      r: m.r,
      p: m.p,
      maxmem: m.maxmem,
    });
    reply = { id: m.id, key };
  } catch (err) {
    reply = { id: m.id, error: (err as Error).message };
  }
  parentPort?.postMessage(reply);
});
