import { sql } from 'kysely';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import { applyCommand, transact } from '../changes/index.ts';
import {
  advanceRollout,
  failureVerdict,
  hasEnoughReports,
  haltRollout,
  isLastPhase,
  phaseStats,
  presentChange,
  ROLLOUT,
  SYSTEM,
} from './commands.ts';
import { parseRollout, type RolloutContext, type Tx } from './model.ts';

/*
 * The rollout scheduler. Each tick looks at every running rollout: when the failure share of
 * the devices in the phases reached crosses the threshold, it halts it, naming the numbers;
 * otherwise, when the phase has soaked long enough and has the outcomes it needs, it starts the
 * next phase (the devices it adds are marked changed, and told after commit) or, after the
 * last, completes it. Each of these is audited as `system`.
 *
 * One scheduler at a time across replicas: on PostgreSQL a tick is one transaction that first
 * takes `pg_try_advisory_xact_lock(SCHEDULER_LOCK)`; a replica that does not get it skips the
 * tick, and the lock goes with the transaction, so a replica that dies holding it frees it.
 * On SQLite there is one process, and its transactions are serialised anyway.
 *
 * Cost per tick: one grouped count over each running rollout's `rollout_devices` rows (an index
 * range on (rollout_id, phase, status)), no device rows read into memory. Only a phase change
 * reads the target's device ids (paged, O(devices in the target)) to hash their buckets.
 */

/** The advisory lock key of the scheduler (any constant of Bulkhead's own: "BHRO" in ASCII). */
export const SCHEDULER_LOCK = 0x4248524f;

export interface TickResult {
  /** False when another replica holds the scheduler lock: this tick did nothing. */
  ran: boolean;
  advanced: string[];
  completed: string[];
  halted: string[];
}

export interface RolloutScheduler {
  /** One pass over the running rollouts; notifies the devices it changed after commit. */
  tick(): Promise<TickResult>;
  /** Ticks every `intervalMs` until `stop()`; a tick never overlaps the previous one. */
  start(): void;
  /** Stops ticking and waits for a tick in progress. */
  stop(): Promise<void>;
}

export function createRolloutScheduler(
  ctx: RolloutContext,
  options: { intervalMs?: number } = {},
): RolloutScheduler {
  const intervalMs = options.intervalMs ?? 10_000;
  const log = ctx.log.child({ component: 'rollout' });
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;

  async function tick(): Promise<TickResult> {
    const result: TickResult = { ran: false, advanced: [], completed: [], halted: [] };
    await transact(ctx, async (tx) => {
      if (ctx.dialect === 'postgres') {
        const lock = await sql<{
          locked: boolean;
        }>`select pg_try_advisory_xact_lock(${SCHEDULER_LOCK}) as locked`.execute(tx);
        if (lock.rows[0]?.locked !== true) return;
      }
      result.ran = true;
      const nowMs = ctx.now().getTime();
      const rows = await tx
        .selectFrom('rollouts')
        .selectAll()
        .where('state', '=', 'running')
        .execute();
      for (const row of rows) {
        try {
          await step(tx, parseRollout(row), nowMs, result);
        } catch (err) {
          // Changed by an operator meanwhile: judged again at the next tick.
          if (!(err instanceof BulkheadError && err.code === ErrorCodes.ROLLOUT_STATE)) throw err;
        }
      }
    });
    for (const id of result.halted)
      log.warn({ rolloutId: id }, 'rollout halted: failure threshold crossed');
    for (const id of result.advanced) log.info({ rolloutId: id }, 'rollout phase started');
    for (const id of result.completed) log.info({ rolloutId: id }, 'rollout completed');
    return result;
  }

  async function step(
    tx: Tx,
    rollout: ReturnType<typeof parseRollout>,
    nowMs: number,
    result: TickResult,
  ): Promise<void> {
    const stats = await phaseStats(tx, rollout.id);
    const reason = failureVerdict(rollout, stats);
    if (reason !== undefined) {
      await haltRollout(tx, rollout, reason, nowMs);
      result.halted.push(rollout.id);
      return;
    }
    const soaked = nowMs - (rollout.phase_started_at ?? nowMs) >= rollout.soak_ms;
    if (!soaked || !hasEnoughReports(rollout, stats)) return;
    const done = isLastPhase(rollout);
    const spec = ROLLOUT(done ? 'complete' : 'advance', rollout.id);
    await applyCommand(tx, SYSTEM, spec, nowMs, async () => {
      const next = await advanceRollout(tx, SYSTEM, rollout, nowMs);
      return { result: next, ...(await presentChange(tx, rollout, next)) };
    });
    (done ? result.completed : result.advanced).push(rollout.id);
  }

  const guarded = () => {
    if (running !== undefined) return;
    running = tick()
      .catch((err: unknown) => log.error({ err }, 'rollout scheduler tick failed'))
      .finally(() => {
        running = undefined;
      });
  };

  return {
    tick,
    start() {
      if (timer !== undefined) return;
      timer = setInterval(guarded, intervalMs);
      timer.unref();
    },
    async stop() {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
      await running;
    },
  };
}
