import { z } from 'zod';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import { ReleaseSchema, type Release } from '../volumes/index.ts';

/*
 * The update transaction of one VM (DESIGN §3) as a table: `(state, event) → next state`.
 * Each state has one handler (an executor, see executors.ts) that does the step and answers
 * with an event; the runner looks the event up here, persists the transaction in its next
 * state, and only then runs that state's handler. So after a crash the persisted state names
 * the step to redo, and every handler is written to be redone safely.
 *
 * Until `switching` nothing on the VM has changed (a failure is `failed`, nothing switched).
 * From `switching` on, the default failure path is rollback to the previous version; the point
 * of no return is `committed`.
 */

export const UPDATE_STATES = [
  'idle',
  'downloading',
  'staged',
  'switching',
  'booting',
  'health-check',
  'committed',
  'rolling-back',
  'rolled-back',
  'failed',
] as const;
export type UpdateState = (typeof UPDATE_STATES)[number];
/** States a persisted transaction can be in (idle means there is none). */
export type ActiveState = Exclude<UpdateState, 'idle'>;
export const ACTIVE_STATES = UPDATE_STATES.filter((s): s is ActiveState => s !== 'idle');

export const UPDATE_EVENTS = [
  'begin',
  /** The handler cannot go on yet (switch window closed, mirrors unreachable); stay. */
  'wait',
  /** The target changed before anything was switched: drop this transaction. */
  'cancel',
  'downloaded',
  'download-failed',
  'window-open',
  'switched',
  'switch-failed',
  'booted',
  'boot-failed',
  'healthy',
  'unhealthy',
  /** Engine restarted in the middle of a boot or health check: boot the target afresh. */
  'resumed',
  'attempts-exhausted',
  'rolled-back',
  'rollback-failed',
  'nothing-to-roll-back',
  'done',
] as const;
export type UpdateEvent = (typeof UPDATE_EVENTS)[number];

export const TRANSITIONS: {
  readonly [S in UpdateState]: Readonly<Partial<Record<UpdateEvent, UpdateState>>>;
} = {
  idle: { begin: 'downloading' },
  downloading: {
    downloaded: 'staged',
    'download-failed': 'failed',
    wait: 'downloading',
    cancel: 'idle',
  },
  staged: { 'window-open': 'switching', wait: 'staged', cancel: 'idle' },
  switching: { switched: 'booting', 'switch-failed': 'rolling-back' },
  booting: {
    booted: 'health-check',
    'boot-failed': 'rolling-back',
    resumed: 'switching',
    'attempts-exhausted': 'rolling-back',
  },
  'health-check': {
    healthy: 'committed',
    unhealthy: 'rolling-back',
    // Cut short by Engine stopping: resumed at the next start like any interrupted check.
    wait: 'health-check',
    resumed: 'switching',
    'attempts-exhausted': 'rolling-back',
  },
  committed: { done: 'idle' },
  'rolling-back': {
    'rolled-back': 'rolled-back',
    'rollback-failed': 'rolling-back',
    'attempts-exhausted': 'failed',
    'nothing-to-roll-back': 'failed',
  },
  'rolled-back': { done: 'idle' },
  failed: { done: 'idle' },
};

export const TransactionSchema = z.strictObject({
  vm: z.string(),
  profileId: z.string(),
  /** What the VM ran before; null for its first install (nothing to roll back to). */
  from: ReleaseSchema.nullable(),
  to: ReleaseSchema,
  state: z.enum(UPDATE_STATES).exclude(['idle']),
  /** Boots of the target so far in `switching`…`health-check`; rollbacks in `rolling-back`. */
  attempt: z.number().int().min(0),
  /** Why the transaction failed or rolled back; null while all goes well. */
  reason: z.string().nullable(),
  startedAt: z.number().int().min(0),
  /** When the current state was entered. */
  since: z.number().int().min(0),
});
export type Transaction = z.infer<typeof TransactionSchema>;

/** What a handler answers: an event, with the reason when it is a failure. */
export type Outcome = UpdateEvent | { event: UpdateEvent; reason?: string };

/** One handler per state a transaction can be in; a missing one is a compile error. */
export type UpdateExecutors = {
  readonly [S in ActiveState]: (tx: Transaction) => Promise<Outcome>;
};

