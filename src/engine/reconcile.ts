import { exists } from '../durable/index.ts';
import { readdir, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import {
  ErrorCodes,
  errnoCode,
  isBulkheadError,
  type BulkheadError,
  type ErrorCode,
  type DesiredState,
  type DesiredVm,
} from '../protocol/index.ts';
import type { VmRunState, VmSpec } from './hypervisor/types.ts';
import { leaseStatus } from './lease.ts';
import type { TimeMark } from './time-mark.ts';
import type { WrappedKeyFiles } from './wrapped-keys.ts';
import { runStateOf } from './status.ts';
import {
  persistTransaction,
  releaseLabel,
  runUpdate,
  vmSpec,
  type UpdateDeps,
} from './update/executors.ts';
import { beginTransaction, type Transaction } from './update/machine.ts';
import type { VmRecord } from './update/records.ts';
import { prepareRelease, releaseKey, volumeLayout, type Release } from './volumes/index.ts';

/*
 * Engine's reconciler (DESIGN §3): a pure planner compares what the PC runs (current) with the
 * desired state (target) and answers steps as data; a table of executors, one per action,
 * carries them out; the loop repeats until the plan is empty.
 */

/** What the planner knows about one VM on this PC. */
export interface VmFacts {
  name: string;
  record: Pick<VmRecord, 'current' | 'previous' | 'badVersions' | 'lastFailure'>;
  /** The persisted update transaction, if one is under way. */
  transaction: Transaction | null;
  run: VmRunState;
  /** The lease expiry this run already acted on (shut down, reported); see `leaseExpired`. */
  leaseExpiryHandled?: number;
  /** The lease expiry whose warning window this run already announced. */
  leaseWarningGiven?: number;
}

export interface PlanInput {
  now: number;
  /**
   * The time leases are checked against: the later of the clock and Engine's monotonic record
   * of the latest time it has seen (time-mark.ts), so a clock set back extends no lease.
   * Default `now`.
   */
  leaseNow?: number;
  /** The last verified desired state; null before the first one. */
  desired: DesiredState | null;
  vms: readonly VmFacts[];
  /** Goldens on disk. */
  goldens: readonly { image: string; versionId: string }[];
  /** A failed download of a release is tried again after this long (default 10 min). */
  retryFailedAfterMs?: number;
}

export type Step =
  | { action: 'resumeUpdate'; vm: string }
  | { action: 'beginUpdate'; vm: string; profileId: string; from: Release | null; to: Release }
  | { action: 'startVm'; vm: string }
  | { action: 'stopVm'; vm: string; reason: string }
  /** The VM's lease is in its warning window: the user is told (log, local API). */
  | { action: 'leaseWarning'; vm: string; expiresAt: number }
  /**
   * The VM's lease ran out without a newer document: it is shut down gracefully (ACPI, then
   * forced after the stop timeout) if it runs, and Center is told once (`lease-expired`).
   */
  | { action: 'leaseExpired'; vm: string; expiresAt: number; isRunning: boolean }
  /** A VM no longer assigned, once it is down: its disks and firmware state go (see removeVm). */
  | { action: 'removeVm'; vm: string }
  | { action: 'collectGoldens'; keep: { image: string; versionId: string }[] };

export type StepAction = Step['action'];

const isUp = (run: VmRunState) => run === 'running' || run === 'starting';

export function releaseOf(vm: DesiredVm): Release {
  return { system: vm.system, apps: vm.apps };
}

function volumes(release: Release | null | undefined): { image: string; versionId: string }[] {
  return release
    ? [release.system, ...release.apps].map((v) => ({ image: v.image, versionId: v.versionId }))
    : [];
}

/** Steps that bring the PC from `input.vms` to `input.desired`; empty when they agree. */
export function plan(input: PlanInput): Step[] {
  const steps: Step[] = [];
  const { desired, now } = input;
  const leaseNow = input.leaseNow ?? now;
  const retryAfter = input.retryFailedAfterMs ?? 10 * 60_000;
  const facts = new Map(input.vms.map((v) => [v.name, v]));
  const deviceActive = desired?.device.state === 'active';
  let busy = false;

  for (const v of input.vms) {
    const wanted = desired?.vms.find((d) => d.name === v.name);
    // A locked, killed or retired device runs no VM; a VM no longer assigned stops.
    if (desired && isUp(v.run) && (!deviceActive || !wanted)) {
      steps.push({
        action: 'stopVm',
        vm: v.name,
        reason: !wanted ? 'no longer assigned' : `device ${desired.device.state}`,
      });
    }
    // Once down it is removed; only by an active device's desired state (a locked or killed
    // device keeps everything as it is: a kill's crypto-erase is its own step).
    const isDown = v.run === 'stopped' || v.run === 'crashed';
    if (desired && deviceActive && !wanted && isDown) {
      steps.push({ action: 'removeVm', vm: v.name });
    }
  }
  if (!desired || !deviceActive) return steps;

  for (const vm of desired.vms) {
    const f = facts.get(vm.name);
    // A VM without a lease (the personal VM) is never held back by one.
    const lease = leaseStatus(vm, leaseNow);
    const leaseValid = lease !== 'expired';
    const isUpNow = f !== undefined && isUp(f.run);
    if (
      lease === 'expired' &&
      vm.lease &&
      (isUpNow || f?.leaseExpiryHandled !== vm.lease.expiresAt)
    ) {
      // A transaction under way is let finish its step: the VM is shut down once it is up, and
      // no update begins (below).
      if (!f?.transaction) {
        steps.push({
          action: 'leaseExpired',
          vm: vm.name,
          expiresAt: vm.lease.expiresAt,
          isRunning: isUpNow,
        });
        continue;
      }
    }
    if (lease === 'warning' && vm.lease && f?.leaseWarningGiven !== vm.lease.expiresAt) {
      steps.push({ action: 'leaseWarning', vm: vm.name, expiresAt: vm.lease.expiresAt });
    }
    if (f?.transaction) {
      busy = true;
      steps.push({ action: 'resumeUpdate', vm: vm.name });
      continue;
    }
    const target = releaseOf(vm);
    const key = releaseKey(target);
    const current = f?.record.current ?? null;
    if (!current || releaseKey(current) !== key) {
      const isBad = f?.record.badVersions.includes(key) ?? false;
      const failure = f?.record.lastFailure;
      const isBackingOff = failure?.releaseKey === key && now - failure.at < retryAfter;
      // Past its lease a VM does not start, so an update (which boots it) waits for a new one.
      if (!isBad && !isBackingOff && leaseValid) {
        busy = true;
        steps.push({
          action: 'beginUpdate',
          vm: vm.name,
          profileId: vm.profileId,
          from: current,
          to: target,
        });
        continue;
      }
    }
    // A VM on its way down is started once it is down, not while QEMU still runs it.
    const isDown = (f?.run ?? 'stopped') === 'stopped' || f?.run === 'crashed';
    if (current && leaseValid && isDown) {
      steps.push({ action: 'startVm', vm: vm.name });
    }
  }

  if (!busy) {
    // Keep each VM's current and previous versions (and any being staged); drop the rest.
    const keep = input.vms.flatMap((v) => [
      ...volumes(v.record.current),
      ...volumes(v.record.previous),
      ...volumes(v.transaction?.to),
      ...volumes(v.transaction?.from),
    ]);
    const kept = new Set(keep.map((k) => `${k.image}/${k.versionId}`));
    if (input.goldens.some((g) => !kept.has(`${g.image}/${g.versionId}`))) {
      steps.push({ action: 'collectGoldens', keep });
    }
  }
  return steps;
}

/** Everything the reconcile executors use: the update deps plus the current desired state. */
/**
 * Why a VM may not start here, each reported as the VM's failure reason: it cannot boot as
 * configured, it requires a TPM this PC lacks, or its data key is missing or does not open.
 */
const START_REFUSALS: ReadonlySet<ErrorCode> = new Set([
  ErrorCodes.VALIDATION,
  ErrorCodes.TPM_REQUIRED,
  ErrorCodes.DATA_KEY_UNAVAILABLE,
  ErrorCodes.DATA_KEY_UNWRAP,
]);

export interface ReconcileDeps extends UpdateDeps {
  desired: () => DesiredState | null;
  /**
   * The time leases are checked against (time-mark.ts), told the clock at each pass; the clock
   * alone when absent.
   */
  timeMark?: Pick<TimeMark, 'now' | 'observe'>;
  /**
   * The VMs' wrapped data keys on disk (wrapped-keys.ts): a VM's is destroyed at its lease
   * expiry. Without it, nothing is destroyed (tests of the planner alone).
   */
  wrappedKeys?: Pick<WrappedKeyFiles, 'destroy'>;
  /** What this run already did about each VM's lease (in memory; see VmFacts). */
  leaseNotes?: Map<string, { expiryHandled?: number; warningGiven?: number }>;
}

type StepOf<A extends StepAction> = Extract<Step, { action: A }>;
/** One executor per action; a missing one is a compile error. */
export type StepExecutors = { readonly [A in StepAction]: (step: StepOf<A>) => Promise<void> };

export function createStepExecutors(deps: ReconcileDeps): StepExecutors {
  const vmOf = (name: string): DesiredVm => {
    const vm = deps.desired()?.vms.find((v) => v.name === name);
    if (!vm) throw new Error(`VM ${name} is not in the desired state`);
    return vm;
  };
  const vmState = (vm: string, state: string, extra: Record<string, unknown> = {}) =>
    deps.report({
      type: 'vm-state',
      data: {
        vm,
        profileId: deps.desired()?.vms.find((v) => v.name === vm)?.profileId ?? null,
        state,
        ...extra,
      },
    });
  /**
   * A VM that cannot boot as configured (its spec is refused): the reason becomes the VM's
   * last error, reported once per reason (every pass plans the start again until the profile or
   * Engine's configuration changes).
   */
  const refuseStart = async (vm: string, err: BulkheadError) => {
    const before = await deps.records.get(vm);
    if (before.lastError?.message === err.message) return;
    await deps.records.update(vm, (r) => ({
      ...r,
      lastError: { code: err.code, message: err.message, at: deps.clock.now() },
    }));
    deps.log.warn({ component: 'hypervisor', vm, reason: err.message }, `${vm}: not started`);
    await vmState(vm, 'failed', { reason: err.message });
  };
  return {
    async resumeUpdate(step) {
      const tx = await deps.transactions.read(step.vm);
      if (!tx) return;
      deps.log.info(
        {
          component: 'rollout',
          vm: tx.vm,
          from: releaseLabel(tx.from),
          to: releaseLabel(tx.to),
          state: tx.state,
        },
        `${tx.vm}: update to ${releaseLabel(tx.to)} goes on from ${tx.state}`,
      );
      // booting and health-check never wait, so a transaction found in them was cut off by a
      // restart (or a fault): `resumed` boots the target afresh.
      await runUpdate(deps, tx, { resumed: true });
    },
    async beginUpdate(step) {
      const tx = beginTransaction(step.vm, step.profileId, step.from, step.to, deps.clock.now());
      deps.log.info(
        { component: 'rollout', vm: tx.vm, from: releaseLabel(tx.from), to: releaseLabel(tx.to) },
        `${tx.vm}: update from ${releaseLabel(tx.from) ?? 'nothing'} to ${releaseLabel(tx.to)} begins`,
      );
      await persistTransaction(deps, step.vm, tx);
      deps.afterPersist?.(tx.state);
      await runUpdate(deps, tx);
    },
    async startVm(step) {
      const vm = vmOf(step.vm);
      const record = await deps.records.get(step.vm);
      if (!record.current) return;
      const layout = volumeLayout(deps.dataDir, vm.name);
      let spec: VmSpec;
      try {
        spec = vmSpec(vm, record.current, layout, deps.keys, deps.kernel);
      } catch (err) {
        if (!isBulkheadError(err) || !START_REFUSALS.has(err.code)) throw err;
        await refuseStart(step.vm, err);
        return;
      }
      const isMissing = !(await exists(layout.overlay('system')));
      // on-boot: the system overlay is discarded at every boot, not only at updates.
      if (vm.resetPolicy === 'on-boot' || isMissing) {
        await prepareRelease(deps, vm, record.current, deps.target(vm.name));
      }
      const status = await deps.hypervisor.start(spec);
      // A start refused earlier (refuseStart) is over once the VM starts.
      if (record.lastError && START_REFUSALS.has(record.lastError.code as ErrorCode)) {
        await deps.records.update(step.vm, (r) => ({ ...r, lastError: null }));
      }
      deps.log.info(
        {
          component: 'hypervisor',
          vm: step.vm,
          version: releaseLabel(record.current),
          pid: status.pid,
        },
        `${step.vm}: started ${releaseLabel(record.current)}`,
      );
      await vmState(step.vm, status.state, { versionId: record.current.system.versionId });
    },
    async leaseWarning(step) {
      const note = deps.leaseNotes?.get(step.vm) ?? {};
      deps.leaseNotes?.set(step.vm, { ...note, warningGiven: step.expiresAt });
      deps.log.warn(
        { component: 'sync', vm: step.vm, leaseExpiresAt: step.expiresAt },
        `${step.vm}: its lease runs out at ${new Date(step.expiresAt).toISOString()}; ` +
          'connect the PC to the network to renew it, or the VM shuts down then',
      );
    },
    async leaseExpired(step) {
      const desiredVm = deps.desired()?.vms.find((v) => v.name === step.vm);
      const profileId = desiredVm?.profileId;
      let keyDestroyed = false;
      try {
        if (step.isRunning) {
          deps.log.warn(
            { component: 'hypervisor', vm: step.vm, leaseExpiresAt: step.expiresAt },
            `${step.vm}: its lease ran out without contact with Center: shutting it down`,
          );
          // Graceful first: the driver sends ACPI power-down and forces only after the timeout.
          await deps.hypervisor.stop(step.vm, { timeoutMs: deps.stopTimeoutMs });
          await vmState(step.vm, 'stopped', { reason: 'lease expired' });
        }
      } finally {
        // After the stop (the guest shuts down with its disk open), and even if the stop failed:
        // an offline PC holds no key to the work data past its lease (crypto-erase at expiry).
        // The document keeps its digest, so the next one from Center brings the key back.
        if (profileId !== undefined && deps.wrappedKeys) {
          const wasThere = await deps.wrappedKeys.destroy(profileId);
          keyDestroyed = desiredVm?.wrappedDataKeyDigest !== undefined;
          if (wasThere) {
            deps.log.warn(
              { component: 'sync', vm: step.vm, leaseExpiresAt: step.expiresAt },
              `${step.vm}: its key material was destroyed at lease expiry; it comes back at the next contact with Center`,
            );
          }
        }
      }
      const note = deps.leaseNotes?.get(step.vm);
      if (note?.expiryHandled === step.expiresAt) return;
      // A fixed id: reported again after a restart, Center counts it once.
      await deps.report({
        id: `lease-expired-${step.vm}-${step.expiresAt}`,
        type: 'lease-expired',
        data: {
          vm: step.vm,
          profileId: deps.desired()?.vms.find((v) => v.name === step.vm)?.profileId ?? null,
          expiresAt: step.expiresAt,
          wasRunning: step.isRunning,
          ...(keyDestroyed ? { keyDestroyed } : {}),
        },
      });
      deps.leaseNotes?.set(step.vm, { ...note, expiryHandled: step.expiresAt });
    },
    async stopVm(step) {
      deps.log.info(
        { component: 'hypervisor', vm: step.vm, reason: step.reason },
        `${step.vm}: stopping (${step.reason})`,
      );
      await deps.hypervisor.stop(step.vm, { timeoutMs: deps.stopTimeoutMs });
      await vmState(step.vm, 'stopped', { reason: step.reason });
    },
    async removeVm(step) {
      // Planned only for a stopped VM; a start since then (another pass) wins. A QEMU still
      // alive in its run directory (one the driver lost track of) keeps its files too.
      const run = (await deps.hypervisor.status(step.vm)).state;
      if (run !== 'stopped' && run !== 'crashed') return;
      if ((await runStateOf(volumeLayout(deps.dataDir, step.vm).runDir)) === 'running') {
        deps.log.warn(
          { component: 'hypervisor', vm: step.vm },
          `${step.vm}: not removed: its QEMU still runs`,
        );
        return;
      }
      const kept = await removeVmFiles(deps.dataDir, step.vm);
      // The transaction and the record go last: until then the next pass plans this again.
      await deps.transactions.write(step.vm, null);
      await deps.records.remove(step.vm);
      deps.log.info(
        { component: 'hypervisor', vm: step.vm, kept },
        `${step.vm}: removed (no longer assigned)${kept.length ? `; kept ${kept.join(', ')}` : ''}`,
      );
      await vmState(step.vm, 'removed', { reason: 'no longer assigned' });
    },
    async collectGoldens(step) {
      const removed = await deps.goldens.gc(step.keep);
      if (removed.length) {
        deps.log.info({ component: 'store', removed }, 'old golden images removed');
      }
    },
  };
}

/**
 * Deletes what a VM that left the desired state had on this PC: its overlays, its UEFI
 * variable store, its TPM state (which holds the guest's sealed keys), its console logs and
 * its run directory. Its data volume is kept on purpose, and only it: it holds the user's
 * files, the one thing on the PC Center cannot give back, and a VM leaves the desired state for
 * reasons that may be undone (a profile whose image has no released version is left out, a
 * device moved to another group and back); the same profile coming back finds it (its key is
 * derived from the device and the profile, so it opens again). Deleting the user's files is a
 * deliberate act (a kill's crypto-erase), not a side effect of a profile change. The firmware
 * and TPM state do not stay with it: they belong to the VM that was removed, and a guest's
 * secrets must not outlive the VM they were sealed for. Idempotent.
 * @returns the names of what was kept (the data volume, when there is one).
 */
export async function removeVmFiles(dataDir: string, vm: string): Promise<string[]> {
  const layout = volumeLayout(dataDir, vm);
  const dataName = basename(layout.data);
  let names: string[];
  try {
    names = await readdir(layout.vmDir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
  // The TPM state and variable store first: they are what must not be left behind.
  const order = [basename(layout.tpmState), basename(layout.efiVars)];
  names.sort((a, b) => rank(order, a) - rank(order, b));
  for (const name of names) {
    if (name === dataName) continue;
    await rm(join(layout.vmDir, name), { recursive: true, force: true });
  }
  return names.includes(dataName) ? [dataName] : [];
}

function rank(order: string[], name: string): number {
  const i = order.indexOf(name);
  return i < 0 ? order.length : i;
}

/** Gathers the facts the planner needs from disk and the hypervisor. */
export async function gatherFacts(deps: ReconcileDeps): Promise<PlanInput> {
  const desired = deps.desired();
  const names = new Set<string>([
    ...(desired?.vms.map((v) => v.name) ?? []),
    ...(await deps.records.all()).map((r) => r.name),
  ]);
  const vms: VmFacts[] = [];
  for (const name of names) {
    const record = await deps.records.get(name);
    const transaction = (await deps.transactions.read(name)) ?? null;
    const run = (await deps.hypervisor.status(name)).state;
    const note = deps.leaseNotes?.get(name);
    vms.push({
      name,
      record,
      transaction,
      run,
      ...(note?.expiryHandled !== undefined ? { leaseExpiryHandled: note.expiryHandled } : {}),
      ...(note?.warningGiven !== undefined ? { leaseWarningGiven: note.warningGiven } : {}),
    });
  }
  const goldens = (await deps.goldens.list()).map((g) => ({
    image: g.image,
    versionId: g.versionId,
  }));
  const now = deps.clock.now();
  return { now, leaseNow: deps.timeMark?.now() ?? now, desired, vms, goldens };
}

/**
 * Plans and executes until the plan is empty or only waiting work is left (a staged update
 * outside its switch window, a download waiting for a mirror). A failing step is logged and
 * the pass goes on with the others; the next pass plans it again.
 */
export async function reconcileOnce(deps: ReconcileDeps, maxRounds = 8): Promise<Step[]> {
  const executors = createStepExecutors(deps);
  const done: Step[] = [];
  let previous = '';
  for (let round = 0; round < maxRounds; round++) {
    const steps = plan(await gatherFacts(deps));
    const signature = JSON.stringify(steps);
    // The same plan twice in a row means what is left is waiting, not work.
    if (steps.length === 0 || signature === previous) break;
    previous = signature;
    for (const step of steps) {
      deps.signal?.throwIfAborted();
      try {
        await (executors[step.action] as (s: Step) => Promise<void>)(step);
        done.push(step);
      } catch (err) {
        deps.log.error(
          { err, step: step.action, vm: 'vm' in step ? step.vm : undefined },
          'reconcile step failed',
        );
      }
    }
  }
  return done;
}

/** Runs reconcile passes one at a time: on each new desired state and on a timer. */
export interface Reconciler {
  /** Takes a new verified desired state and runs a pass with it (E1's agent calls this). */
  reconcile(desired: DesiredState): Promise<void>;
  /** Runs a pass now (or right after the running one). */
  pass(): Promise<void>;
  /** Passes every `intervalMs` until `signal` aborts: waiting updates and crashed VMs need them. */
  loop(signal: AbortSignal, intervalMs: number): Promise<void>;
}

export function createReconciler(
  deps: Omit<ReconcileDeps, 'desired' | 'target'> & {
    /**
     * Turns Center's desired state into the one this PC runs (the personal VM's local choice
     * and key, personal.ts); default: as it came.
     */
    localize?: (desired: DesiredState) => Promise<DesiredState>;
  },
): Reconciler {
  let desired: DesiredState | null = null;
  const full: ReconcileDeps = {
    leaseNotes: new Map(),
    ...deps,
    desired: () => desired,
    target: (name) => ({
      vm: desired?.vms.find((v) => v.name === name),
      mirrors: desired?.mirrors ?? [],
      publishers: desired?.publishers ?? [],
      deviceActive: desired?.device.state === 'active',
    }),
  };
  let chain: Promise<void> = Promise.resolve();
  const pass = () => {
    const run = chain.then(async () => {
      // The clock moves the time mark forward (written at most once a minute).
      await deps.timeMark?.observe(deps.clock.now(), 'clock');
      await reconcileOnce(full);
    });
    chain = run.catch((err: unknown) => {
      // Engine stopping ends a pass between steps: not a failure.
      if (deps.signal?.aborted) deps.log.debug({}, 'reconcile pass ended: engine stopping');
      else deps.log.error({ err }, 'reconcile pass failed');
    });
    return chain;
  };
  return {
    async reconcile(next) {
      desired = deps.localize
        ? await deps.localize(next).catch((err: unknown) => {
            deps.log.error({ err }, 'the personal VM could not be prepared; it is left out');
            return { ...next, vms: next.vms.filter((v) => !v.personal) };
          })
        : next;
      return pass();
    },
    pass,
    async loop(signal, intervalMs) {
      while (!signal.aborted) {
        await deps.clock.sleep(intervalMs, signal);
        if (!signal.aborted && desired) await pass();
      }
    },
  };
}
