import type { IsolationPolicy } from '../../protocol/index.ts';

/*
 * The contract between Engine and a hypervisor. Engine decides which volumes a VM boots and
 * when; a driver only starts, watches and stops VMs. Drivers: `qemu` (QEMU with QMP, KVM when
 * a probe shows it works, TCG otherwise) and `sim` (fleet simulation only, never in the tests
 * of a real feature).
 */

/** One disk attached to a VM. Engine owns the files; the driver never creates or deletes them. */
export interface VmDisk {
  /** `system`, `data`, or `app:<name>`; also the disk's serial inside the guest. */
  role: string;
  /** Path of the qcow2 overlay (system, apps) or the data volume. */
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  /**
   * For a LUKS-encrypted qcow2 data volume: the key, passed to QEMU as a secret object through
   * a named pipe in the VM's run directory (secret-fifo.ts), removed once QEMU has read it, so
   * it is never on disk, on a command line or in an environment. Never logged.
   */
  encryptionKey?: Buffer;
}

/** Everything a driver needs to start one VM. */
export interface VmSpec {
  /** Stable VM name (the profile name, e.g. `work`); unique on the PC. */
  name: string;
  cpus: number;
  memoryMib: number;
  /** Direct kernel boot (the test guest and appliance-style images); absent: boot the system disk. */
  kernel?: { path: string; initrd?: string; cmdline?: string };
  disks: VmDisk[];
  policy: IsolationPolicy;
  /** Directory for the VM's sockets (QMP, guest agent, VNC) and logs; created by Engine. */
  runDir: string;
  /**
   * Where each boot's serial console log is kept (one file per boot, the last few; see
   * consoles.ts). Absent: the console goes to `console.log` in the run directory, replaced at
   * every boot.
   */
  consoleDir?: string;
  /** What the VM boots, as people name it (`os@2`); names its console log. */
  version?: string;
  /** Firmware, TPM and guest-OS hints; absent: BIOS, no TPM, a Linux guest on virtio. */
  machine?: VmMachine;
}

/**
 * The virtual machine's firmware and devices. Files named here are the VM's persistent state
 * (beside its data volume): an update or rollback never replaces them.
 */
export interface VmMachine {
  /** `uefi` boots OVMF with `varsPath` as its variable store. */
  firmware: 'bios' | 'uefi';
  /** OVMF's Secure Boot build with SMM and Microsoft's keys; only with `uefi`. */
  secureBoot: boolean;
  /**
   * The VM's UEFI variable store: made once from OVMF's template by the driver when missing,
   * kept across boots. Required with `uefi`.
   */
  varsPath?: string;
  /**
   * A TPM 2.0 (swtpm, one per VM, started before QEMU and stopped after it). Its state lives
   * in `stateDir`, encrypted with `key` (32 bytes, derived from the VM's data key), which
   * reaches swtpm only through a pipe. Never logged.
   */
  tpm?: { stateDir: string; key: Buffer };
  /** `windows`: Hyper-V enlightenments and a local-time clock. */
  os: 'linux' | 'windows';
  /**
   * `compat`: AHCI disks and an e1000 NIC, for guests without virtio drivers. Every VM has a
   * USB tablet (its absolute pointer) either way.
   */
  devices: 'virtio' | 'compat';
}

export type VmRunState = 'stopped' | 'starting' | 'running' | 'shutting-down' | 'crashed';

/** What a driver knows about one VM. */
export interface VmStatus {
  name: string;
  state: VmRunState;
  /** PID of the hypervisor process, while it runs. */
  pid?: number;
  /** `kvm` or `tcg`, while it runs. */
  accelerator?: 'kvm' | 'tcg';
  /** Why the VM last stopped (`guest-shutdown`, `quit`, `killed`, `exit code 1`, …). */
  lastExit?: string;
  /** Unix socket of the guest agent (qemu-ga) channel. */
  guestAgentSocket?: string;
  /** Unix socket of the VM's VNC display. */
  vncSocket?: string;
}

export interface VmEvent {
  name: string;
  /** A QMP event name (`SHUTDOWN`, `RESET`, `STOP`, …) or `exited` when the process ended. */
  event: string;
  at: number;
  detail?: Record<string, unknown>;
}

export interface HypervisorDriver {
  readonly kind: 'qemu' | 'sim';
  /**
   * Starts the VM described by `spec` and resolves once the hypervisor accepted it (QMP
   * answered; the guest may still be booting). The VM outlives Engine: a restarted Engine
   * finds it again with `attach`.
   * @throws BulkheadError when the VM already runs, or the hypervisor refused the spec.
   */
  start(spec: VmSpec): Promise<VmStatus>;
  /**
   * Reconnects to a VM started by an earlier Engine process, if it still runs; resolves
   * `stopped` otherwise (and cleans stale sockets).
   */
  attach(name: string, runDir: string): Promise<VmStatus>;
  /**
   * Stops the VM: ACPI power-down, then after `timeoutMs` (default 30 s) a hard quit, then
   * SIGKILL. Resolves when the process has exited. A VM already stopped resolves at once.
   */
  stop(name: string, options?: { timeoutMs?: number; force?: boolean }): Promise<VmStatus>;
  /** Current status; never throws for an unknown name (answers `stopped`). */
  status(name: string): Promise<VmStatus>;
  /** Subscribes to VM events; returns the unsubscribe function. */
  onEvent(listener: (event: VmEvent) => void): () => void;
}
