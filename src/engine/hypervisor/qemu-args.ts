import { join } from 'node:path';
import { BulkheadError, ErrorCodes } from '../../protocol/index.ts';
import type { Accelerator } from './kvm-probe.ts';
import type { VmDisk, VmMachine, VmSpec } from './types.ts';

/*
 * The QEMU command line for a VmSpec, as a pure function so the isolation rules (DESIGN §4)
 * are testable without starting anything.
 *
 * Network, per `policy.network`:
 *   - `nat`: user-mode networking (slirp) with ordinary outbound NAT.
 *   - `restricted`: user-mode networking with `restrict=on`, which cuts the guest off from the
 *     host and the outside; each allowed endpoint i is reachable only through a forward, at
 *     10.0.2.(100+i):<port> inside the guest (`guestfwd`, one relay process per connection,
 *     relay.ts, which connects to the endpoint from the host). Limits: TCP only; the guest
 *     must use those addresses (no DNS for the real names: restrict=on also blocks slirp's
 *     DNS); at most 64 endpoints (the policy's bound); no QEMU seccomp sandbox (the relays
 *     would inherit it).
 *   - `none`: no network device at all (-nodefaults adds none).
 * No shared folders ever; a clipboard channel (QEMU's vdagent, served through the VNC client)
 * only when `policy.clipboard`; USB passthrough only of `policy.usbDevices`, on the xHCI
 * controller that otherwise holds only the VM's tablet (its pointer).
 */

/** Files and sockets of one VM in its run directory. */
export interface RunFiles {
  /** Engine's own QMP monitor (one client at a time: the driver holds it). */
  qmp: string;
  /**
   * A second QMP monitor for screen tools (screendump, input): a screenshot taken while
   * `engine run` holds `qmp` neither waits for nor takes Engine's connection.
   */
  screen: string;
  guestAgent: string;
  vnc: string;
  console: string;
  /**
   * What the firmware writes to the ISA debug port 0x402 (SeaBIOS's boot messages; see
   * firmware-log.ts), replaced at every start.
   */
  firmwareLog: string;
  /** QEMU's own stdout/stderr. */
  log: string;
  pidfile: string;
  /** What the driver remembers about the VM (name, accelerator, start time). */
  meta: string;
  /** The control socket of the VM's swtpm (QEMU connects to it). */
  tpmSocket: string;
  /** The pidfile swtpm writes. */
  tpmPidfile: string;
  /** swtpm's own log. */
  tpmLog: string;
}

export function runFiles(runDir: string): RunFiles {
  return {
    qmp: join(runDir, 'qmp.sock'),
    screen: join(runDir, 'screen.sock'),
    guestAgent: join(runDir, 'qga.sock'),
    vnc: join(runDir, 'vnc.sock'),
    console: join(runDir, 'console.log'),
    firmwareLog: join(runDir, 'firmware.log'),
    log: join(runDir, 'qemu.log'),
    pidfile: join(runDir, 'qemu.pid'),
    meta: join(runDir, 'vm.json'),
    tpmSocket: join(runDir, 'swtpm.sock'),
    tpmPidfile: join(runDir, 'swtpm.pid'),
    tpmLog: join(runDir, 'swtpm.log'),
  };
}

/** Guest IP of allowed endpoint `index` on a restricted network. */
export function restrictedEndpointAddress(index: number): string {
  return `10.0.2.${100 + index}`;
}

/** Longest serial QEMU keeps for a virtio-blk disk. */
const MAX_SERIAL = 20;
/** Longest unix socket path (sun_path holds 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * The disk's serial inside the guest: its role with `:` as `-` (`system`, `data`,
 * `app-<name>`), which the test guest's /init matches on.
 * @throws BulkheadError ERR_VALIDATION for another role, or one longer than 20 characters.
 */
export function diskSerial(role: string): string {
  if (!/^(system|data|app:[a-z0-9][a-z0-9-]*)$/.test(role)) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `disk role ${JSON.stringify(role)}: must be system, data or app:<name> (a-z, 0-9, -)`,
    );
  }
  const serial = role.replace(':', '-');
  if (serial.length > MAX_SERIAL) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `disk role ${JSON.stringify(role)}: app names may have at most ${MAX_SERIAL - 4} characters (QEMU keeps 20 of a disk serial)`,
    );
  }
  return serial;
}

