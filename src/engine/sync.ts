import {
  isBulkheadError,
  MAX_REPORT_BYTES,
  MAX_REPORT_EVENTS,
  REPORT_ENVELOPE_BYTES,
  ErrorCodes,
  type DesiredState,
  type DesiredVm,
  type DeviceCommand,
  type DeviceEvent,
  type SignedDesiredState,
  type SignedKillNotice,
} from '../protocol/index.ts';
import {
  DESIRED_STATE_REFUSALS,
  type CenterClient,
  type PushSubscription,
} from './center-client.ts';
import type { Clock } from './clock.ts';
import type { Log } from './log.ts';
import type { EventQueue } from './queue.ts';
import {
  initialConnectivity,
  type Connectivity,
  type EngineFiles,
  type StoredDesiredState,
  type StoredKillNotice,
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
 *
 * Killed. Center answers a killed device only with a signed notice of its kill (in place of a
 * token or a desired state). Once it verifies, the notice is written to disk and the device is
 * killed for good: the loop hands on a desired state of its own making, `killed` with the VMs
 * it had (without their data keys) and nothing to start, carries out the kill command the notice
 * names as it would any kill (every VM stops), and from then on takes no desired state from
 * anyone, Center's or a replayed one, on this run or after a restart. Its only business with
 * Center left is the kill's result, sent through the route a killed device may use; the rest of
 * its queue, which Center would refuse forever, is dropped. Then it stays quiet: Center has
 * nothing more to say to it.
 */

export interface CommandOutcome {
  ok: boolean;
  message: string;
}

/** Carries out one command (lock, unlock, kill, restart-vm) under the desired state it came in. */
export type CommandHandler = (
  command: DeviceCommand,
  desired: DesiredState,
) => Promise<CommandOutcome>;

export interface SyncLoopDeps {
  client: Pick<
    CenterClient,
    'getDesiredState' | 'sendReports' | 'sendKillResult' | 'subscribePush'
  >;
  queue: EventQueue;
  store: Pick<EngineFiles, 'desiredState' | 'killNotice' | 'sync' | 'wrappedKeys'>;
  clock: Clock;
  log: Log;
  /**
   * Called with each new verified desired state (and with the stored one at start), or, once
   * killed, with the killed state the loop makes. Should return promptly (schedule the work):
   * the loop waits for it before its next step.
   */
  onDesiredState(desired: DesiredState, source: 'center' | 'disk'): Promise<void> | void;
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
  /**
   * Called once the kill's result has reached Center (or Center refused it for good), before
   * it leaves the queue: Engine destroys its identity key then, and speaks to Center no more.
   */
  onKillReported?: () => Promise<void>;
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
  /** Center's push channel: its state, or `off` when the loop holds none (stopped, killed). */
  pushState(): Exclude<PushSubscription['state'], 'closed'> | 'off';
  /** The last verified desired state. */
  current(): StoredDesiredState | undefined;
  /** Center's verified notice that this device is killed, once there is one. */
  killed(): StoredKillNotice | undefined;
}

/** A VM as the killed state keeps it: without its wrapped data key. */
function withoutKey(vm: DesiredVm): DesiredVm {
  const copy = { ...vm };
  delete copy.wrappedDataKeyDigest;
  return copy;
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
  let killed: StoredKillNotice | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  let sleeping: AbortController | undefined;
  let wakeRequested = false;
  let push: Pick<PushSubscription, 'state' | 'close'> | undefined;
  let chain: Promise<unknown> = Promise.resolve();
  /** No report is sent before this time (Center's Retry-After on its report quota). */
  let reportsHeldUntil = 0;
  /** Why reports are held, for the connectivity `engine status` shows. */
  let quotaRefusal: { code: string; message: string } | undefined;

  const persist = () =>
    store.sync.write({ connectivity, handledCommands: handled } satisfies SyncState);

  async function runCommands(
    commands: readonly DeviceCommand[],
    desired: DesiredState,
  ): Promise<void> {
    for (const command of commands) {
      if (handled.includes(command.id)) continue;
      let outcome: CommandOutcome;
      try {
        outcome = deps.handleCommand
          ? await deps.handleCommand(command, desired)
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

  async function handOn(desired: DesiredState, source: 'center' | 'disk') {
    try {
      await deps.onDesiredState(desired, source);
    } catch (err) {
      log.error({ component: 'sync', err }, 'handling the desired state failed');
    }
  }

  async function deliver(document: SignedDesiredState, source: 'center' | 'disk') {
    // Center tunes the poll interval for its fleet, unless this device was given its own.
    const tuned = document.state.pollIntervalSeconds;
    if (deps.pollIntervalMs === undefined && tuned !== undefined) pollIntervalMs = tuned * 1000;
    await runCommands(document.state.commands, document.state);
    await handOn(document.state, source);
  }

  /** What the PC runs once killed: no VM, for good; those it had stay named, without keys. */
  function killedState(stored: StoredKillNotice): DesiredState {
    const { notice } = stored.notice;
    const last = current?.document.state;
    return {
      deviceId: notice.deviceId,
      revision: last?.revision ?? 0,
      generatedAt: notice.issuedAt,
      expiresAt: notice.issuedAt,
      device: { state: 'killed' },
      mirrors: [],
      publishers: [],
      vms: (last?.vms ?? []).map(withoutKey),
      commands: [],
    };
  }

  /** Acts on the kill: the command it names runs as any kill does, then the state goes on. */
  async function deliverKilled(stored: StoredKillNotice, source: 'center' | 'disk') {
    const { notice } = stored.notice;
    const desired = killedState(stored);
    const kill: DeviceCommand[] =
      notice.commandId === null
        ? []
        : [{ id: notice.commandId, kind: 'kill', profileId: null, issuedAt: notice.killedAt }];
    await runCommands(kill, desired);
    await handOn(desired, source);
  }

  /** Takes a verified kill notice: on disk first (no restart forgets it), then acted on. */
  async function acceptKill(notice: SignedKillNotice) {
    if (killed !== undefined) return;
    const stored: StoredKillNotice = { notice, verifiedAt: clock.now() };
    await store.killNotice.write(stored);
    killed = stored;
    push?.close();
    push = undefined;
    log.warn(
      { component: 'sync', commandId: notice.notice.commandId, killedAt: notice.notice.killedAt },
      'Center killed this device: every VM stops, and none starts again',
    );
    await deliverKilled(stored, 'center');
  }

  /**
   * Sends the whole queue in order, in batches that Center's limits accept; acknowledges each
   * batch only after a 200. A 429 (the report quota) keeps that batch and the rest queued and
   * holds reports until its Retry-After has passed.
   */
  async function flush(): Promise<number> {
    if (killed !== undefined) return flushKilled();
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

  /**
   * A killed device's queue: the kill's result goes through the route that takes it (retried
   * like any report while Center cannot be reached); everything else, which Center refuses
   * from a killed device, is dropped.
   */
  async function flushKilled(): Promise<number> {
    let delivered = 0;
    let dropped = 0;
    while (queue.depth() > 0) {
      const batch = queue.peek(MAX_REPORT_EVENTS);
      for (const event of batch) {
        if (!isKillResult(event)) {
          dropped += 1;
          continue;
        }
        try {
          await client.sendKillResult(event);
          delivered += 1;
          await deps.onKillReported?.();
        } catch (err) {
          // Center read it and said no (a result it no longer wants): sending it again would
          // not change that. Anything else is tried again at the next contact.
          if (!isRefusedByCenter(err)) throw err;
          log.warn(
            { component: 'sync', code: (err as { code: string }).code },
            `Center refused the kill's result: ${(err as Error).message}`,
          );
          await deps.onKillReported?.();
        }
      }
      await queue.ack(batch.map((e) => e.id));
    }
    if (dropped > 0) {
      log.info({ component: 'sync', dropped }, 'dropped events a killed device cannot report');
    }
    return delivered;
  }

  function backoffMs(failures: number, err: unknown): number {
    const ceiling = Math.min(cap, base * 2 ** Math.min(failures, 30));
    const jittered = random() * ceiling;
    const retryAfter = isBulkheadError(err, ErrorCodes.RATE_LIMITED) ? retryAfterOf(err) : 0;
    return Math.max(jittered, retryAfter ?? 0);
  }

  async function contact(): Promise<SyncOutcome> {
    // Killed, with nothing left to send: Center has nothing more to say to this device.
    if (killed !== undefined && queue.depth() === 0) {
      return { ok: true, nextDelayMs: pollIntervalMs, delivered: 0 };
    }
    let refusal: { code: string; message: string } | undefined;
    let delivered = 0;
    try {
      try {
        const answer =
          killed === undefined
            ? await client.getDesiredState({
                // A VM's wrapped key destroyed at its lease expiry comes back only with a whole
                // document: without the ETag, Center answers one even if nothing changed.
                etag:
                  current !== undefined && store.wrappedKeys.isComplete(current.document.state)
                    ? current.etag
                    : null,
                revision: current?.document.state.revision,
              })
            : undefined;
        if (answer?.killed !== undefined) {
          await acceptKill(answer.killed);
        } else if (answer?.changed) {
          // The wrapped keys go to their own files, each vouched for by the signed document's
          // digests, which alone is stored as the desired state (it verifies without them).
          // Keys first: a crash in between leaves the previous document, and so its ETag, and
          // the next contact fetches this one again.
          const { wrappedKeys, ...document } = answer.document;
          await store.wrappedKeys.save(wrappedKeys ?? {});
          const stored: StoredDesiredState = {
            etag: answer.etag,
            document,
            verifiedAt: clock.now(),
          };
          // Written before it is acted on: a restart resumes from what was acted on.
          await store.desiredState.write(stored);
          current = stored;
          log.info(
            { component: 'sync', revision: answer.document.state.revision },
            'new desired state',
          );
          await deliver(document, 'center');
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
      killed = await store.killNotice.read();
      // Killed is for good: the stored desired state (from before the kill) is not handed on.
      if (killed !== undefined) await deliverKilled(killed, 'disk');
      else if (current !== undefined) await deliver(current.document, 'disk');
      if (killed === undefined && (deps.push ?? true)) {
        push = client.subscribePush(() => this.wake());
      }
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
    pushState: () => (push === undefined || push.state === 'closed' ? 'off' : push.state),
    current: () => current,
    killed: () => killed,
  };
}

function isKillResult(
  event: DeviceEvent,
): event is Extract<DeviceEvent, { type: 'command-result' }> {
  return event.type === 'command-result' && event.data.kind === 'kill';
}

/** Center answered the request and refused it for good (a 4xx other than 429). */
function isRefusedByCenter(err: unknown): boolean {
  if (!isBulkheadError(err) || err.retryable) return false;
  const status = (err.details as { status?: unknown } | undefined)?.status;
  return typeof status === 'number' && status >= 400 && status < 500;
}
