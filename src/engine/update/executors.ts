import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { exists } from '../../durable/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  isBulkheadError,
  type DesiredVm,
  type VmMachineHint,
  type PublicKeyRef,
  type ReleaseVolume,
} from '../../protocol/index.ts';
import type { Clock } from '../clock.ts';
import type { KeyRing } from '../device-keys.ts';
import type { BootVerdict } from '../hypervisor/index.ts';
import type { HypervisorDriver, VmMachine, VmSpec, VmStatus } from '../hypervisor/types.ts';
import type { Log } from '../log.ts';
import type { NewEvent } from '../queue.ts';
import {
  dataKeyOf,
  tpmKeyOf,
  prepareRelease,
  releaseKey,
  releaseVolumes,
  volumeLayout,
  vmDisks,
  type Release,
  type VolumeDeps,
  type VolumeLayout,
} from '../volumes/index.ts';
import {
  checkHealth,
  type CheckHealthOptions,
  type GuestAgentLink,
  type HealthResult,
} from './health.ts';
import {
  runTransaction,
  type Transaction,
  type UpdateExecutors,
  type UpdateState,
} from './machine.ts';
import type { TransactionFiles, VmRecord, VmRecords } from './records.ts';

/** What the update executors act on; everything is passed in (tests build exactly this). */
export interface UpdateDeps extends VolumeDeps {
  hypervisor: HypervisorDriver;
  records: VmRecords;
  transactions: TransactionFiles;
  /** Queues an event for Center (durably). */
  report: (event: NewEvent) => Promise<unknown>;
  /** The latest verified desired state as far as one VM is concerned. */
  target: (vm: string) => {
    vm: DesiredVm | undefined;
    mirrors: readonly string[];
    publishers: readonly PublicKeyRef[];
    /** False while the device is locked, killed or retired: no update switches then. */
    deviceActive: boolean;
  };
  /** Opens the guest agent of a running VM. */
  connectAgent: (status: VmStatus) => Promise<GuestAgentLink>;
  /**
   * How much a running VM's screen shows (brightness variance of a screenshot), for a health
   * check with `screen`; absent where VMs have no screen (the simulated hypervisor).
   */
  screenVariance?: (vm: string) => Promise<number>;
  /**
   * What the firmware of a running VM says about its boot (firmware-log.ts), so that a health
   * check ends early, with the firmware's reason, when the VM cannot boot; absent where VMs have
   * no firmware logs (the simulated hypervisor).
   */
  bootVerdict?: (vm: string) => Promise<BootVerdict | null>;
  clock: Clock;
  log: Log;
  /** Direct kernel boot for appliance-style images and the test guest. */
  kernel?: VmSpec['kernel'];
  bandwidthBytesPerSec?: number;
  /** How long a staged update waits for the VM to be off or the user to accept. */
  switchDeadlineMs: number;
  /** Graceful shutdown time before a hard stop (EngineConfig's `stopTimeoutSeconds`). */
  stopTimeoutMs: number;
  signal?: AbortSignal;
  /** Test hook: called after each persisted step (the crash tests stop the process there). */
  afterPersist?: (state: UpdateState) => void;
}

const acceptDir = (dataDir: string) => join(dataDir, 'accept');
/** The marker `bulkhead engine accept [--vm NAME]` leaves: the user allows the switch now. */
export function acceptMarker(dataDir: string, vm: string | null): string {
  return join(acceptDir(dataDir), vm ?? '_all');
}

/** Event ids fixed per transaction and kind, so a step redone after a crash is counted once. */
function eventId(tx: Transaction, kind: string): string {
  return `upd.${tx.vm}.${tx.startedAt}.${kind}`.replace(/[^A-Za-z0-9._:-]/g, '_');
}

/**
 * What every update event says about its transaction: the profile, and every volume version of
 * the target release with the ones the transaction brings marked, so that Center credits the
 * rollout of each (a system image or an app layer) and no other.
 */
export function aboutRelease(tx: Pick<Transaction, 'profileId' | 'from' | 'to'>) {
  const before = new Set(tx.from ? releaseVolumes(tx.from).map((v) => v.versionId) : []);
  const volumes: ReleaseVolume[] = releaseVolumes(tx.to).map((v, i) => ({
    role: i === 0 ? 'system' : 'app',
    image: v.image,
    imageId: v.imageId,
    version: v.version,
    versionId: v.versionId,
    isNew: !before.has(v.versionId),
  }));
  return {
    profileId: tx.profileId,
    image: tx.to.system.image,
    version: tx.to.system.version,
    versionId: tx.to.system.versionId,
    volumes,
  };
}