/** Escapes a value for QEMU's `key=value,…` option syntax. */
function opt(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * A secret QEMU reads at start from a named pipe in the run directory (see `secretFifo`): the
 * key passes through the kernel, never the disk, the command line or the environment.
 */
export interface QemuSecret {
  id: string;
  /** The FIFO QEMU reads it from. */
  path: string;
  /** The LUKS passphrase: the key in base64, as Engine's data volumes are created with it. */
  content: string;
}

export interface QemuCommand {
  args: string[];
  secrets: QemuSecret[];
  files: RunFiles;
}

export interface QemuArgsOptions {
  accelerator: Accelerator;
  /** How a restricted network reaches an allowed endpoint: a command that relays stdio to it. */
  relayCommand?: (host: string, port: number) => string;
  /** Where the serial console goes; default: `console.log` in the run directory. */
  consoleLog?: string;
}

/**
 * Builds the command line (without the binary) for `spec`.
 * @throws BulkheadError ERR_VALIDATION naming the field when the spec cannot be expressed.
 */
export function buildQemuArgs(spec: VmSpec, options: QemuArgsOptions): QemuCommand {
  const files = runFiles(spec.runDir);
  for (const path of [files.qmp, files.screen, files.guestAgent, files.vnc, files.tpmSocket]) {
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `runDir ${spec.runDir} is too long for unix sockets (${path} exceeds ${MAX_SOCKET_PATH} bytes)`,
      );
    }
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(spec.name)) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `VM name ${JSON.stringify(spec.name)}: use 1-64 of A-Z, a-z, 0-9, _ . -`,
    );
  }
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > 64) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `cpus must be an integer from 1 to 64, not ${spec.cpus}`,
    );
  }
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 64) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `memoryMib must be an integer of at least 64, not ${spec.memoryMib}`,
    );
  }
  const tcg = options.accelerator === 'tcg';
  const machine = machineOf(spec);
  const windows = machine.os === 'windows';
  const args = [
    '-name',
    `guest=${opt(spec.name)}`,
    '-machine',
    machine.secureBoot ? 'q35,smm=on' : 'q35',
    '-accel',
    tcg ? 'tcg' : 'kvm',
    '-cpu',
    // Hyper-V enlightenments for Windows (QEMU takes these under TCG as well as KVM).
    (tcg ? 'max' : 'host') + (windows ? ',' + HYPERV_FLAGS.join(',') : ''),
    ...(windows ? ['-rtc', 'base=localtime'] : []),
    '-m',
    String(spec.memoryMib),
    '-smp',
    String(spec.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    // Standard VGA: it has the legacy text mode that SeaBIOS, boot loaders and Linux's vgacon
    // draw on, OVMF drives it (QemuVideoDxe), and Windows runs on it with its in-box display
    // driver, so the screen shows from firmware to desktop without guest drivers (bochs-display
    // has no text mode; virtio-vga needs drivers Windows lacks).
    '-device',
    'VGA',
    // The VNC socket lives in the run directory, which only Engine's user may enter (0700).
    '-vnc',
    `unix:${opt(files.vnc)}`,
    // Both logs are opened for appending, so that Engine can cut one a guest floods
    // (capGuestLog): QEMU's next write then lands at the new end, not past a hole.
    '-chardev',
    `file,id=console,path=${opt(options.consoleLog ?? files.console)},append=on`,
    '-serial',
    'chardev:console',
    // The firmware's debug port: why a boot went nowhere, in SeaBIOS's words (firmware-log.ts).
    '-chardev',
    `file,id=fwlog,path=${opt(files.firmwareLog)},append=on`,
    '-device',
    'isa-debugcon,iobase=0x402,chardev=fwlog',
    '-pidfile',
    files.pidfile,
    '-qmp',
    `unix:${opt(files.qmp)},server=on,wait=off`,
    '-qmp',
    `unix:${opt(files.screen)},server=on,wait=off`,
    ...(spec.policy.network === 'restricted'
      ? []
      : // QEMU may not spawn programs, change privileges or scheduling. Not with a restricted
        // network: its relays are programs slirp spawns, and they would inherit the filter.
        ['-sandbox', 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny']),
    // The guest agent channel.
    '-chardev',
    `socket,id=qga,path=${opt(files.guestAgent)},server=on,wait=off`,
    '-device',
    'virtio-serial-pci,id=vser0',
    '-device',
    'virtserialport,bus=vser0.0,chardev=qga,name=org.qemu.guest_agent.0',
  ];
  if (spec.policy.clipboard) {
    args.push(
      '-chardev',
      'qemu-vdagent,id=vdagent,clipboard=on',
      '-device',
      'virtserialport,bus=vser0.0,chardev=vdagent,name=com.redhat.spice.0',
    );
  }
  args.push(...firmwareArgs(machine));
  if (machine.tpm) {
    args.push(
      '-chardev',
      `socket,id=chrtpm,path=${opt(files.tpmSocket)}`,
      '-tpmdev',
      'emulator,id=tpm0,chardev=chrtpm',
      '-device',
      'tpm-crb,tpmdev=tpm0',
    );
  }
  if (spec.kernel) {
    args.push('-kernel', spec.kernel.path);
    if (spec.kernel.initrd !== undefined) args.push('-initrd', spec.kernel.initrd);
    if (spec.kernel.cmdline !== undefined) args.push('-append', spec.kernel.cmdline);
  }

  const secrets: QemuSecret[] = [];
  const serials = new Set<string>();
  if (machine.devices === 'compat' && spec.disks.length > AHCI_PORTS) {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      `disks: compat devices have ${AHCI_PORTS} AHCI ports, not ${spec.disks.length} disks`,
    );
  }
  spec.disks.forEach((disk, i) => {
    const serial = diskSerial(disk.role);
    if (serials.has(serial)) {
      throw new BulkheadError(ErrorCodes.VALIDATION, `disks: role ${disk.role} appears twice`);
    }
    serials.add(serial);
    args.push(...diskArgs(disk, i, serial, spec, secrets));
  });

  args.push(...networkArgs(spec, options));

  // Every VM has an absolute pointer, so a click lands where the screen shows it (the q35
  // machine's PS/2 mouse moves only relatively): a USB tablet, which Windows (with or without
  // virtio drivers, its installer too) and Linux drive with their in-box USB HID drivers, where
  // virtio-tablet would need virtio-win's input driver in Windows. On xHCI, which the guest
  // does not have to poll, so an idle tablet costs next to nothing.
  args.push('-device', 'qemu-xhci,id=usb0', '-device', 'usb-tablet,bus=usb0.0,id=tablet');
  for (const id of spec.policy.usbDevices) {
    const [vendor, product] = id.split(':');
    if (!/^[0-9a-f]{4}$/.test(vendor ?? '') || !/^[0-9a-f]{4}$/.test(product ?? '')) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `policy.usbDevices: ${JSON.stringify(id)} is not vendor:product in hex`,
      );
    }
    args.push('-device', `usb-host,bus=usb0.0,vendorid=0x${vendor},productid=0x${product}`);
  }
  return { args, secrets, files };
}