export interface RunOptions {
  executors: UpdateExecutors;
  /** Writes the transaction durably (null: it is over) before the next step runs. */
  persist: (tx: Transaction | null) => Promise<void>;
  /** Called right after each persist; the crash tests stop the process here. */
  afterPersist?: (state: UpdateState) => void;
  now: () => number;
  /** Boots of the target before giving up and rolling back (default 2). */
  maxBootAttempts?: number;
  /** Rollback attempts before the transaction is failed (default 3). */
  maxRollbackAttempts?: number;
}

/** The state after `event` in `state`; throws on an event the table does not allow. */
export function nextState(state: UpdateState, event: UpdateEvent): UpdateState {
  const next = TRANSITIONS[state][event];
  if (next === undefined) {
    throw new BulkheadError(
      ErrorCodes.INTERNAL,
      `update transaction: event ${event} is not allowed in state ${state}`,
    );
  }
  return next;
}

/** A new transaction, not yet persisted (its first step is the download). */
export function beginTransaction(
  vm: string,
  profileId: string,
  from: Release | null,
  to: Release,
  now: number,
): Transaction {
  return {
    vm,
    profileId,
    from,
    to,
    state: nextState('idle', 'begin') as ActiveState,
    attempt: 0,
    reason: null,
    startedAt: now,
    since: now,
  };
}

/**
 * The event that starts a transaction loaded after a restart. A boot or health check that was
 * under way cannot be trusted to finish: the target is booted afresh, unless it has had its
 * boots already. Every other state's handler redoes its step.
 */
export function resumeEvent(tx: Transaction, maxBootAttempts = 2): UpdateEvent | null {
  if (tx.state !== 'booting' && tx.state !== 'health-check') return null;
  return tx.attempt >= maxBootAttempts ? 'attempts-exhausted' : 'resumed';
}

function apply(
  tx: Transaction,
  event: UpdateEvent,
  reason: string | undefined,
  now: number,
): Transaction {
  const state = nextState(tx.state, event) as ActiveState;
  let attempt = tx.attempt;
  if (state === 'switching') attempt += 1;
  if (state === 'rolling-back') attempt = tx.state === 'rolling-back' ? attempt + 1 : 1;
  return {
    ...tx,
    state,
    attempt,
    // The first failure is the one worth reporting; later ones happen on the way back.
    reason: tx.reason ?? reason ?? null,
    since: state === tx.state ? tx.since : now,
  };
}

/**
 * Runs a transaction from its persisted state until it is over (returns null) or a handler
 * answers `wait` (returns the transaction, to be run again later). `tx` must already be
 * persisted in its current state. With `resumed`, a boot or health check interrupted by a
 * restart is redone from a fresh boot.
 */
export async function runTransaction(
  start: Transaction,
  options: RunOptions & { resumed?: boolean },
): Promise<Transaction | null> {
  const maxBoots = options.maxBootAttempts ?? 2;
  const maxRollbacks = options.maxRollbackAttempts ?? 3;
  let tx = start;
  let pending: { event: UpdateEvent; reason?: string } | null = null;
  if (options.resumed) {
    const event = resumeEvent(tx, maxBoots);
    if (event)
      pending = {
        event,
        ...(event === 'attempts-exhausted'
          ? { reason: `the new version did not become healthy in ${tx.attempt} boots` }
          : {}),
      };
  }
  for (;;) {
    if (!pending) {
      const outcome = await options.executors[tx.state](tx);
      pending = typeof outcome === 'string' ? { event: outcome } : outcome;
      // Failures that can be retried are, a bounded number of times.
      if (pending.event === 'rollback-failed' && tx.attempt >= maxRollbacks)
        pending = { event: 'attempts-exhausted', reason: pending.reason ?? 'rollback failed' };
    }
    const { event, reason } = pending;
    pending = null;
    if (event === 'wait') {
      nextState(tx.state, event);
      return tx;
    }
    const state = nextState(tx.state, event);
    if (state === 'idle') {
      await options.persist(null);
      options.afterPersist?.('idle');
      return null;
    }
    tx = apply(tx, event, reason, options.now());
    await options.persist(tx);
    options.afterPersist?.(tx.state);
  }
}
