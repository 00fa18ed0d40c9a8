import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { chmod, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { BulkheadError, ErrorCodes, errnoCode } from '../../protocol/index.ts';
import { isAlive } from './alive.ts';
import { capGuestLog, CONSOLES_KEPT, consoleLogName, pruneConsoleLogs } from './consoles.ts';
import { chooseAccelerator, type Accelerator, type KvmProbeResult } from './kvm-probe.ts';
import { createNetnsSandbox, type NetworkSandbox } from './netns.ts';
import { buildQemuArgs, runFiles, type RunFiles } from './qemu-args.ts';
import { QmpClient, type QmpEvent } from './qmp.ts';
import { secretFifo, type SecretFifo } from '../secret-fifo.ts';
import { ensureVarsStore, startSwtpm, stopSwtpm } from './swtpm.ts';
import type { HypervisorDriver, VmEvent, VmRunState, VmSpec, VmStatus } from './types.ts';

/*
 * HypervisorDriver on QEMU. Each VM is one `qemu-system-x86_64` process, started detached (its
 * own session and process group, not Engine's child in any way that matters) so that it
 * survives Engine being killed; everything the driver needs to find it again lives in the VM's
 * runDir: the QMP socket, the pidfile QEMU writes, and vm.json.
 *
 * How a VM ends decides its state: a SHUTDOWN event from the guest (it powered off) or a stop
 * Engine asked for gives `stopped`; a process that went away without either gives `crashed`.
 */

export interface QemuDriverOptions {
  /** Default `qemu-system-x86_64` from PATH. */
  qemuBinary?: string;
  /** `kvm`, `tcg`, or `auto` (probe); default: BULKHEAD_ACCEL, else `auto`. */
  accel?: Accelerator | 'auto';
  /** Hard deadline of the KVM probe; default 3 s. */
  probeTimeoutMs?: number;
  /** How long `start` waits for QMP to answer; default 15 s. */
  startTimeoutMs?: number;
  /** Clock for event times; default Date.now. */
  now?: () => number;
  /** Environment consulted for BULKHEAD_ACCEL; default process.env. */
  env?: NodeJS.ProcessEnv;
  /**
   * Only look at VMs another process (their Engine) owns: `attach` never takes the VM's QMP
   * connection, which QEMU gives to one client at a time, so the owner keeps it across its own
   * restarts; `stop` falls back to signals and `start` is refused.
   */
  observeOnly?: boolean;
  /**
   * Where a VM with a `nat` network runs: default, a network namespace of its own behind the
   * host's isolation rules (netns.ts; needs root, `ip` and `nft`). `null` leaves nat VMs in
   * the host's namespace, where they reach the host's services: only for tests of other things.
   */
  sandbox?: NetworkSandbox | null;
}

interface VmEntry {
  name: string;
  runDir: string;
  files: RunFiles;
  state: VmRunState;
  pid?: number;
  accelerator?: Accelerator;
  qmp?: QmpClient;
  child?: ChildProcess;
  stopRequested: boolean;
  quitSent: boolean;
  killed: boolean;
  shutdown?: { guest: boolean; reason: string };
  lastExit?: string;
  exited: Promise<void>;
  markExited: () => void;
  hasExited: boolean;
  /**
   * Only watching: attached to a VM whose QMP another client (its Engine) holds. Such an
   * entry never cleans the run directory when the process ends: by the time it notices, the
   * owner may have started the next QEMU there, whose sockets and pidfile it would delete.
   */
  isWatchOnly?: boolean;
}

const RELAY = fileURLToPath(new URL('./relay.ts', import.meta.url));

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** Quotes for the command parser of QEMU's user network (GLib's g_shell_parse_argv). */
function doubleQuote(s: string): string {
  return `"${s.replace(/["\\$`]/g, '\\$&')}"`;
}

