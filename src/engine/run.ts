import { join } from 'node:path';
import { pino } from 'pino';
import { createEngine, type Engine } from './agent.ts';
import { systemClock, type Clock } from './clock.ts';
import { createCommandHandler } from './commands.ts';
import { cryptoErase } from './crypto-erase.ts';
import { keyRing, loadEncryptionKey, type KeyRing } from './device-keys.ts';
import type { EngineConfig } from './config.ts';
import { GuestAgent } from './guest-agent.ts';
import { BulkheadError, ErrorCodes, type DesiredState, type Fetch } from '../protocol/index.ts';
import { removeLegacyKeyFiles } from './legacy-keys.ts';
import { KeyFileStore, localizePersonal, withPersonalKeys } from './personal.ts';
import {
  createQemuDriver,
  createSimDriver,
  QemuDriver,
  readBootVerdict,
} from './hypervisor/index.ts';
import type { HypervisorDriver, VmSpec, VmStatus } from './hypervisor/types.ts';
import { loadIdentity } from './identity.ts';
import {
  localApiSocket,
  qemuScreens,
  startLocalApi,
  statusEngine,
  statusVms,
  type LocalApiDeps,
  type VmScreens,
} from './local-api.ts';
import { qemuDisplays, startSwitcher, type SwitcherDeps } from './switcher.ts';
import { acceptUpdate } from './update/accept.ts';
import { lockDataDir } from './lock.ts';
import { takeScreenshot } from './screenshot.ts';
import { silentLog, type Log } from './log.ts';
import type { NewEvent } from './queue.ts';
import { createReconciler, type Reconciler } from './reconcile.ts';
import { engineFiles } from './state.ts';
import { wrappedKeyFiles } from './wrapped-keys.ts';
import { createTimeMark, type TimeMark } from './time-mark.ts';
import type { GuestAgentLink } from './update/health.ts';
import type { UpdateState } from './update/machine.ts';
import { TransactionFiles, VmRecords } from './update/records.ts';
import { GoldenStore, volumeLayout } from './volumes/index.ts';

/*
 * Engine's composition root: everything `bulkhead engine run` runs is built here from one
 * validated configuration (config.ts): the hypervisor driver and its guest-agent connection,
 * the reconciler that owns the VMs, the sync loop (agent.ts) feeding it, and the handler that
 * carries out Center's commands (commands.ts). The CLI only turns
 * argv into configuration. Tests pass in what they replace (a driver, a clock, a log) and the
 * hooks production never sets.
 */

/** What a caller may put in place of what the configuration would build. */
export interface EngineParts {
  /** Default: pino at the configured level, to stderr. */
  log?: Log;
  clock?: Clock;
  /** Default: the configured hypervisor's driver. */
  hypervisor?: HypervisorDriver;
  /** Default: the guest agent the configured hypervisor provides. */
  connectAgent?: (status: VmStatus) => Promise<GuestAgentLink>;
  /** Test hook: called after each persisted update step (the crash tests kill the process there). */
  afterPersist?: (state: UpdateState) => void;
  /**
   * The device's keys. Default: the encryption key in the data directory, unsealed with the
   * configured TPM (none when the device has none: its VMs that need a key do not start).
   */
  keys?: KeyRing;
}

export interface EngineReconcilerParts extends EngineParts {
  /** Where the reconciler's events go (Engine's queue, or a test's file). */
  report: (event: NewEvent) => Promise<unknown>;
  signal?: AbortSignal;
}

export interface EngineReconciler {
  reconciler: Reconciler;
  hypervisor: HypervisorDriver;
  /** The VMs Engine owns on this PC, as engine-state.json records them. */
  records: VmRecords;
  /** Their update transactions. */
  transactions: TransactionFiles;
  clock: Clock;
  log: Log;
  /** The latest time Engine has seen (time-mark.ts), loaded; lease checks use it. */
  timeMark: TimeMark;
}