/**
 * The spec a VM boots with `release`.
 * @throws BulkheadError ERR_VALIDATION when the VM cannot boot as configured: a TPM without a
 * data key, or Secure Boot with a directly booted kernel (see `refuseUnverifiableBoot`).
 */
export function vmSpec(
  vm: DesiredVm,
  release: Release,
  layout: VolumeLayout,
  keys: KeyRing,
  kernel?: VmSpec['kernel'],
): VmSpec {
  refuseUnverifiableBoot(vm, kernel);
  const key = dataKeyOf(vm, keys);
  return {
    name: vm.name,
    cpus: vm.resources.cpus,
    memoryMib: vm.resources.memoryMib,
    ...(kernel ? { kernel } : {}),
    disks: vmDisks(layout, release.apps, key),
    policy: vm.policy,
    runDir: layout.runDir,
    consoleDir: layout.consoleDir,
    version: releaseName(release),
    ...(vm.machine ? { machine: vmMachine(vm, vm.machine, layout, keys) } : {}),
  };
}

/**
 * Secure Boot promises that only signed code boots, but OVMF starts a kernel handed to QEMU
 * (`-kernel`) without checking any signature (OVMF 2022.11 boots an unsigned one with Secure
 * Boot on). A VM whose profile turns Secure Boot on while Engine's configuration boots a kernel
 * directly would claim a protection it does not have, so it is refused.
 * @throws BulkheadError ERR_VALIDATION saying why and what to change.
 */
export function refuseUnverifiableBoot(vm: DesiredVm, kernel: VmSpec['kernel'] | undefined): void {
  if (!kernel || !vm.machine?.secureBoot) return;
  // The whole remedy is in the message: it becomes the VM's failure reason, reported as is.
  throw new BulkheadError(
    ErrorCodes.VALIDATION,
    `VM ${vm.name} cannot boot: its profile turns Secure Boot on, but Engine's configuration boots a kernel directly (${kernel.path}), which the firmware starts without checking a signature. ` +
      `Remove kernel (with initrd and cmdline) from Engine's configuration so the image's own signed boot loader starts, ` +
      `or turn Secure Boot off in the profile (bulkhead profiles edit ${vm.name} --secure-boot off)`,
  );
}

/** The hypervisor's machine for a desired VM: its firmware and TPM files are its own. */
function vmMachine(
  vm: DesiredVm,
  m: VmMachineHint,
  layout: VolumeLayout,
  keys: KeyRing,
): VmMachine {
  return {
    firmware: m.firmware,
    secureBoot: m.secureBoot,
    os: m.os,
    devices: m.devices,
    ...(m.firmware === 'uefi' ? { varsPath: layout.efiVars } : {}),
    ...(m.tpm ? { tpm: { stateDir: layout.tpmState, key: tpmKeyOf(vm, keys) } } : {}),
  };
}

/** A release as people name it: `image@version`, app layers after a `+` (`os@2+tools@3`). */
export function releaseName(release: Release): string {
  return releaseVolumes(release)
    .map((v) => `${v.image}@${v.version}`)
    .join('+');
}

/** `releaseName`, or null for no release (a VM's first install comes from nothing). */
export function releaseLabel(release: Release | null | undefined): string | null {
  return release ? releaseName(release) : null;
}

/**
 * The fields every update log line carries: the VM and both versions by name. Never a key,
 * never the desired state itself (it holds the data volume's key).
 */