export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  readonly #options: QemuDriverOptions;
  readonly #vms = new Map<string, VmEntry>();
  /** VMs whose start is in progress. */
  readonly #starting = new Set<string>();
  readonly #listeners = new Set<(event: VmEvent) => void>();
  #probe: Promise<KvmProbeResult> | null = null;
  readonly #sandbox: NetworkSandbox | null;

  constructor(options: QemuDriverOptions = {}) {
    this.#options = options;
    this.#sandbox = options.sandbox === undefined ? createNetnsSandbox() : options.sandbox;
  }

  /**
   * Removes the network namespaces of nat VMs no process runs in any more (an Engine or a PC
   * that went down without stopping them): call once when Engine starts.
   */
  async removeStaleSandboxes(): Promise<string[]> {
    if (!this.#sandbox || this.#options.observeOnly) return [];
    return this.#sandbox.removeStale();
  }

  get #now(): () => number {
    return this.#options.now ?? Date.now;
  }

  /**
   * The accelerator VMs get: the option, else BULKHEAD_ACCEL, else the KVM probe's answer
   * (probed once per driver, in a child process with a hard deadline).
   */
  accelerator(): Promise<KvmProbeResult> {
    if (!this.#probe) {
      const accel = this.#options.accel;
      const env = { ...(this.#options.env ?? process.env) };
      if (accel !== undefined) env['BULKHEAD_ACCEL'] = accel;
      this.#probe = chooseAccelerator(env, {
        qemuBinary: this.#binary,
        timeoutMs: this.#options.probeTimeoutMs ?? 3000,
      }).catch((err: unknown) => {
        this.#probe = null;
        throw new BulkheadError(ErrorCodes.CONFIG_INVALID, (err as Error).message, { cause: err });
      });
    }
    return this.#probe;
  }

  get #binary(): string {
    return this.#options.qemuBinary ?? 'qemu-system-x86_64';
  }

  async start(spec: VmSpec): Promise<VmStatus> {
    if (this.#options.observeOnly) {
      throw new BulkheadError(ErrorCodes.INTERNAL, `an observing driver cannot start ${spec.name}`);
    }
    const known = this.#vms.get(spec.name);
    if ((known && isRunning(known.state)) || this.#starting.has(spec.name)) {
      throw new BulkheadError(ErrorCodes.IN_USE, `VM ${spec.name} already runs`);
    }
    // Claimed before the first await: two starts of one VM at once would both clean the run
    // directory and spawn two QEMUs on the same disks.
    this.#starting.add(spec.name);
    try {
      // The previous QEMU's clean-up ends before this one's files appear (bounded: an entry
      // whose QEMU never spawned has nothing to clean).
      if (known?.hasExited) await waitFor(known, 5000);
      return await this.#start(spec);
    } finally {
      this.#starting.delete(spec.name);
    }
  }

  async #start(spec: VmSpec): Promise<VmStatus> {
    const files = runFiles(spec.runDir);
    const stalePid = await readPid(files.pidfile);
    if (stalePid !== undefined && (await isQemuOf(stalePid, files))) {
      throw new BulkheadError(
        ErrorCodes.IN_USE,
        `VM ${spec.name} already runs (QEMU pid ${stalePid}); attach to it instead`,
      );
    }
    const { accelerator } = await this.accelerator();
    const consoleLog = spec.consoleDir
      ? join(spec.consoleDir, consoleLogName(this.#now(), spec.version))
      : undefined;
    const command = buildQemuArgs(spec, {
      accelerator,
      ...(consoleLog ? { consoleLog } : {}),
      // Through sh so the relay's stderr is not the guest's connection (slirp hands the same
      // socket as stdin, stdout and stderr, and Node does not relay over it then).
      relayCommand: (host, port) =>
        `/bin/sh -c ${doubleQuote(
          `exec ${[process.execPath, RELAY, host, String(port)].map(shellQuote).join(' ')} 2>/dev/null`,
        )}`,
    });
    // The run directory holds the VM's screen (VNC), monitors and guest agent: Engine's alone.
    await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
    await chmod(spec.runDir, 0o700);
    await cleanRunDir(files, spec.runDir);
    // The previous boot's firmware messages must not be taken for this one's.
    await rm(files.firmwareLog, { force: true });
    if (consoleLog) {
      await mkdir(dirname(consoleLog), { recursive: true, mode: 0o700 });
      // Room for this boot's log among the last CONSOLES_KEPT.
      await pruneConsoleLogs(dirname(consoleLog), CONSOLES_KEPT - 1);
    }
    // The firmware's variable store and the TPM exist before QEMU opens them (startSwtpm
    // stops what it started when it fails).
    if (spec.machine) await ensureVarsStore(spec.machine);
    await startSwtpm(spec, files);
    // A nat VM's QEMU runs in its own network namespace (it and its slirp reach only the
    // outside through the uplink); made before anything that must be undone on failure.
    let prefix: string[] = [];
    if (spec.policy.network === 'nat' && this.#sandbox) {
      try {
        prefix = await this.#sandbox.enter(spec.runDir);
      } catch (err) {
        await stopSwtpm(files);
        throw err;
      }
    }
    const entry = newEntry(spec.name, spec.runDir, files);
    entry.state = 'starting';
    entry.accelerator = accelerator;
    this.#vms.set(spec.name, entry);

    let spawnError: Error | undefined;
    const fifos: SecretFifo[] = [];
    try {
      // Keys reach QEMU through FIFOs: it reads each while opening the disks, before QMP
      // answers; `close` below removes them (and releases any QEMU never read).
      for (const s of command.secrets) fifos.push(await secretFifo(s.path, s.content));
      const log = openSync(files.log, 'a', 0o600);
      let child: ChildProcess;
      try {
        const argv = [...prefix, this.#binary, ...command.args];
        child = spawn(argv[0]!, argv.slice(1), {
          detached: true,
          stdio: ['ignore', log, log],
          cwd: spec.runDir,
        });
      } finally {
        closeSync(log);
      }
      child.on('error', (err) => {
        spawnError = err;
        this.#onExit(entry, { error: err });
      });
      child.on('exit', (code, signal) => this.#onExit(entry, { code, signal }));
      child.unref();
      entry.child = child;
      if (child.pid !== undefined) entry.pid = child.pid;

      const deadline = Date.now() + (this.#options.startTimeoutMs ?? 15_000);
      while (!entry.qmp) {
        if (entry.hasExited) break;
        try {
          entry.qmp = await QmpClient.connect(files.qmp, {
            timeoutMs: Math.max(100, Math.min(2000, deadline - Date.now())),
          });
        } catch (err) {
          if (Date.now() >= deadline) throw err;
          await sleep(50);
        }
      }
      if (!entry.qmp) {
        if (spawnError && errnoCode(spawnError) === 'ENOENT') {
          throw new BulkheadError(ErrorCodes.TOOL_MISSING, `${this.#binary} was not found`, {
            hint: 'install the Debian package qemu-system-x86',
            cause: spawnError,
          });
        }
        throw new BulkheadError(
          ErrorCodes.INTERNAL,
          `QEMU refused VM ${spec.name}: ${await logTail(files.log)}`,
          { cause: spawnError },
        );
      }
      this.#wire(entry, entry.qmp);
      this.#guardLogs(entry, [consoleLog ?? files.console, files.firmwareLog]);
      await writeFile(
        files.meta,
        `${JSON.stringify({ name: spec.name, accelerator, pid: entry.pid, startedAt: this.#now() })}\n`,
      );
      if (!entry.hasExited) entry.state = 'running';
      return this.#statusOf(entry);
    } catch (err) {
      if (entry.pid !== undefined && !entry.hasExited) {
        entry.stopRequested = true;
        entry.killed = true;
        try {
          process.kill(entry.pid, 'SIGKILL');
        } catch {
          // already gone
        }
        await waitFor(entry, 5000);
      }
      await stopSwtpm(files);
      await this.#sandbox?.leave(spec.runDir);
      if (err instanceof BulkheadError) throw err;
      throw new BulkheadError(
        ErrorCodes.INTERNAL,
        `QEMU did not come up for VM ${spec.name}: ${(err as Error).message}; ${await logTail(files.log)}`,
        { cause: err, retryable: true },
      );
    } finally {
      for (const fifo of fifos) await fifo.close();
    }
  }

  async attach(name: string, runDir: string): Promise<VmStatus> {
    const known = this.#vms.get(name);
    if (known) this.#checkWatched(known);
    if (known && isRunning(known.state)) return this.#statusOf(known);
    const files = runFiles(runDir);
    const pid = await readPid(files.pidfile);
    if (pid === undefined || !(await isQemuOf(pid, files))) {
      // An observer leaves the files to their owner, which may be starting the next QEMU.
      if (!this.#options.observeOnly) {
        await cleanRunDir(files, runDir);
        await this.#sandbox?.leave(runDir);
      }
      this.#vms.delete(name);
      return { name, state: 'stopped' };
    }
    const entry = newEntry(name, runDir, files);
    entry.state = 'running';
    entry.pid = pid;
    this.#vms.set(name, entry);
    const meta = await readMeta(files.meta);
    if (meta?.accelerator) entry.accelerator = meta.accelerator;
    try {
      if (this.#options.observeOnly) throw new Error('observing only');
      const qmp = await QmpClient.connect(files.qmp, { timeoutMs: 5000 });
      entry.qmp = qmp;
      this.#wire(entry, qmp);
      this.#guardLogs(entry, await guestLogsOf(pid));
      if (!entry.accelerator) {
        const kvm = (await qmp.execute('query-kvm')) as { enabled: boolean };
        entry.accelerator = kvm.enabled ? 'kvm' : 'tcg';
      }
    } catch {
      // Another client holds QMP (or QEMU is wedged), or this driver only observes: watch the
      // process instead; stop falls back to signals.
      entry.isWatchOnly = true;
      this.#watchPid(entry);
    }
    // Secrets left by an Engine killed during a start.
    await removeSecrets(runDir);
    return this.#statusOf(entry);
  }

  async stop(name: string, options: { timeoutMs?: number; force?: boolean } = {}) {
    const entry = this.#vms.get(name);
    if (!entry || !isRunning(entry.state) || entry.pid === undefined) return this.status(name);
    const timeoutMs = options.timeoutMs ?? 30_000;
    entry.stopRequested = true;
    entry.state = 'shutting-down';
    const qmp = entry.qmp && !entry.qmp.isClosed ? entry.qmp : undefined;
    if (!options.force) {
      if (qmp) {
        // An ACPI power button press; a guest without ACPI handling ignores it.
        await qmp.execute('system_powerdown', undefined, 5000).catch(() => {});
      } else {
        // Without QMP, SIGTERM makes QEMU quit (the guest is not asked).
        signal(entry.pid, 'SIGTERM');
      }
      if (await waitFor(entry, timeoutMs)) return this.#statusOf(entry);
    }
    if (qmp && !qmp.isClosed) {
      entry.quitSent = true;
      await qmp.execute('quit', undefined, 2000).catch(() => {});
      if (await waitFor(entry, 5000)) return this.#statusOf(entry);
    }
    entry.killed = true;
    signal(entry.pid, 'SIGKILL');
    if (!(await waitFor(entry, 10_000))) {
      throw new BulkheadError(
        ErrorCodes.INTERNAL,
        `QEMU (pid ${entry.pid}) of VM ${name} did not exit after SIGKILL`,
        { retryable: true },
      );
    }
    return this.#statusOf(entry);
  }

  async status(name: string): Promise<VmStatus> {
    const entry = this.#vms.get(name);
    if (!entry) return { name, state: 'stopped' };
    this.#checkWatched(entry);
    return this.#statusOf(entry);
  }

  /**
   * A watched process is polled only every 100 ms; a status asked for in between (right after
   * the owner stopped the VM and said so) looks at the process now.
   */
  #checkWatched(entry: VmEntry): void {
    if (entry.isWatchOnly && !entry.hasExited && entry.pid !== undefined && !isAlive(entry.pid)) {
      this.#onExit(entry, {});
    }
  }

  onEvent(listener: (event: VmEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Lets go of every VM without stopping it (Engine shutting down): closes the QMP connections
   * so a later Engine can `attach`.
   */
  close(): void {
    for (const entry of this.#vms.values()) {
      entry.qmp?.close();
      entry.child?.removeAllListeners('exit');
    }
    this.#vms.clear();
  }

  #statusOf(entry: VmEntry): VmStatus {
    const status: VmStatus = { name: entry.name, state: entry.state };
    if (entry.lastExit !== undefined) status.lastExit = entry.lastExit;
    if (isRunning(entry.state)) {
      if (entry.pid !== undefined) status.pid = entry.pid;
      if (entry.accelerator !== undefined) status.accelerator = entry.accelerator;
      status.guestAgentSocket = entry.files.guestAgent;
      status.vncSocket = entry.files.vnc;
    }
    return status;
  }

  #emit(event: VmEvent): void {
    for (const l of this.#listeners) {
      try {
        l(event);
      } catch {
        // a listener's fault is its own
      }
    }
  }

  #wire(entry: VmEntry, qmp: QmpClient): void {
    qmp.onEvent((e: QmpEvent) => {
      if (e.event === 'SHUTDOWN') {
        const data = e.data ?? {};
        entry.shutdown = { guest: data['guest'] === true, reason: String(data['reason'] ?? '') };
        if (isRunning(entry.state)) entry.state = 'shutting-down';
      }
      const event: VmEvent = { name: entry.name, event: e.event, at: this.#now() };
      if (e.data) event.detail = e.data;
      this.#emit(event);
    });
    qmp.onClose(() => {
      // The process is ours: its exit event says how it ended. Otherwise watch the pid.
      if (!entry.child && !entry.hasExited) this.#watchPid(entry);
    });
  }

  /**
   * Keeps the guest's logs (serial console, firmware debug port) under GUEST_LOG_CAP while the
   * VM runs: a guest that writes without end must not fill the PC's disk.
   */
  #guardLogs(entry: VmEntry, logs: string[]): void {
    const timer = setInterval(() => {
      if (entry.hasExited) clearInterval(timer);
      else for (const path of logs) void capGuestLog(path).catch(() => {});
    }, LOG_GUARD_MS);
    timer.unref();
  }

  #watchPid(entry: VmEntry): void {
    const pid = entry.pid;
    if (pid === undefined) return;
    const timer = setInterval(() => {
      if (entry.hasExited) clearInterval(timer);
      else if (!isAlive(pid)) {
        clearInterval(timer);
        this.#onExit(entry, {});
      }
    }, 100);
    timer.unref();
  }

  #onExit(
    entry: VmEntry,
    how: { code?: number | null; signal?: NodeJS.Signals | null; error?: Error },
  ): void {
    if (entry.hasExited) return;
    entry.hasExited = true;
    entry.qmp?.close();
    const reason = entry.shutdown?.reason;
    let state: VmRunState = 'stopped';
    if (entry.shutdown?.guest) entry.lastExit = 'guest-shutdown';
    else if (entry.stopRequested) {
      entry.lastExit = entry.killed ? 'killed' : entry.quitSent ? 'quit' : (reason ?? 'stopped');
      if (entry.lastExit === 'host-qmp-quit') entry.lastExit = 'quit';
    } else if (reason) entry.lastExit = reason === 'host-qmp-quit' ? 'quit' : reason;
    else {
      state = 'crashed';
      entry.lastExit = how.error
        ? `could not start: ${how.error.message}`
        : how.signal
          ? `killed by ${how.signal}`
          : typeof how.code === 'number'
            ? `exit code ${how.code}`
            : 'exited';
    }
    entry.state = state;
    const detail: Record<string, unknown> = { state, lastExit: entry.lastExit };
    if (typeof how.code === 'number') detail['code'] = how.code;
    if (how.signal) detail['signal'] = how.signal;
    this.#emit({ name: entry.name, event: 'exited', at: this.#now(), detail });
    if (entry.isWatchOnly) entry.markExited();
    else void this.#cleanAfter(entry).finally(() => entry.markExited());
  }

  /**
   * Cleans the run directory of an exited VM. A QEMU this driver attached to (not its child)
   * may have been followed by another Engine's; its files are cleaned only while the pidfile
   * still names the dead process.
   */
  async #cleanAfter(entry: VmEntry): Promise<void> {
    if (!entry.child && (await readPid(entry.files.pidfile)) !== entry.pid) {
      // QEMU removed its pidfile as it quit, or another QEMU runs there now: its network
      // namespace goes only if no process is left in it (one that runs on keeps it).
      await this.#sandbox?.removeStale().catch(() => {});
      return;
    }
    await cleanRunDir(entry.files, entry.runDir);
    await this.#sandbox?.leave(entry.runDir);
  }
}