function diskArgs(
  disk: VmDisk,
  i: number,
  serial: string,
  spec: VmSpec,
  secrets: QemuSecret[],
): string[] {
  const ro = disk.readOnly ? 'on' : 'off';
  let format = `driver=${disk.format},node-name=disk${i},file=file${i},read-only=${ro}`;
  if (disk.encryptionKey) {
    if (disk.format !== 'qcow2') {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        `disk ${disk.role}: encryption needs a qcow2 volume`,
      );
    }
    const id = `key${i}`;
    secrets.push({
      id,
      path: join(spec.runDir, `${id}.fifo`),
      content: disk.encryptionKey.toString('base64'),
    });
    format += `,encrypt.format=luks,encrypt.key-secret=${id}`;
  }
  const out: string[] = [];
  const secret = secrets.find((s) => s.id === `key${i}`);
  if (disk.encryptionKey && secret) {
    out.push('-object', `secret,id=key${i},file=${opt(secret.path)}`);
  }
  out.push(
    '-blockdev',
    `driver=file,node-name=file${i},filename=${opt(disk.path)},read-only=${ro}`,
    '-blockdev',
    format,
    '-device',
    (machineOf(spec).devices === 'compat'
      ? // q35's built-in AHCI controller, one port per disk.
        `ide-hd,bus=ide.${i},drive=disk${i},serial=${serial},id=vd-${serial}`
      : `virtio-blk-pci,drive=disk${i},serial=${serial},id=vd-${serial}`) +
      (!spec.kernel && disk.role === 'system' ? ',bootindex=0' : ''),
  );
  return out;
}

function networkArgs(spec: VmSpec, options: QemuArgsOptions): string[] {
  const { policy } = spec;
  if (policy.network === 'none') return [];
  const device = [
    '-device',
    machineOf(spec).devices === 'compat' ? 'e1000,netdev=net0' : 'virtio-net-pci,netdev=net0',
  ];
  if (policy.network === 'nat') return ['-netdev', 'user,id=net0,restrict=off', ...device];
  let netdev = 'user,id=net0,restrict=on';
  policy.allowedEndpoints.forEach((endpoint, i) => {
    if (!options.relayCommand) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        'a restricted network with allowed endpoints needs a relay command',
      );
    }
    const cmd = options.relayCommand(endpoint.host, endpoint.port);
    netdev += `,guestfwd=tcp:${restrictedEndpointAddress(i)}:${endpoint.port}-cmd:${opt(cmd)}`;
  });
  return ['-netdev', netdev, ...device];
}

