import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { HypervisorDriver, VmEvent, VmSpec, VmStatus } from './types.ts';

/*
 * A simulated hypervisor for fleet simulation (thousands of Engines in one process): the same
 * contract as the QEMU driver, in memory, with a configurable boot delay and failure
 * injection. Never used by the tests of a real feature.
 */

export interface SimDriverOptions {
  /** Time from `start` until the VM counts as `running`; default 0. */
  bootDelayMs?: number;
  /** Time a graceful stop takes; default 0. */
  stopDelayMs?: number;
  now?: () => number;
  /**
   * Decides whether a start fails: return a message to refuse it (as QEMU refusing a spec
   * would), or nothing to let it boot.
   */
  failStart?: (spec: VmSpec) => string | undefined;
}

interface SimVm {
  spec: VmSpec;
  status: VmStatus;
  timer?: NodeJS.Timeout;
}

export class SimDriver implements HypervisorDriver {
  readonly kind = 'sim' as const;
  readonly #options: SimDriverOptions;
  readonly #vms = new Map<string, SimVm>();
  readonly #listeners = new Set<(event: VmEvent) => void>();
  #nextPid = 10_000;
  /** VMs (by name) whose next stop ignores the power button, as a hung guest would. */
  readonly #ignorePowerdown = new Set<string>();

  constructor(options: SimDriverOptions = {}) {
    this.#options = options;
  }

  async start(spec: VmSpec): Promise<VmStatus> {
    const known = this.#vms.get(spec.name);
    if (known && isRunning(known.status.state)) {
      throw new BulkheadError(ErrorCodes.IN_USE, `VM ${spec.name} already runs`);
    }
    const refused = this.#options.failStart?.(spec);
    if (refused !== undefined) {
      throw new BulkheadError(ErrorCodes.INTERNAL, `QEMU refused VM ${spec.name}: ${refused}`);
    }
    const vm: SimVm = {
      spec,
      status: {
        name: spec.name,
        state: 'starting',
        pid: this.#nextPid++,
        accelerator: 'tcg',
        guestAgentSocket: `${spec.runDir}/qga.sock`,
        vncSocket: `${spec.runDir}/vnc.sock`,
      },
    };
    this.#vms.set(spec.name, vm);
    const delay = this.#options.bootDelayMs ?? 0;
    if (delay > 0) {
      vm.timer = setTimeout(() => {
        if (vm.status.state === 'starting') vm.status.state = 'running';
      }, delay);
      vm.timer.unref();
    } else {
      vm.status.state = 'running';
    }
    return { ...vm.status };
  }

  async attach(name: string): Promise<VmStatus> {
    return this.status(name);
  }

  async stop(name: string, options: { timeoutMs?: number; force?: boolean } = {}) {
    const vm = this.#vms.get(name);
    if (!vm || !isRunning(vm.status.state)) return this.status(name);
    vm.status.state = 'shutting-down';
    clearTimeout(vm.timer);
    const graceful = !options.force && !this.#ignorePowerdown.delete(name);
    const wait = graceful
      ? (this.#options.stopDelayMs ?? 0)
      : Math.min(options.timeoutMs ?? 30_000, 60_000);
    if (wait > 0 && !options.force) await new Promise((r) => setTimeout(r, wait));
    if (graceful) this.#emit(name, 'SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    this.#end(vm, 'stopped', graceful ? 'guest-shutdown' : options.force ? 'killed' : 'quit');
    return this.status(name);
  }

  async status(name: string): Promise<VmStatus> {
    const vm = this.#vms.get(name);
    return vm ? { ...vm.status } : { name, state: 'stopped' };
  }

  onEvent(listener: (event: VmEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  // Failure injection -------------------------------------------------------------------------

  /** The VM's process dies now (as `kill -9` would): `crashed`, and an `exited` event. */
  crash(name: string, why = 'killed by SIGKILL'): void {
    const vm = this.#vms.get(name);
    if (vm && isRunning(vm.status.state)) this.#end(vm, 'crashed', why);
  }

  /** The guest powers itself off (SHUTDOWN from the guest, then `exited`). */
  guestPowerOff(name: string): void {
    const vm = this.#vms.get(name);
    if (!vm || !isRunning(vm.status.state)) return;
    this.#emit(name, 'SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    this.#end(vm, 'stopped', 'guest-shutdown');
  }

  /** The next stop of `name` ignores the power button and ends with a quit after the timeout. */
  ignoreNextPowerdown(name: string): void {
    this.#ignorePowerdown.add(name);
  }

  #end(vm: SimVm, state: 'stopped' | 'crashed', lastExit: string): void {
    clearTimeout(vm.timer);
    vm.status = { name: vm.spec.name, state, lastExit };
    this.#emit(vm.spec.name, 'exited', { state, lastExit });
  }

  #emit(name: string, event: string, detail: Record<string, unknown>): void {
    const at = (this.#options.now ?? Date.now)();
    for (const l of this.#listeners) l({ name, event, at, detail });
  }
}

function isRunning(state: VmStatus['state']): boolean {
  return state === 'starting' || state === 'running' || state === 'shutting-down';
}

export function createSimDriver(options: SimDriverOptions = {}): SimDriver {
  return new SimDriver(options);
}