/** How often a running VM's logs are measured against GUEST_LOG_CAP. */
const LOG_GUARD_MS = 2000;

/**
 * The log files a running QEMU writes for its guest (the `file` chardevs `console` and `fwlog`
 * of its command line, qemu-args.ts), for an Engine that attaches after a restart.
 */
export async function guestLogsOf(pid: number): Promise<string[]> {
  let args: string[];
  try {
    args = (await readFile(`/proc/${pid}/cmdline`, 'latin1')).split('\0');
  } catch {
    return [];
  }
  const logs: string[] = [];
  for (const arg of args) {
    const m = /^file,id=(?:console|fwlog),path=((?:[^,]|,,)*)/.exec(arg);
    if (m) logs.push(m[1]!.replace(/,,/g, ','));
  }
  return logs;
}

function newEntry(name: string, runDir: string, files: RunFiles): VmEntry {
  let markExited = () => {};
  const exited = new Promise<void>((resolve) => (markExited = resolve));
  return {
    name,
    runDir,
    files,
    state: 'stopped',
    stopRequested: false,
    quitSent: false,
    killed: false,
    exited,
    markExited,
    hasExited: false,
  };
}

function isRunning(state: VmRunState): boolean {
  return state === 'starting' || state === 'running' || state === 'shutting-down';
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** True once the VM's process has exited (and the driver noticed), false after `ms`. */
async function waitFor(entry: VmEntry, ms: number): Promise<boolean> {
  const ac = new AbortController();
  try {
    return await Promise.race([
      entry.exited.then(() => true),
      sleep(ms, false, { signal: ac.signal }).catch(() => false),
    ]);
  } finally {
    ac.abort();
  }
}

async function readPid(path: string): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(path, 'utf8')).trim());
    return Number.isInteger(pid) && pid > 1 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `pid` is alive and is the QEMU of this run dir (pids get reused). */
