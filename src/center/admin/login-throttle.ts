import { normalizeIP } from '@fastify/rate-limit';
import { PostgresAdapter, type Kysely } from 'kysely';
import type { Database } from '../db/index.ts';

/*
 * Failed logins are throttled per (username, source address) with exponential backoff, and
 * nothing else: a wrong password from one address never slows the same user at another, so no
 * anonymous client can lock a person out, however long it keeps trying. What bounds guessing is
 * the backoff of each pair (after FREE_FAILURES, each failure doubles the wait, up to
 * MAX_DELAY_MS: about a hundred guesses a day per address) and the per-address request limit
 * of the login route (src/center/server.ts).
 *
 * The counts live in the database, not in memory: every replica sees the same ones (N
 * replicas do not give N times the tries), a restart does not forget them, and there is no
 * bounded table from which a flood of other names could evict the record of the name under
 * attack. The table's size is bounded by the per-address limit times the retention
 * (FORGET_MS); rows are pruned as they age. @fastify/rate-limit is not used here: it counts
 * requests, not failures, and cannot forget a pair when its password turns out right.
 */

/** Failures a pair may make before it has to wait. */
export const FREE_FAILURES = 5;
/** The wait after the first failure beyond the free ones; each further failure doubles it. */
export const FIRST_DELAY_MS = 1000;
/** The longest wait between two attempts of one pair. */
export const MAX_DELAY_MS = 15 * 60_000;
/** A pair with no attempt for this long starts afresh. */
export const FORGET_MS = 24 * 60 * 60_000;
/** How often (at most) a process deletes forgotten rows. */
const PRUNE_EVERY_MS = 60_000;

/** How long a pair waits after its `failures`-th failure. */
export function delayAfter(failures: number): number {
  if (failures <= FREE_FAILURES) return 0;
  return Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(failures - FREE_FAILURES - 1, 30));
}

/** The key an address is throttled under: itself, or an IPv6 address's /64 (one subscriber). */
export function sourceOf(address: string): string {
  return normalizeIP(address, 64);
}

export interface LoginThrottle {
  /**
   * Counts an attempt of `username` from `address` before its password is checked, as a
   * failure until `succeeded` says otherwise, so that concurrent attempts cannot all slip in
   * before the first one's failure is recorded.
   * @returns 0 when the attempt may go ahead (and is counted), else the milliseconds the pair
   *   must still wait (nothing counted).
   */
  claim(username: string, address: string): Promise<number>;
  /** Forgets the pair's failures: the password was right. */
  succeeded(username: string, address: string): Promise<void>;
}

export function createLoginThrottle(deps: {
  db: Kysely<Database>;
  now: () => Date;
}): LoginThrottle {
  const { db } = deps;
  let prunedAt = Number.NEGATIVE_INFINITY;

  const prune = async (at: number): Promise<void> => {
    if (at - prunedAt < PRUNE_EVERY_MS) return;
    prunedAt = at;
    await db
      .deleteFrom('login_throttle')
      .where('last_attempt_at', '<=', at - FORGET_MS)
      .execute();
  };

  return {
    async claim(username, address) {
      const source = sourceOf(address);
      const at = deps.now().getTime();
      await prune(at);
      // One transaction per attempt, the pair's row locked (PostgreSQL; SQLite runs one
      // writer at a time): concurrent attempts, on this replica or another, are counted one
      // after the other, so none slips past the backoff the one before it started.
      return db.transaction().execute(async (trx) => {
        await trx
          .insertInto('login_throttle')
          .values({ username, source, failures: 0, blocked_until: 0, last_attempt_at: at })
          .onConflict((oc) => oc.columns(['username', 'source']).doNothing())
          .execute();
        const row = await trx
          .selectFrom('login_throttle')
          .select(['failures', 'blocked_until', 'last_attempt_at'])
          .where('username', '=', username)
          .where('source', '=', source)
          .$call((q) => (trx.getExecutor().adapter instanceof PostgresAdapter ? q.forUpdate() : q))
          .executeTakeFirstOrThrow();
        const forgotten = Number(row.last_attempt_at) <= at - FORGET_MS;
        if (!forgotten && Number(row.blocked_until) > at) return Number(row.blocked_until) - at;
        const failures = (forgotten ? 0 : row.failures) + 1;
        await trx
          .updateTable('login_throttle')
          .set({
            failures,
            blocked_until: failures > FREE_FAILURES ? at + delayAfter(failures) : 0,
            last_attempt_at: at,
          })
          .where('username', '=', username)
          .where('source', '=', source)
          .execute();
        return 0;
      });
    },

    async succeeded(username, address) {
      await db
        .deleteFrom('login_throttle')
        .where('username', '=', username)
        .where('source', '=', sourceOf(address))
        .execute();
    },
  };
}
