import {
  isBulkheadError,
  MAX_REPORT_BYTES,
  MAX_REPORT_EVENTS,
  REPORT_ENVELOPE_BYTES,
  ErrorCodes,
  type DeviceCommand,
  type SignedDesiredState,
} from '../protocol/index.ts';
import { DESIRED_STATE_REFUSALS, type CenterClient } from './center-client.ts';
import type { Clock } from './clock.ts';
import type { Log } from './log.ts';
import type { EventQueue } from './queue.ts';
import {
  initialConnectivity,
  type Connectivity,
  type EngineFiles,
  type StoredDesiredState,
  type SyncState,
} from './state.ts';

/*
 * The sync loop: Engine's contact with Center, offline first.
 *
 * Each contact polls the desired state (If-None-Match, so an unchanged one is a 304), hands a
 * new verified one to the commands handler and to `onDesiredState`, then delivers the event
 * queue in order, in batches, acknowledging a batch only once Center answered 200. Between
 * contacts it sleeps the poll interval, or less when the push channel says something changed;
 * while Center is unreachable it backs off exponentially with full jitter (a fleet that lost
 * Center together does not come back in step). When Center refuses a batch for the device's
 * report quota (429), the events stay queued and no report is sent before its Retry-After has
 * passed, whatever wakes the loop; the next contact is due then.
 *
 * The last verified desired state is on disk, so a restart with Center down starts from it;
 * it is handed on as is even once past its `expiresAt`: expiry guards against a stale document
 * being *fetched* (a freeze attack), while running offline for weeks is the lease's business.
 */

export interface CommandOutcome {
  ok: boolean;
  message: string;
}

/** Carries out one command (lock, unlock, kill, restart-vm). */
export type CommandHandler = (
  command: DeviceCommand,
  document: SignedDesiredState,
) => Promise<CommandOutcome>;

export interface SyncLoopDeps {
  client: Pick<CenterClient, 'getDesiredState' | 'sendReports' | 'subscribePush'>;
  queue: EventQueue;
  store: Pick<EngineFiles, 'desiredState' | 'sync'>;
  clock: Clock;
  log: Log;
  /**
   * Called with each new verified desired state (and with the stored one at start). Should
   * return promptly (schedule the work): the loop waits for it before its next step.
   */
  onDesiredState(document: SignedDesiredState, source: 'center' | 'disk'): Promise<void> | void;
  /** Carries out commands; without one, each command is answered as not supported. */
  handleCommand?: CommandHandler;
  /**
   * Poll interval while online. Without it, the interval the desired state names
   * (`pollIntervalSeconds`, set by Center), else 60 s.
   */
  pollIntervalMs?: number;
  /** First backoff ceiling (default 1 s); doubles per consecutive failure. */
  backoffBaseMs?: number;
  /** Backoff ceiling (default 5 min). */
  backoffCapMs?: number;
  /** In [0, 1); Math.random when omitted. */
  random?: () => number;
  /** Hold Center's push channel (default true). */
  push?: boolean;
}

export interface SyncOutcome {
  /** Whether Center was reached and the queue delivered. */
  ok: boolean;
  /** How long the loop waits before the next contact. */
  nextDelayMs: number;
  /** Events delivered in this contact. */
  delivered: number;
}

export interface SyncLoop {
  /** Loads the stored state, hands it on, and starts polling (and the push channel). */
  start(): Promise<void>;
  /** Stops after the contact in progress, if any. */
  stop(): Promise<void>;
  /** One contact now (also used by the loop itself). */
  syncNow(): Promise<SyncOutcome>;
  /** Ends the current wait, so the next contact happens at once. */
  wake(): void;
  /** Center may tune the poll interval. */
  setPollIntervalMs(ms: number): void;
  connectivity(): Connectivity;
  /** The last verified desired state. */
  current(): StoredDesiredState | undefined;
}

/** Handled command ids remembered (Center drops a command once its result arrived). */
const HANDLED_COMMANDS_KEPT = 1_000;

