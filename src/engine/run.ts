import { join } from 'node:path';
import { createEngine, type Engine } from './agent.ts';
import { systemClock, type Clock } from './clock.ts';
import { createCommandHandler } from './commands.ts';
import type { HypervisorDriver, VmSpec, VmStatus } from './hypervisor/types.ts';
import { silentLog, type Log } from './log.ts';
import { createReconciler, type Reconciler } from './reconcile.ts';
import type { GuestAgentLink } from './update/health.ts';
import { UPDATE_STATES, type UpdateState } from './update/machine.ts';
import { TransactionFiles, VmRecords } from './update/records.ts';
import { GoldenStore } from './volumes/goldens.ts';
import { volumeLayout } from './volumes/overlays.ts';
import { engineFiles } from './state.ts';

/*
 * `bulkhead engine run`: the sync loop (agent.ts) feeding the reconciler, which owns the VMs,
 * and carrying out Center's commands (commands.ts).
 * The hypervisor driver and the guest-agent connection are passed in, so the same wiring runs
 * the QEMU driver on a PC and anything else in a test.
 */

export interface EngineRunOptions {
  dataDir: string;
  hypervisor: HypervisorDriver;
  connectAgent: (status: VmStatus) => Promise<GuestAgentLink>;
  clock?: Clock;
  log?: Log;
  kernel?: VmSpec['kernel'];
  bandwidthBytesPerSec?: number;
  switchDeadlineMs?: number;
  stopTimeoutMs?: number;
  /** Poll interval of the sync loop. */
  syncIntervalMs?: number;
  /** Interval of reconcile passes between desired states (default 5 s). */
  reconcileIntervalMs?: number;
  /** Test hook: stop the process with SIGKILL right after this update state is persisted. */
  crashAt?: UpdateState;
}

export interface RunningEngine {
  engine: Engine;
  reconciler: Reconciler;
  stop(): Promise<void>;
}

/** Reads `BULKHEAD_TEST_CRASH_AT` (the crash-safety tests set it); unset in production. */
export function crashAtFromEnv(env: NodeJS.ProcessEnv = process.env): UpdateState | undefined {
  const value = env.BULKHEAD_TEST_CRASH_AT;
  if (!value) return undefined;
  if (!(UPDATE_STATES as readonly string[]).includes(value)) {
    throw new Error(`BULKHEAD_TEST_CRASH_AT must be one of ${UPDATE_STATES.join(', ')}`);
  }
  return value as UpdateState;
}

export async function startEngineRun(options: EngineRunOptions): Promise<RunningEngine> {
  const clock = options.clock ?? systemClock;
  const log = options.log ?? silentLog;
  const controller = new AbortController();
  // The queue belongs to the engine, which needs the reconciler first: reports go through this.
  const holder: { engine?: Engine } = {};
  const records = new VmRecords(engineFiles(options.dataDir, { clock, log }).engineState, clock);
  const crashAt = options.crashAt;
  const transactions = new TransactionFiles(options.dataDir, clock, log);
  const stopTimeoutMs = options.stopTimeoutMs ?? 30_000;
  const reconciler = createReconciler({
    dataDir: options.dataDir,
    goldens: new GoldenStore({ dir: join(options.dataDir, 'goldens') }),
    hypervisor: options.hypervisor,
    records,
    transactions,
    report: (event) => holder.engine!.queue.append(event),
    connectAgent: options.connectAgent,
    clock,
    log,
    signal: controller.signal,
    ...(options.kernel ? { kernel: options.kernel } : {}),
    ...(options.bandwidthBytesPerSec ? { bandwidthBytesPerSec: options.bandwidthBytesPerSec } : {}),
    ...(options.switchDeadlineMs !== undefined
      ? { switchDeadlineMs: options.switchDeadlineMs }
      : {}),
    stopTimeoutMs,
    ...(crashAt
      ? {
          afterPersist: (state: UpdateState) => {
            if (state === crashAt) process.kill(process.pid, 'SIGKILL');
          },
        }
      : {}),
  });
  // VMs outlive Engine: find the ones an earlier Engine process started before planning.
  for (const r of await records.all()) {
    await options.hypervisor.attach(r.name, volumeLayout(options.dataDir, r.name).runDir);
  }
  const running = await createEngine({
    dataDir: options.dataDir,
    clock,
    log,
    reconcile: (doc) => reconciler.reconcile(doc.state),
    handleCommand: createCommandHandler({
      hypervisor: options.hypervisor,
      transactions,
      records,
      reconciler,
      clock,
      log,
      stopTimeoutMs,
    }),
    ...(options.syncIntervalMs ? { intervalMs: options.syncIntervalMs } : {}),
  });
  holder.engine = running;
  await running.start();
  const loop = reconciler.loop(controller.signal, options.reconcileIntervalMs);
  return {
    engine: running,
    reconciler,
    async stop() {
      controller.abort();
      await running.stop();
      await loop;
    },
  };
}