export interface RunningEngine {
  engine: Engine;
  reconciler: Reconciler;
  log: Log;
  /** The unix socket of the local API (local-api.ts); null when it could not start. */
  localApi: string | null;
  /**
   * The switcher (switcher.ts): its port on 127.0.0.1 and the URL with this start's key;
   * null when it could not start.
   */
  switcher: { port: number; url: string } | null;
  /** Stops syncing and reconciling; the VMs keep running. */
  stop(): Promise<void>;
}

/** The simulated hypervisor's VMs have no screen. */
const simScreens: VmScreens = {
  screenshot: (vm) => Promise.reject(noScreen(vm)),
  input: (vm) => Promise.reject(noScreen(vm)),
};
const simDisplays: SwitcherDeps['display'] = (vm) => Promise.reject(noScreen(vm));

function noScreen(vm: string): BulkheadError {
  return new BulkheadError(
    ErrorCodes.VM_NOT_RUNNING,
    `VM ${vm} runs on the simulated hypervisor, which has no screens`,
  );
}

/** The simulated hypervisor's guest agent: answers while the VM runs, every command exits 0. */
function simAgent(driver: HypervisorDriver, name: string): GuestAgentLink {
  return {
    ping: async () => {
      if ((await driver.status(name)).state !== 'running') throw new Error('not running');
    },
    exec: async () => ({ exitCode: 0 }),
    close: () => {},
  };
}

function kernelOf(config: EngineConfig): VmSpec['kernel'] | undefined {
  if (config.kernel === undefined) return undefined;
  return {
    path: config.kernel,
    ...(config.initrd !== undefined ? { initrd: config.initrd } : {}),
    ...(config.cmdline !== undefined ? { cmdline: config.cmdline } : {}),
  };
}

/**
 * The reconciler over this PC's VMs, with the VMs an earlier Engine process started attached
 * again (VMs outlive Engine), ready for its first desired state.
 */
export async function createEngineReconciler(
  config: EngineConfig,
  parts: EngineReconcilerParts,
): Promise<EngineReconciler> {
  const clock = parts.clock ?? systemClock;
  const log =
    parts.log ??
    pino({ level: config.logLevel, base: { component: 'engine' } }, pino.destination(2));
  const hypervisor =
    parts.hypervisor ?? (config.hypervisor === 'sim' ? createSimDriver() : createQemuDriver());
  // Network namespaces of nat VMs that ended while no Engine watched them.
  if (hypervisor instanceof QemuDriver) {
    const removed = await hypervisor.removeStaleSandboxes().catch((err: unknown) => {
      log.warn({ err }, 'could not remove stale VM network namespaces');
      return [];
    });
    if (removed.length > 0) log.info({ removed }, 'removed stale VM network namespaces');
  }
  const connectAgent =
    parts.connectAgent ??
    ((status: VmStatus): Promise<GuestAgentLink> =>
      config.hypervisor === 'sim'
        ? Promise.resolve(simAgent(hypervisor, status.name))
        : GuestAgent.connect(status.guestAgentSocket ?? '', { timeoutMs: 2000 }));
  const { dataDir } = config;
  const records = new VmRecords(engineFiles(dataDir, { clock, log }).engineState, clock);
  const transactions = new TransactionFiles(dataDir, clock, log);
  const kernel = kernelOf(config);
  const timeMark = createTimeMark({ dataDir, clock, log });
  await timeMark.load();
  // The personal VMs' keys are made and kept on this PC; Center's wrapped keys serve the rest.
  const localKeys = new Map<string, Buffer>();
  const keys = withPersonalKeys(parts.keys ?? (await loadKeyRing(config)), localKeys);
  log.info(
    { component: 'engine', protection: keys.protection },
    keys.protection === 'tpm'
      ? "the device's encryption key is sealed by the TPM"
      : keys.protection === 'file'
        ? "the device's encryption key is in a key file (no TPM: the weaker fallback)"
        : 'this device has no encryption key: VMs with encrypted data do not start',
  );
  const reconciler = createReconciler({
    timeMark,
    dataDir,
    keys,
    wrappedKeys: wrappedKeyFiles(dataDir),
    goldens: new GoldenStore({ dir: join(dataDir, 'goldens') }),
    hypervisor,
    records,
    transactions,
    report: parts.report,
    connectAgent,
    ...(config.hypervisor === 'sim'
      ? {}
      : {
          screenVariance: async (vm: string) =>
            (await takeScreenshot(dataDir, vm, { timeoutMs: 10_000 })).variance,
          bootVerdict: (vm: string) => {
            const { runDir, consoleDir } = volumeLayout(dataDir, vm);
            return readBootVerdict(runDir, consoleDir);
          },
        }),
    clock,
    log,
    // The personal VM boots the user's choice with the user's key (a 0600 key file until the
    // TPM can seal it), both kept on this PC only.
    localize: (desired) =>
      localizePersonal(desired, { dataDir, keys: new KeyFileStore(dataDir), localKeys, log }),
    dataVolumeBytes: config.dataVolumeBytes,
    switchDeadlineMs: config.switchDeadlineSeconds * 1000,
    stopTimeoutMs: config.stopTimeoutSeconds * 1000,
    ...(kernel ? { kernel } : {}),
    ...(config.bandwidthBytesPerSec !== undefined
      ? { bandwidthBytesPerSec: config.bandwidthBytesPerSec }
      : {}),
    ...(parts.signal ? { signal: parts.signal } : {}),
    ...(parts.afterPersist ? { afterPersist: parts.afterPersist } : {}),
  });
  for (const r of await records.all()) {
    const found = await hypervisor.attach(r.name, volumeLayout(dataDir, r.name).runDir);
    log.info(
      { component: 'hypervisor', vm: r.name, state: found.state, pid: found.pid },
      found.state === 'stopped' ? 'VM not running' : 'VM found running; attached',
    );
  }
  return { reconciler, hypervisor, records, transactions, clock, log, timeMark };
}

