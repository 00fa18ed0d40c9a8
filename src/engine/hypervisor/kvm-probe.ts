import { spawn } from 'node:child_process';
import { access, constants, readdir } from 'node:fs/promises';

/*
 * Whether KVM works here. /dev/kvm may exist and still hang any process that opens a VM on it
 * (no hardware virtualisation exposed to a nested guest), so the probe runs in a child process
 * (QEMU with `-accel kvm`) that gets a hard deadline and SIGKILL; it never runs in Engine's own
 * process. Initialising a vCPU is not enough either: on some nested hosts the firmware runs
 * under KVM but a Linux kernel never prints a line. So the probe then boots the host's own
 * kernel under KVM and waits for its first words on the serial port.
 */

export type Accelerator = 'kvm' | 'tcg';

export interface KvmProbeResult {
  accelerator: Accelerator;
  /** Why, in one line (`/dev/kvm is missing`, `timed out after 3000 ms`, …). */
  reason: string;
  elapsedMs: number;
}

export interface KvmProbeOptions {
  qemuBinary?: string;
  /** Hard deadline of the probe process; default 3 s. */
  timeoutMs?: number;
  kvmDevice?: string;
  /** A Linux kernel to boot under KVM; default the newest /boot/vmlinuz-*. */
  kernel?: string;
}

/** Runs the probe once; never throws (any failure means `tcg`). */
export async function probeKvm(options: KvmProbeOptions = {}): Promise<KvmProbeResult> {
  const started = Date.now();
  const first = await initialisesKvm(options);
  if (first.accelerator !== 'kvm') return first;
  const kernel = options.kernel ?? (await newestKernel());
  if (kernel === undefined) return { ...first, reason: `${first.reason}; no kernel to boot` };
  const boots = await bootsLinux(options, kernel);
  return {
    accelerator: boots.ok ? 'kvm' : 'tcg',
    reason: boots.ok ? `${first.reason}, and booted ${kernel}` : boots.reason,
    elapsedMs: Date.now() - started,
  };
}

async function newestKernel(): Promise<string | undefined> {
  try {
    const names = (await readdir('/boot')).filter((n) => n.startsWith('vmlinuz-'));
    names.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const name = names.at(-1);
    if (name === undefined) return undefined;
    await access(`/boot/${name}`, constants.R_OK);
    return `/boot/${name}`;
  } catch {
    return undefined;
  }
}

/** Boots `kernel` under KVM (no root: it panics after its first lines) and waits for them. */
function bootsLinux(
  options: KvmProbeOptions,
  kernel: string,
): Promise<{ ok: boolean; reason: string }> {
  const timeoutMs = options.timeoutMs ?? 3000;
  return new Promise((resolve) => {
    let settled = false;
    const finish = (ok: boolean, reason: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      child.unref();
      resolve({ ok, reason });
    };
    const child = spawn(
      options.qemuBinary ?? 'qemu-system-x86_64',
      [
        ...['-accel', 'kvm', '-machine', 'q35', '-cpu', 'host', '-m', '128'],
        ...['-display', 'none', '-nodefaults', '-no-user-config', '-no-reboot'],
        ...['-kernel', kernel, '-append', 'console=ttyS0 panic=-1', '-serial', 'stdio'],
      ],
      { detached: true, stdio: ['ignore', 'pipe', 'ignore'] },
    );
    const timer = setTimeout(
      () => finish(false, `a Linux kernel printed nothing under KVM within ${timeoutMs} ms`),
      timeoutMs,
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString('latin1');
      if (out.includes('Linux version')) finish(true, 'booted');
    });
    child.on('error', (err) => finish(false, `KVM probe could not run QEMU: ${err.message}`));
    child.on('exit', (code) =>
      finish(
        false,
        `QEMU stopped before a Linux kernel spoke under KVM (exit ${code ?? 'signal'})`,
      ),
    );
  });
}

/** Whether QEMU initialises KVM and a vCPU, and answers on QMP with it in place. */
async function initialisesKvm(options: KvmProbeOptions): Promise<KvmProbeResult> {
  const started = Date.now();
  const timeoutMs = options.timeoutMs ?? 3000;
  const device = options.kvmDevice ?? '/dev/kvm';
  const done = (accelerator: Accelerator, reason: string): KvmProbeResult => ({
    accelerator,
    reason,
    elapsedMs: Date.now() - started,
  });
  try {
    await access(device, constants.R_OK | constants.W_OK);
  } catch {
    return done('tcg', `${device} is missing or not accessible`);
  }
  return new Promise<KvmProbeResult>((resolve) => {
    let settled = false;
    const finish = (result: KvmProbeResult) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // A process stuck in the kernel may not die at once: kill its group, never wait for it.
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      child.unref();
      resolve(result);
    };
    const child = spawn(
      options.qemuBinary ?? 'qemu-system-x86_64',
      [
        '-accel',
        'kvm',
        // A real machine with one vCPU, paused: some hosts open /dev/kvm but fail when a vCPU's
        // registers are set, which `-machine none` never does.
        '-machine',
        'q35',
        '-cpu',
        'host',
        '-m',
        '64',
        '-S',
        '-display',
        'none',
        '-nodefaults',
        '-no-user-config',
        '-qmp',
        'stdio',
      ],
      { detached: true, stdio: ['pipe', 'pipe', 'pipe'] },
    );
    const timer = setTimeout(
      () => finish(done('tcg', `KVM probe timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    let stdout = '';
    let asked = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      // QEMU greets on QMP once the accelerator and the machine are initialised; it must then
      // also answer a command with its vCPU in place, and still run a moment later.
      if (!asked && stdout.includes('"QMP"')) {
        asked = true;
        child.stdin.write('{"execute":"qmp_capabilities"}\n{"execute":"query-status"}\n');
      }
      if (asked && (stdout.match(/"return"/g) ?? []).length >= 2) {
        setTimeout(() => {
          if (child.exitCode === null && child.signalCode === null) {
            finish(done('kvm', 'QEMU initialised KVM and a vCPU'));
          }
        }, 300).unref();
      }
    });
    child.stdin.on('error', () => {});
    child.on('error', (err) => finish(done('tcg', `KVM probe could not run QEMU: ${err.message}`)));
    child.on('exit', (code) =>
      finish(
        done(
          'tcg',
          `QEMU could not use KVM (exit ${code ?? 'signal'}): ${stderr.trim().split('\n').pop() ?? ''}`,
        ),
      ),
    );
  });
}

/**
 * The accelerator to use: `BULKHEAD_ACCEL` (`kvm` or `tcg`) when set, else the probe's answer.
 * @throws Error when `BULKHEAD_ACCEL` has another value.
 */
export async function chooseAccelerator(
  env: NodeJS.ProcessEnv = process.env,
  options: KvmProbeOptions = {},
): Promise<KvmProbeResult> {
  const forced = env['BULKHEAD_ACCEL'];
  if (forced !== undefined && forced !== '' && forced !== 'auto') {
    if (forced !== 'kvm' && forced !== 'tcg') {
      throw new Error(`BULKHEAD_ACCEL must be kvm, tcg or auto, not ${JSON.stringify(forced)}`);
    }
    return { accelerator: forced, reason: 'set by BULKHEAD_ACCEL', elapsedMs: 0 };
  }
  return probeKvm(options);
}