async function isQemuOf(pid: number, files: RunFiles): Promise<boolean> {
  if (!isAlive(pid)) return false;
  try {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(files.qmp);
  } catch {
    return false;
  }
}

async function readMeta(path: string): Promise<{ accelerator?: Accelerator } | undefined> {
  try {
    const meta = JSON.parse(await readFile(path, 'utf8')) as { accelerator?: unknown };
    return meta.accelerator === 'kvm' || meta.accelerator === 'tcg'
      ? { accelerator: meta.accelerator }
      : {};
  } catch {
    return undefined;
  }
}

/** Removes what a VM that no longer runs left behind: its swtpm, sockets, pidfile, secrets. */
async function cleanRunDir(files: RunFiles, runDir: string): Promise<void> {
  await stopSwtpm(files);
  for (const path of [files.qmp, files.screen, files.guestAgent, files.vnc, files.pidfile]) {
    await rm(path, { force: true });
  }
  await removeSecrets(runDir);
}

async function removeSecrets(runDir: string): Promise<void> {
  let names: string[] = [];
  try {
    names = await readdir(runDir);
  } catch {
    return;
  }
  for (const n of names.filter((n) => n.endsWith('.secret'))) {
    await rm(join(runDir, n), { force: true });
  }
}

async function logTail(path: string): Promise<string> {
  try {
    const text = (await readFile(path, 'utf8')).trim();
    const lines = text.split('\n').filter((l) => !l.includes('do you want to install'));
    return lines.slice(-5).join(' | ') || 'QEMU exited without a message';
  } catch {
    return 'QEMU exited without a message';
  }
}

/** The QEMU driver (see QemuDriverOptions). */
export function createQemuDriver(options: QemuDriverOptions = {}): QemuDriver {
  return new QemuDriver(options);
}