/** The wait Center asked for with a refusal (its Retry-After), if it named one. */
function retryAfterOf(err: { details?: unknown }): number | undefined {
  const ms = (err.details as { retryAfterMs?: unknown } | undefined)?.retryAfterMs;
  return typeof ms === 'number' && Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

export function createSyncLoop(deps: SyncLoopDeps): SyncLoop {
  const { client, queue, store, clock, log } = deps;
  const random = deps.random ?? Math.random;
  const base = deps.backoffBaseMs ?? 1_000;
  const cap = deps.backoffCapMs ?? 5 * 60_000;
  let pollIntervalMs = deps.pollIntervalMs ?? 60_000;
  let connectivity = initialConnectivity();
  let handled: string[] = [];
  let current: StoredDesiredState | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  let sleeping: AbortController | undefined;
  let wakeRequested = false;
  let push: { close(): void } | undefined;
  let chain: Promise<unknown> = Promise.resolve();
  /** No report is sent before this time (Center's Retry-After on its report quota). */
  let reportsHeldUntil = 0;
  /** Why reports are held, for the connectivity `engine status` shows. */
  let quotaRefusal: { code: string; message: string } | undefined;

  const persist = () =>
    store.sync.write({ connectivity, handledCommands: handled } satisfies SyncState);

  async function runCommands(document: SignedDesiredState): Promise<void> {
    for (const command of document.state.commands) {
      if (handled.includes(command.id)) continue;
      let outcome: CommandOutcome;
      try {
        outcome = deps.handleCommand
          ? await deps.handleCommand(command, document)
          : { ok: false, message: `this Engine cannot carry out ${command.kind} commands` };
      } catch (err) {
        outcome = { ok: false, message: (err as Error).message ?? String(err) };
      }
      // The result is queued before the command is marked handled: after a crash in between
      // the command runs again and its result, under the same event id, is counted once.
      await queue.append({
        id: `command-result-${command.id}`,
        type: 'command-result',
        data: {
          commandId: command.id,
          kind: command.kind,
          ok: outcome.ok,
          message: outcome.message.slice(0, 1000),
        },
      });
      handled = [...handled, command.id].slice(-HANDLED_COMMANDS_KEPT);
      await persist();
      log.info(
        {
          component: 'sync',
          commandId: command.id,
          kind: command.kind,
          ok: outcome.ok,
          result: outcome.message,
        },
        'command handled',
      );
    }
  }

  async function deliver(document: SignedDesiredState, source: 'center' | 'disk') {
    // Center tunes the poll interval for its fleet, unless this device was given its own.
    const tuned = document.state.pollIntervalSeconds;
    if (deps.pollIntervalMs === undefined && tuned !== undefined) pollIntervalMs = tuned * 1000;
    await runCommands(document);
    try {
      await deps.onDesiredState(document, source);
    } catch (err) {
      log.error({ component: 'sync', err }, 'handling the desired state failed');
    }
  }

  /**
   * Sends the whole queue in order, in batches that Center's limits accept; acknowledges each
   * batch only after a 200. A 429 (the report quota) keeps that batch and the rest queued and
   * holds reports until its Retry-After has passed.
   */
  async function flush(): Promise<number> {
    let delivered = 0;
    while (queue.depth() > 0 && clock.now() >= reportsHeldUntil) {
      const batch = queue.peek(MAX_REPORT_EVENTS, MAX_REPORT_BYTES - REPORT_ENVELOPE_BYTES);
      try {
        await client.sendReports(batch);
      } catch (err) {
        if (!isBulkheadError(err, ErrorCodes.RATE_LIMITED)) throw err;
        const waitMs = retryAfterOf(err) ?? base;
        reportsHeldUntil = clock.now() + waitMs;
        quotaRefusal = { code: err.code, message: err.message };
        log.warn(
          { component: 'sync', retryInMs: waitMs, queued: queue.depth() },
          'Center asks for fewer reports: the events wait',
        );
        break;
      }
      await queue.ack(batch.map((e) => e.id));
      delivered += batch.length;
      quotaRefusal = undefined;
    }
    return delivered;
  }

  /** When a contact that reached Center should be followed by the next one. */
  function nextContactMs(now: number): number {
    if (queue.depth() === 0 || reportsHeldUntil <= now) return pollIntervalMs;
    return Math.min(pollIntervalMs, reportsHeldUntil - now);
  }

  function backoffMs(failures: number, err: unknown): number {
    const ceiling = Math.min(cap, base * 2 ** Math.min(failures, 30));
    const jittered = random() * ceiling;
    const retryAfter = isBulkheadError(err, ErrorCodes.RATE_LIMITED) ? retryAfterOf(err) : 0;
    return Math.max(jittered, retryAfter ?? 0);
  }

  async function contact(): Promise<SyncOutcome> {
    let refusal: { code: string; message: string } | undefined;
    let delivered = 0;
    try {
      try {
        const answer = await client.getDesiredState({
          etag: current?.etag ?? null,
          revision: current?.document.state.revision,
        });
        if (answer.changed) {
          const stored: StoredDesiredState = {
            etag: answer.etag,
            document: answer.document,
            verifiedAt: clock.now(),
          };
          // Written before it is acted on: a restart resumes from what was acted on.
          await store.desiredState.write(stored);
          current = stored;
          log.info(
            { component: 'sync', revision: answer.document.state.revision },
            'new desired state',
          );
          await deliver(answer.document, 'center');
        }
      } catch (err) {
        // A refused document still means Center (or someone on the path) answered: report,
        // keep the last good state, and go on delivering events.
        if (!(isBulkheadError(err) && DESIRED_STATE_REFUSALS.has(err.code))) throw err;
        refusal = { code: err.code, message: err.message };
      }
      delivered = await flush();
    } catch (err) {
      const failures = connectivity.consecutiveFailures + 1;
      const nextDelayMs = backoffMs(failures, err);
      connectivity = {
        ...connectivity,
        online: false,
        consecutiveFailures: failures,
        lastError: {
          code: isBulkheadError(err) ? err.code : ErrorCodes.INTERNAL,
          message: (err as Error).message ?? String(err),
          at: clock.now(),
        },
        nextAttemptAt: clock.now() + Math.round(nextDelayMs),
      };
      await persist();
      log.warn(
        {
          component: 'sync',
          code: connectivity.lastError?.code,
          failures,
          retryInMs: Math.round(nextDelayMs),
          queued: queue.depth(),
        },
        `no contact with Center: ${connectivity.lastError?.message}`,
      );
      return { ok: false, nextDelayMs, delivered };
    }
    const now = clock.now();
    const nextDelayMs = nextContactMs(now);
    const held = queue.depth() > 0 && reportsHeldUntil > now ? quotaRefusal : undefined;
    const lastError = refusal ?? held;
    connectivity = {
      online: true,
      lastContactAt: now,
      lastError: lastError === undefined ? null : { ...lastError, at: now },
      consecutiveFailures: 0,
      nextAttemptAt: now + nextDelayMs,
    };
    await persist();
    return { ok: true, nextDelayMs, delivered };
  }

  function syncNow(): Promise<SyncOutcome> {
    const run = chain.then(contact);
    chain = run.catch(() => {});
    return run;
  }

  async function loop(): Promise<void> {
    while (!stopped) {
      let outcome: SyncOutcome;
      try {
        outcome = await syncNow();
      } catch (err) {
        // A local fault (disk full writing the state, say): log it, try again later.
        log.error({ component: 'sync', err }, 'sync step failed');
        outcome = { ok: false, nextDelayMs: pollIntervalMs, delivered: 0 };
      }
      if (stopped) break;
      if (wakeRequested) {
        wakeRequested = false;
        continue;
      }
      sleeping = new AbortController();
      await clock.sleep(outcome.nextDelayMs, sleeping.signal);
      sleeping = undefined;
      wakeRequested = false;
    }
  }

  return {
    async start() {
      if (running !== undefined) return;
      stopped = false;
      const saved = await store.sync.read();
      if (saved !== undefined) {
        connectivity = saved.connectivity;
        handled = saved.handledCommands;
      }
      current = await store.desiredState.read();
      if (current !== undefined) await deliver(current.document, 'disk');
      if (deps.push ?? true) push = client.subscribePush(() => this.wake());
      running = loop();
    },
    async stop() {
      stopped = true;
      push?.close();
      push = undefined;
      sleeping?.abort();
      await running;
      running = undefined;
    },
    syncNow,
    wake() {
      wakeRequested = true;
      sleeping?.abort();
    },
    setPollIntervalMs(ms) {
      pollIntervalMs = Math.max(1_000, ms);
    },
    connectivity: () => connectivity,
    current: () => current,
  };
}