/** Ports of q35's built-in AHCI controller (`ide.0` … `ide.5`). */
const AHCI_PORTS = 6;

/** Hyper-V enlightenments a Windows guest gets. */
export const HYPERV_FLAGS = ['hv_relaxed', 'hv_vapic', 'hv_spinlocks=0x1fff', 'hv_time'];

/** Where Debian's `ovmf` package puts OVMF. */
export const OVMF_DIR = '/usr/share/OVMF';

/**
 * OVMF's code (read-only) and the template of its variable store: the Secure Boot build
 * (needs SMM) with Microsoft's keys enrolled, or the plain build with an empty store.
 */
export function ovmfFiles(secureBoot: boolean): { code: string; varsTemplate: string } {
  return secureBoot
    ? {
        code: join(OVMF_DIR, 'OVMF_CODE_4M.secboot.fd'),
        varsTemplate: join(OVMF_DIR, 'OVMF_VARS_4M.ms.fd'),
      }
    : { code: join(OVMF_DIR, 'OVMF_CODE_4M.fd'), varsTemplate: join(OVMF_DIR, 'OVMF_VARS_4M.fd') };
}

/** The spec's machine, defaults filled in; refuses what cannot be built. */
export function machineOf(spec: VmSpec): VmMachine {
  const machine: VmMachine = spec.machine ?? {
    firmware: 'bios',
    secureBoot: false,
    os: 'linux',
    devices: 'virtio',
  };
  if (machine.secureBoot && machine.firmware !== 'uefi') {
    throw new BulkheadError(
      ErrorCodes.VALIDATION,
      'machine.secureBoot needs machine.firmware uefi (BIOS has no Secure Boot)',
    );
  }
  if (machine.firmware === 'uefi' && !machine.varsPath) {
    throw new BulkheadError(ErrorCodes.VALIDATION, 'machine.varsPath is required with uefi');
  }
  if (machine.tpm && machine.tpm.key.length !== 32) {
    throw new BulkheadError(ErrorCodes.VALIDATION, 'machine.tpm.key must be 32 bytes');
  }
  return machine;
}

function firmwareArgs(machine: VmMachine): string[] {
  if (machine.firmware !== 'uefi' || !machine.varsPath) return [];
  const { code } = ovmfFiles(machine.secureBoot);
  return [
    ...(machine.secureBoot ? ['-global', 'driver=cfi.pflash01,property=secure,value=on'] : []),
    '-blockdev',
    `driver=file,node-name=fw-code-file,filename=${opt(code)},read-only=on`,
    '-blockdev',
    'driver=raw,node-name=fw-code,file=fw-code-file,read-only=on',
    '-blockdev',
    `driver=file,node-name=fw-vars-file,filename=${opt(machine.varsPath)},read-only=off`,
    '-blockdev',
    'driver=raw,node-name=fw-vars,file=fw-vars-file,read-only=off',
    '-machine',
    'pflash0=fw-code,pflash1=fw-vars',
  ];
}

/** The file descriptor swtpm reads its state key from (a pipe the driver writes). */
export const SWTPM_KEY_FD = 3;

/**
 * swtpm's command line (without the binary) for a VM with a TPM: a TPM 2.0 on the control
 * socket QEMU connects to, ending when QEMU lets go of it, its state in the VM's persistent
 * TPM directory encrypted with AES-256-CBC under the key it reads from fd 3. The key is never
 * an argument.
 */
export function buildSwtpmArgs(spec: VmSpec): string[] {
  const machine = machineOf(spec);
  if (!machine.tpm) return [];
  const files = runFiles(spec.runDir);
  return [
    'socket',
    '--tpm2',
    '--tpmstate',
    `dir=${opt(machine.tpm.stateDir)},mode=0600`,
    '--ctrl',
    `type=unixio,path=${opt(files.tpmSocket)},mode=0600`,
    '--key',
    `fd=${SWTPM_KEY_FD},mode=aes-256-cbc,format=binary`,
    '--pid',
    `file=${opt(files.tpmPidfile)}`,
    '--log',
    `file=${opt(files.tpmLog)},level=1`,
    '--terminate',
  ];
}