/** The key ring of the enrolled device in `config.dataDir` (none before enrolment). */
async function loadKeyRing(config: EngineConfig): Promise<KeyRing> {
  const identity = await engineFiles(config.dataDir).identity.read({ repair: false });
  const keys = identity ? await loadEncryptionKey(config.dataDir, config.tpm) : undefined;
  return keyRing(identity?.deviceId, keys, wrappedKeyFiles(config.dataDir));
}

/** Starts Engine: the sync loop with Center feeding the reconciler, until `stop()`. */
export async function startEngineRun(
  config: EngineConfig,
  parts: EngineParts & { fetch?: Fetch } = {},
): Promise<RunningEngine> {
  // A PC that is not enrolled is told so first (its data directory may not even exist).
  await loadIdentity(config.dataDir);
  // One `engine run` per data directory (lock.ts); released when this one stops.
  const lock = await lockDataDir(config.dataDir);
  try {
    return await startLocked(config, parts, () => lock.release());
  } catch (err) {
    await lock.release();
    throw err;
  }
}

async function startLocked(
  config: EngineConfig,
  parts: EngineParts & { fetch?: Fetch },
  unlock: () => Promise<void>,
): Promise<RunningEngine> {
  const controller = new AbortController();
  // The queue belongs to the engine, which needs the reconciler first: reports go through this.
  const holder: { engine?: Engine; desired?: DesiredState } = {};
  // A kill cut short (a crash, a power cut) is finished before anything else: crypto-erase is
  // idempotent, and a killed device runs nothing.
  if ((await engineFiles(config.dataDir).killNotice.read()) !== undefined) {
    await cryptoErase(config.dataDir, parts.log ?? silentLog);
  }
  // A desired state an older Engine kept with a data key inside does not outlive the upgrade.
  await removeLegacyKeyFiles(config.dataDir, parts.log ?? silentLog);
  const { reconciler, hypervisor, records, transactions, clock, log, timeMark } =
    await createEngineReconciler(config, {
      ...parts,
      report: (event) => holder.engine!.queue.append(event),
      signal: controller.signal,
    });
  const running = await createEngine({
    dataDir: config.dataDir,
    clock,
    log,
    reconcile: (desired) => {
      holder.desired = desired;
      return reconciler.reconcile(desired);
    },
    // Every verified document moves the time mark to its `generatedAt` (signed by Center).
    onVerified: (desired, source) => timeMark.observe(desired.generatedAt, source),
    handleCommand: createCommandHandler({
      hypervisor,
      transactions,
      records,
      reconciler,
      clock,
      log,
      stopTimeoutMs: config.stopTimeoutSeconds * 1000,
      ...(config.hypervisor === 'sim'
        ? {}
        : {
            erase: async () => {
              const { erasedVolumes } = await cryptoErase(config.dataDir, log);
              return `crypto-erased: keys destroyed, LUKS headers overwritten (${erasedVolumes.join(', ') || 'no encrypted volume'}), goldens and overlays deleted`;
            },
          }),
    }),
    ...(parts.fetch ? { fetch: parts.fetch } : {}),
    ...(config.pollIntervalSeconds !== undefined
      ? { pollIntervalMs: config.pollIntervalSeconds * 1000 }
      : {}),
  });
  holder.engine = running;
  await running.start();
  const loop = reconciler.loop(controller.signal, config.reconcileIntervalSeconds * 1000);
  // The switcher's API, on the unix socket and on the switcher's loopback port. Without them
  // the PC's VMs still run and update: a failure is logged.
  const localDeps: LocalApiDeps = {
    vms: statusVms(config.dataDir, config.switchDeadlineSeconds * 1000),
    screens: config.hypervisor === 'sim' ? simScreens : qemuScreens(config.dataDir),
    chooseApps: async (vm, apps) => {
      const profileId = holder.desired?.vms.find((v) => v.name === vm)?.profileId;
      if (profileId === undefined) {
        throw new BulkheadError(ErrorCodes.NOT_FOUND, `Center gives this PC no VM named ${vm}`);
      }
      const answer = await running.client.chooseApps({ profileId, apps });
      log.info({ component: 'sync', vm, apps: answer.chosen }, `${vm}: the user chose its apps`);
      return answer;
    },
    engine: statusEngine(config.dataDir, () => running.sync.pushState(), clock),
    accept: async (vm) => {
      await acceptUpdate(config.dataDir, vm);
      // The switch starts now rather than at the next periodic pass; it runs for minutes.
      reconciler.pass().catch((err: unknown) => {
        log.warn(
          { component: 'rollout', err, vm },
          `${vm}: the pass after the user's accept failed`,
        );
      });
    },
    log,
  };
  const api = await startLocalApi(localApiSocket(config.dataDir), localDeps).catch(
    (err: unknown) => {
      log.error({ component: 'http', err }, `the local API could not start: ${String(err)}`);
      return null;
    },
  );
  if (api) log.info({ component: 'http', socket: api.path }, `local API on ${api.path}`);
  const switcher = await startSwitcher(
    { dataDir: config.dataDir, port: config.switcherPort },
    {
      ...localDeps,
      display: config.hypervisor === 'sim' ? simDisplays : qemuDisplays(config.dataDir),
    },
  ).catch((err: unknown) => {
    log.error(
      { component: 'http', err, port: config.switcherPort },
      `the switcher could not start on 127.0.0.1:${config.switcherPort}: ${String(err)}`,
    );
    return null;
  });
  return {
    engine: running,
    reconciler,
    log,
    localApi: api?.path ?? null,
    switcher: switcher && { port: switcher.port, url: switcher.url },
    async stop() {
      controller.abort();
      try {
        await switcher?.close();
        await api?.close();
        await running.stop();
        await loop;
      } finally {
        await unlock();
      }
    },
  };
}
