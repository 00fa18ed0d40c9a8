import type { Transaction } from 'kysely';
import { writeAudit, type Actor } from '../admin/audit.ts';
import type { Database } from '../db/index.ts';
import { transact, type ChangeDeps } from './mark.ts';

/*
 * One administrative change = one command: a transaction holding the change and its audit
 * entry (who, what, before and after), which commit together or not at all, and the devices
 * whose desired state it changed (`markChanged`) told after commit.
 */

/** What a command is called in the audit trail. */
export interface CommandSpec {
  /** `group.create`, `rollout.pause`, … */
  action: string;
  /** The kind of thing acted on: `group`, `device`, `rollout`, … */
  target: string;
  /** Its id, when known before the change (a created row's comes back in the outcome). */
  id?: string | null;
}

/**
 * What the change did: its result and the audited before/after (`id` names a row it created);
 * or `unchanged` when there was nothing to do, which leaves no audit entry.
 */
export type Outcome<R> =
  { result: R; before: unknown; after: unknown; id?: string } | { result: R; unchanged: true };

export interface CommandDeps extends ChangeDeps {
  /** Epoch ms of the command, from the injected clock. */
  nowMs: number;
}

/** Runs `change` as one audited command in its own transaction (see above). */
export async function runCommand<R>(
  deps: CommandDeps,
  actor: Actor,
  spec: CommandSpec,
  change: (trx: Transaction<Database>, at: number) => Promise<Outcome<R>>,
): Promise<R> {
  return transact(deps, (trx) => applyCommand(trx, actor, spec, deps.nowMs, change));
}

/**
 * `runCommand` inside a transaction that `transact` already opened, for work that makes several
 * changes at once (the rollout scheduler's tick, a report batch halting a rollout).
 */
export async function applyCommand<R>(
  trx: Transaction<Database>,
  actor: Actor,
  spec: CommandSpec,
  at: number,
  change: (trx: Transaction<Database>, at: number) => Promise<Outcome<R>>,
): Promise<R> {
  const outcome = await change(trx, at);
  if ('unchanged' in outcome) return outcome.result;
  await writeAudit(trx, {
    actor,
    action: spec.action,
    targetType: spec.target,
    targetId: outcome.id ?? spec.id ?? null,
    before: outcome.before,
    after: outcome.after,
    at,
  });
  return outcome.result;
}
