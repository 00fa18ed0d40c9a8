// The hypervisor layer of Engine: the driver contract and its implementations (QEMU, and a
// simulated one for fleet simulation), plus the pieces the QEMU driver is made of.
export type {
  HypervisorDriver,
  VmDisk,
  VmEvent,
  VmMachine,
  VmRunState,
  VmSpec,
  VmStatus,
} from './types.ts';
export { createQemuDriver, QemuDriver, type QemuDriverOptions } from './qemu.ts';
export { createSimDriver, SimDriver, type SimDriverOptions } from './sim.ts';
export {
  chooseAccelerator,
  probeKvm,
  type Accelerator,
  type KvmProbeOptions,
  type KvmProbeResult,
} from './kvm-probe.ts';
export {
  buildQemuArgs,
  diskSerial,
  restrictedEndpointAddress,
  runFiles,
  type QemuArgsOptions,
  type QemuCommand,
  type RunFiles,
} from './qemu-args.ts';
export { QmpClient, QmpError, type QmpEvent } from './qmp.ts';
export {
  FIRMWARE_LOG_TAIL,
  parseFirmwareLogs,
  readBootVerdict,
  type BootVerdict,
} from './firmware-log.ts';
export {
  ABS_MAX,
  absoluteAxis,
  BLANK_VARIANCE,
  brightnessVariance,
  decodePng,
  keyEvents,
  keyStrokes,
  Screen,
  type Image,
  type KeyStroke,
  type MouseButton,
} from './screen.ts';