function about(tx: Pick<Transaction, 'vm' | 'from' | 'to'>) {
  return { component: 'rollout', vm: tx.vm, from: releaseLabel(tx.from), to: releaseLabel(tx.to) };
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Stops, re-prepares and boots `release`, then checks its health from that fresh boot. */
async function bootHealthy(
  deps: UpdateDeps,
  vm: DesiredVm,
  release: Release,
): Promise<HealthResult> {
  await deps.hypervisor.stop(vm.name, { timeoutMs: deps.stopTimeoutMs });
  const layout = await prepareRelease(deps, vm, release, deps.target(vm.name));
  const startedAt = deps.clock.now();
  const status = await deps.hypervisor.start(vmSpec(vm, release, layout, deps.keys, deps.kernel));
  return checkHealth({
    connect: () => deps.connectAgent(status),
    check: vm.healthCheck,
    startedAt,
    clock: deps.clock,
    ...checksOf(deps, vm.name),
    ...(deps.signal ? { signal: deps.signal } : {}),
  });
}

/** What a health check of `vm` looks at besides its agent: its screen and its firmware. */
function checksOf(
  deps: UpdateDeps,
  vm: string,
): Pick<CheckHealthOptions, 'screenVariance' | 'bootVerdict'> {
  const { screenVariance, bootVerdict } = deps;
  return {
    ...(screenVariance ? { screenVariance: () => screenVariance(vm) } : {}),
    ...(bootVerdict ? { bootVerdict: () => bootVerdict(vm) } : {}),
  };
}

function desiredVm(deps: UpdateDeps, tx: Transaction): DesiredVm {
  const vm = deps.target(tx.vm).vm;
  if (!vm) {
    throw new BulkheadError(
      'ERR_INTERNAL',
      `VM ${tx.vm} is not in the desired state; its update cannot go on`,
      { retryable: true },
    );
  }
  return vm;
}

/** True when the desired state now wants another release than this transaction's target. */
function isSuperseded(deps: UpdateDeps, tx: Transaction): boolean {
  const vm = deps.target(tx.vm).vm;
  if (!vm) return true;
  return releaseKey({ system: vm.system, apps: vm.apps }) !== releaseKey(tx.to);
}

export function createUpdateExecutors(deps: UpdateDeps): UpdateExecutors {
  return {
    async downloading(tx) {
      if (isSuperseded(deps, tx)) return 'cancel';
      // A VM that cannot boot as configured fails here, before anything is fetched or switched:
      // the version it runs stays as it is.
      try {
        refuseUnverifiableBoot(desiredVm(deps, tx), deps.kernel);
        // Its key must be usable here (a TPM when the profile requires one, a key Center could
        // send): refused now, with the reason, rather than after the download.
        dataKeyOf(desiredVm(deps, tx), deps.keys)?.fill(0);
      } catch (err) {
        deps.log.info({ ...about(tx), reason: message(err) }, `${tx.vm}: update refused`);
        return { event: 'download-failed', reason: message(err) };
      }
      const { mirrors, publishers } = deps.target(tx.vm);
      let downloaded = 0;
      let reused = 0;
      let lastReport = 0;
      deps.log.info(about(tx), `${tx.vm}: download of ${releaseLabel(tx.to)} started`);
      try {
        for (const ref of releaseVolumes(tx.to)) {
          const r = await deps.goldens.ensure(ref, {
            mirrors,
            publishers,
            ...(deps.bandwidthBytesPerSec
              ? { bandwidthBytesPerSec: deps.bandwidthBytesPerSec }
              : {}),
            ...(deps.signal ? { signal: deps.signal } : {}),
            onWarning: (m) => deps.log.warn({ vm: tx.vm }, m),
            onProgress: (p) => {
              const now = deps.clock.now();
              if (p.phase !== 'download' || now - lastReport < 2000) return;
              lastReport = now;
              void deps
                .report({
                  type: 'download-progress',
                  data: { ...aboutRelease(tx), doneBytes: p.doneBytes, totalBytes: p.totalBytes },
                })
                .catch(() => {});
            },
          });
          downloaded += r.downloadedBytes;
          reused += r.reusedBytes;
        }
      } catch (err) {
        if (deps.signal?.aborted) {
          // Engine is stopping: the download resumes from what it verified at the next start.
          deps.log.info(about(tx), `${tx.vm}: download of ${releaseLabel(tx.to)} stopped`);
          return 'wait';
        }
        if (isBulkheadError(err) && err.retryable) {
          deps.log.warn({ vm: tx.vm, code: err.code }, `download paused: ${err.message}`);
          await deps.records.update(tx.vm, (r) => ({
            ...r,
            lastError: { code: err.code, message: err.message, at: deps.clock.now() },
          }));
          return 'wait';
        }
        deps.log.info({ ...about(tx), reason: message(err) }, `${tx.vm}: download failed`);
        return { event: 'download-failed', reason: message(err) };
      }
      deps.log.info(
        { ...about(tx), downloadedBytes: downloaded, reusedBytes: reused },
        `${tx.vm}: download of ${releaseLabel(tx.to)} finished (${downloaded} bytes downloaded, ${reused} reused)`,
      );
      await deps.report({
        id: eventId(tx, 'staged'),
        type: 'staged',
        data: { ...aboutRelease(tx), downloadedBytes: downloaded, reusedBytes: reused },
      });
      deps.log.info(about(tx), `${tx.vm}: ${releaseLabel(tx.to)} staged`);
      return 'downloaded';
    },

    async staged(tx) {
      if (isSuperseded(deps, tx)) return 'cancel';
      // A locked device's VMs stay off: the switch waits for the unlock.
      if (!deps.target(tx.vm).deviceActive) return 'wait';
      const status = await deps.hypervisor.status(tx.vm);
      const isOff = status.state === 'stopped' || status.state === 'crashed';
      const accepted =
        (await exists(acceptMarker(deps.dataDir, tx.vm))) ||
        (await exists(acceptMarker(deps.dataDir, null)));
      const deadlinePassed = deps.clock.now() >= tx.since + deps.switchDeadlineMs;
      const why = isOff
        ? 'the VM is off'
        : accepted
          ? 'the user accepted'
          : deadlinePassed
            ? 'the switch deadline passed'
            : null;
      if (!why) return 'wait';
      deps.log.info(
        { ...about(tx), because: why },
        `${tx.vm}: switching to ${releaseLabel(tx.to)} (${why})`,
      );
      return 'window-open';
    },

    async switching(tx) {
      // Redone after a crash: stopping a stopped VM and making fresh overlays are idempotent.
      try {
        const vm = desiredVm(deps, tx);
        await deps.hypervisor.stop(tx.vm, { timeoutMs: deps.stopTimeoutMs });
        await prepareRelease(deps, vm, tx.to, deps.target(vm.name));
      } catch (err) {
        const reason = `switch failed: ${message(err)}`;
        deps.log.info({ ...about(tx), reason }, `${tx.vm}: ${reason}`);
        return { event: 'switch-failed', reason };
      }
      await rm(acceptMarker(deps.dataDir, tx.vm), { force: true });
      await deps.report({
        id: eventId(tx, 'switched'),
        type: 'switched',
        data: { ...aboutRelease(tx), fromVersionId: tx.from?.system.versionId ?? null },
      });
      return 'switched';
    },

    async booting(tx) {
      try {
        const vm = desiredVm(deps, tx);
        const layout = volumeLayout(deps.dataDir, vm.name);
        const status = await deps.hypervisor.start(
          vmSpec(vm, tx.to, layout, deps.keys, deps.kernel),
        );
        deps.log.info(
          { ...about(tx), pid: status.pid, attempt: tx.attempt },
          `${tx.vm}: booted ${releaseLabel(tx.to)}; checking its health`,
        );
        return 'booted';
      } catch (err) {
        const reason = `the VM did not start: ${message(err)}`;
        deps.log.info({ ...about(tx), reason }, `${tx.vm}: boot of ${releaseLabel(tx.to)} failed`);
        return { event: 'boot-failed', reason };
      }
    },

    async 'health-check'(tx) {
      const vm = desiredVm(deps, tx);
      const status = await deps.hypervisor.status(tx.vm);
      if (status.state !== 'running' && status.state !== 'starting') {
        const reason = `the VM stopped during its health check (${status.lastExit ?? status.state})`;
        deps.log.info({ ...about(tx), reason }, `${tx.vm}: health check failed: ${reason}`);
        return { event: 'unhealthy', reason };
      }
      const result = await checkHealth({
        connect: () => deps.connectAgent(status),
        check: vm.healthCheck,
        startedAt: tx.since,
        clock: deps.clock,
        ...checksOf(deps, vm.name),
        ...(deps.signal ? { signal: deps.signal } : {}),
      });
      if (!result.healthy && deps.signal?.aborted) {
        // Cut short by Engine stopping, not by the guest: no verdict. The next start resumes
        // the transaction as after any interruption of the check (the VM is booted again).
        deps.log.info(about(tx), `${tx.vm}: health check of ${releaseLabel(tx.to)} interrupted`);
        return 'wait';
      }
      if (!result.healthy) {
        deps.log.info(
          { ...about(tx), reason: result.reason },
          `${tx.vm}: health check of ${releaseLabel(tx.to)} failed: ${result.reason}`,
        );
        return { event: 'unhealthy', reason: result.reason };
      }
      deps.log.info(about(tx), `${tx.vm}: health check of ${releaseLabel(tx.to)} passed`);
      return 'healthy';
    },

    async committed(tx) {
      await deps.records.update(tx.vm, (r) => ({
        ...r,
        profileId: tx.profileId,
        current: tx.to,
        // A retried commit must not make the new version its own previous one.
        previous: tx.from ?? r.previous ?? null,
        currentVersionId: tx.to.system.versionId,
        previousVersionId: tx.from?.system.versionId ?? r.previousVersionId,
        lastError: null,
        lastFailure: null,
        // A first install is no update to tell the user about.
        lastOutcome: tx.from
          ? {
              result: 'updated',
              version: releaseName(tx.to),
              failed: null,
              reason: null,
              at: deps.clock.now(),
            }
          : (r.lastOutcome ?? null),
      }));
      await deps.report({ id: eventId(tx, 'healthy'), type: 'healthy', data: aboutRelease(tx) });
      deps.log.info(about(tx), `${tx.vm}: committed ${releaseLabel(tx.to)}`);
      return 'done';
    },

    async 'rolling-back'(tx) {
      if (!tx.from) {
        deps.log.info(
          { ...about(tx), reason: tx.reason },
          `${tx.vm}: no previous version to roll back to; stopping the VM`,
        );
        await deps.hypervisor.stop(tx.vm, { timeoutMs: deps.stopTimeoutMs });
        return { event: 'nothing-to-roll-back', reason: tx.reason ?? 'no previous version' };
      }
      deps.log.info(
        { ...about(tx), reason: tx.reason, attempt: tx.attempt },
        `${tx.vm}: rolling back to ${releaseLabel(tx.from)}`,
      );
      let failure: string;
      try {
        const result = await bootHealthy(deps, desiredVm(deps, tx), tx.from);
        if (result.healthy) return 'rolled-back';
        failure = `previous version: ${result.reason}`;
      } catch (err) {
        failure = `rollback failed: ${message(err)}`;
      }
      deps.log.warn({ ...about(tx), reason: failure }, `${tx.vm}: rollback attempt failed`);
      return { event: 'rollback-failed', reason: failure };
    },

    async 'rolled-back'(tx) {
      const reason = tx.reason ?? 'unhealthy';
      const now = deps.clock.now();
      await deps.records.update(tx.vm, (r) => ({
        ...markBad(r, tx, reason, now),
        lastOutcome: {
          result: 'rolled-back',
          version: releaseLabel(tx.from) ?? 'nothing',
          failed: releaseName(tx.to),
          reason,
          at: now,
        },
      }));
      await deps.report({
        id: eventId(tx, 'rolled-back'),
        type: 'rolled-back',
        data: {
          ...aboutRelease(tx),
          reason,
          runningVersionId: tx.from?.system.versionId ?? null,
        },
      });
      deps.log.info(
        { ...about(tx), reason },
        `${tx.vm}: rolled back to ${releaseLabel(tx.from)}; ${releaseLabel(tx.to)} is marked bad (${reason})`,
      );
      return 'done';
    },

    async failed(tx) {
      const reason = tx.reason ?? 'failed';
      const now = deps.clock.now();
      // Switched and still failing: the version is bad. Not switched: try it again later.
      const switched = tx.attempt > 0;
      await deps.records.update(tx.vm, (r) => ({
        ...(switched ? markBad(r, tx, reason, now) : r),
        lastError: { code: 'ERR_UPDATE_FAILED', message: reason, at: now },
        lastFailure: { releaseKey: releaseKey(tx.to), at: now },
      }));
      await deps.report({
        id: eventId(tx, 'failed'),
        type: 'failed',
        data: { ...aboutRelease(tx), reason },
      });
      deps.log.warn(
        { ...about(tx), reason },
        `${tx.vm}: update to ${releaseLabel(tx.to)} failed (${reason})`,
      );
      return 'done';
    },
  };
}

function markBad(r: VmRecord, tx: Transaction, reason: string, now: number): VmRecord {
  const key = releaseKey(tx.to);
  return {
    ...r,
    badVersions: r.badVersions.includes(key) ? r.badVersions : [...r.badVersions, key],
    lastError: { code: 'ERR_HEALTH_CHECK', message: reason, at: now },
  };
}

/**
 * Runs one VM's transaction (persisting it before every step, and mirroring its state into the
 * engine state file for `engine status`) until it is over or has to wait.
 */
export async function runUpdate(
  deps: UpdateDeps,
  tx: Transaction,
  options: { resumed?: boolean } = {},
): Promise<Transaction | null> {
  const executors = createUpdateExecutors(deps);
  return runTransaction(tx, {
    executors,
    now: () => deps.clock.now(),
    resumed: options.resumed ?? false,
    persist: (t) => persistTransaction(deps, tx.vm, t),
    ...(deps.afterPersist ? { afterPersist: deps.afterPersist } : {}),
  });
}

/** Writes the transaction file, then the status view of it. */
export async function persistTransaction(
  deps: Pick<UpdateDeps, 'transactions' | 'records' | 'clock'>,
  vm: string,
  tx: Transaction | null,
): Promise<void> {
  await deps.transactions.write(vm, tx);
  await deps.records.update(vm, (r) => ({
    ...r,
    transaction:
      tx && tx.state !== 'failed'
        ? { state: tx.state, targetVersionId: tx.to.system.versionId, since: tx.since }
        : { state: 'idle', targetVersionId: null, since: deps.clock.now() },
  }));
}
