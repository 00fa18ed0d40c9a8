import type { DesiredState, DeviceCommand } from '../protocol/index.ts';
import type { Clock } from './clock.ts';
import type { HypervisorDriver, VmRunState } from './hypervisor/types.ts';
import type { Log } from './log.ts';
import type { Reconciler } from './reconcile.ts';
import type { CommandHandler, CommandOutcome } from './sync.ts';
import type { ActiveState } from './update/machine.ts';
import type { TransactionFiles, VmRecords } from './update/records.ts';

/*
 * Commands from Center, carried out on the PC (DESIGN §4):
 *
 *   lock        every VM stops and none starts until unlock
 *   unlock      the VMs start again
 *   kill        every VM stops for good (crypto-erase of the work data is the kill's next step)
 *   restart-vm  one VM stops and starts again on the version it runs
 *
 * The device's state travels in the desired state as well (a kill: in Center's signed kill
 * notice, which the sync loop keeps on disk), and the reconciler never starts a VM of a device
 * that is not active, so a lock or kill holds across Engine restarts and offline weeks. The handler acts at once rather than waiting for the reconciler's next pass (which may
 * be in the middle of a long download), and answers done only once what the command promises
 * is true: for lock and kill, every VM is stopped.
 *
 * An update that is switching, booting, checking health or rolling back is let finish first:
 * stopping a VM under its health check would mark a good version bad. A staged update does not
 * switch while the device is not active (the update executors check), so nothing boots after.
 */

export interface CommandDeps {
  hypervisor: Pick<HypervisorDriver, 'status' | 'stop'>;
  transactions: Pick<TransactionFiles, 'read'>;
  records: Pick<VmRecords, 'all'>;
  reconciler: Pick<Reconciler, 'reconcile'>;
  clock: Clock;
  log: Log;
  stopTimeoutMs: number;
  /** Longest wait for an update's boot and health check to end (default 15 min). */
  settleTimeoutMs?: number;
  /** Longest wait for a restarted VM to run again (default 5 min). */
  restartTimeoutMs?: number;
  /**
   * Crypto-erases the PC once a kill has stopped every VM (crypto-erase.ts); answers what it
   * did, for the kill's result. Without it a kill only stops the VMs (simulated fleets).
   */
  erase?: () => Promise<string>;
}

/** Update states in which the VM is being switched, booted or judged: let them finish. */
const BOOTING: ReadonlySet<ActiveState> = new Set<ActiveState>([
  'switching',
  'booting',
  'health-check',
  'rolling-back',
]);

const isUp = (state: VmRunState) => state !== 'stopped' && state !== 'crashed';

export function createCommandHandler(deps: CommandDeps): CommandHandler {
  const settleTimeoutMs = deps.settleTimeoutMs ?? 15 * 60_000;
  const restartTimeoutMs = deps.restartTimeoutMs ?? 5 * 60_000;

  async function vmNames(desired: DesiredState): Promise<string[]> {
    const names = new Set(desired.vms.map((v) => v.name));
    for (const r of await deps.records.all()) names.add(r.name);
    return [...names].sort();
  }

  /** Polls `done` once a second until it answers true or `timeoutMs` passed. */
  async function waitFor(timeoutMs: number, done: () => Promise<boolean>): Promise<boolean> {
    const deadline = deps.clock.now() + timeoutMs;
    for (;;) {
      if (await done()) return true;
      if (deps.clock.now() >= deadline) return false;
      await deps.clock.sleep(1000);
    }
  }

  async function booting(names: readonly string[]): Promise<string[]> {
    const out: string[] = [];
    for (const name of names) {
      const tx = await deps.transactions.read(name);
      if (tx && BOOTING.has(tx.state)) out.push(name);
    }
    return out;
  }

  /** Stops every VM, after any update in its boot window; the names of those still up. */
  async function stopAll(desired: DesiredState): Promise<{ stopped: string[]; up: string[] }> {
    const names = await vmNames(desired);
    await waitFor(settleTimeoutMs, async () => (await booting(names)).length === 0);
    const stopped: string[] = [];
    for (const name of names) {
      const { state } = await deps.hypervisor.status(name);
      deps.log.info({ component: 'hypervisor', vm: name, state }, 'stopping every VM');
      if (!isUp(state)) continue;
      await deps.hypervisor.stop(name, { timeoutMs: deps.stopTimeoutMs });
      stopped.push(name);
    }
    const up: string[] = [];
    for (const name of names) {
      if (isUp((await deps.hypervisor.status(name)).state)) up.push(name);
    }
    return { stopped, up };
  }

  function list(names: readonly string[]): string {
    return names.length === 0 ? 'none' : names.join(', ');
  }

  async function halt(kind: 'lock' | 'kill', desired: DesiredState): Promise<CommandOutcome> {
    const state = desired.device.state;
    if (kind === 'lock' && state === 'active') {
      // A later unlock in the same document already undid this lock.
      return { ok: true, message: 'superseded by a later unlock; the device is active' };
    }
    const { stopped, up } = await stopAll(desired);
    if (up.length > 0) {
      return { ok: false, message: `VMs still running after the stop: ${list(up)}` };
    }
    let what =
      state === 'killed'
        ? 'the device is killed; no VM starts again'
        : 'the device is locked; no VM starts until it is unlocked';
    if (kind === 'kill' && state === 'killed' && deps.erase) {
      what += `; ${await deps.erase()}`;
    }
    return { ok: true, message: `every VM is stopped (stopped now: ${list(stopped)}); ${what}` };
  }

  async function restart(command: DeviceCommand, desired: DesiredState): Promise<CommandOutcome> {
    if (desired.device.state !== 'active') {
      return { ok: false, message: `the device is ${desired.device.state}; its VMs stay stopped` };
    }
    const vm = desired.vms.find((v) => v.profileId === command.profileId);
    if (!vm) return { ok: false, message: 'no VM of this profile runs on this PC' };
    const tx = await deps.transactions.read(vm.name);
    if (tx) {
      return {
        ok: false,
        message: `VM ${vm.name} is being updated (${tx.state}); restart it once the update is over`,
      };
    }
    await deps.hypervisor.stop(vm.name, { timeoutMs: deps.stopTimeoutMs });
    // The reconciler starts a stopped VM of an active device on the version it runs.
    void deps.reconciler.reconcile(desired);
    const isRunning = await waitFor(restartTimeoutMs, async () => {
      const s = (await deps.hypervisor.status(vm.name)).state;
      return s === 'running' || s === 'starting';
    });
    return isRunning
      ? { ok: true, message: `VM ${vm.name} restarted` }
      : { ok: false, message: `VM ${vm.name} stopped but did not start again in time` };
  }

  return async (command: DeviceCommand, desired: DesiredState) => {
    // Hand the reconciler the new device state first, so that no pass or staged update starts a
    // VM of a device that is no longer active while the command runs.
    void deps.reconciler.reconcile(desired);
    deps.log.info({ component: 'sync', commandId: command.id, kind: command.kind }, 'command');
    switch (command.kind) {
      case 'lock':
      case 'kill':
        return halt(command.kind, desired);
      case 'unlock':
        return desired.device.state === 'active'
          ? { ok: true, message: 'the device is active; its VMs start again' }
          : { ok: true, message: `superseded: the device is ${desired.device.state}` };
      case 'restart-vm':
        return restart(command, desired);
    }
  };
}
