import type { DesiredState } from '../protocol/index.ts';
import { CenterClient } from './center-client.ts';
import { systemClock, type Clock } from './clock.ts';
import type { Fetch } from '../protocol/index.ts';
import { loadIdentity } from './identity.ts';
import { silentLog, type Log } from './log.ts';
import { EventQueue } from './queue.ts';
import { engineFiles, type EngineFiles } from './state.ts';
import { createSyncLoop, type CommandHandler, type SyncLoop } from './sync.ts';

/*
 * Engine as one process: the sync loop feeding a reconciler. Reconciling (downloads, switching
 * VMs) can take long, so it never blocks contact with Center: the sync loop only schedules
 * it, one run at a time, and a desired state that arrives meanwhile replaces any waiting one
 * (latest wins), since only the newest matters.
 */

export interface EngineDeps {
  dataDir: string;
  clock?: Clock;
  log?: Log;
  fetch?: Fetch;
  /**
   * Brings the PC to the desired state (plan → execute). Called with the stored state at start
   * and with each new verified one (once killed, with the killed state); never twice at once.
   */
  reconcile(desired: DesiredState): Promise<void>;
  /** Carries out lock, unlock, kill and restart-vm commands. */
  handleCommand?: CommandHandler;
  /**
   * Told each verified desired state before it is scheduled, with where it came from (the time
   * mark takes its `generatedAt`, time-mark.ts).
   */
  onVerified?(desired: DesiredState, source: 'center' | 'disk'): Promise<void> | void;
  /** Poll interval (default 60 s). */
  pollIntervalMs?: number;
  /** Hold the push channel (default true). */
  push?: boolean;
}

export interface Engine {
  files: EngineFiles;
  queue: EventQueue;
  client: CenterClient;
  sync: SyncLoop;
  start(): Promise<void>;
  /** Stops syncing, waits for a running reconcile, closes the queue. */
  stop(): Promise<void>;
  /** Resolves once no reconcile runs or waits (for tests and shutdown). */
  idle(): Promise<void>;
}

export async function createEngine(deps: EngineDeps): Promise<Engine> {
  const clock = deps.clock ?? systemClock;
  const log = deps.log ?? silentLog;
  const files = engineFiles(deps.dataDir, { clock, log });
  const { identity, privateKey } = await loadIdentity(deps.dataDir, { clock });
  const queue = await EventQueue.open({ dir: files.queueDir, clock, log });
  const client = new CenterClient({
    identity,
    privateKey,
    fetch: deps.fetch,
    clock,
    log,
    events: queue,
  });

  let waiting: DesiredState | undefined;
  let active: Promise<void> | undefined;
  const drain = async () => {
    while (waiting !== undefined) {
      const next = waiting;
      waiting = undefined;
      try {
        await deps.reconcile(next);
      } catch (err) {
        log.error({ component: 'sync', err }, 'reconcile failed');
      }
    }
    active = undefined;
  };
  const schedule = (desired: DesiredState) => {
    waiting = desired;
    active ??= drain();
  };

  const sync = createSyncLoop({
    client,
    queue,
    store: files,
    clock,
    log,
    onDesiredState: async (desired, source) => {
      await deps.onVerified?.(desired, source);
      schedule(desired);
    },
    handleCommand: deps.handleCommand,
    pollIntervalMs: deps.pollIntervalMs,
    push: deps.push,
  });

  return {
    files,
    queue,
    client,
    sync,
    start: () => sync.start(),
    async stop() {
      await sync.stop();
      await active;
      await queue.close();
    },
    async idle() {
      while (active !== undefined) await active;
    },
  };
}
