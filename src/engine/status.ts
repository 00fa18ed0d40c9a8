import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  ErrorCodes,
  LocalUpdateOutcomeSchema,
  type DesiredVm,
  type LocalUpdateOutcome,
} from '../protocol/index.ts';
import { systemClock } from './clock.ts';
import { isAlive } from './hypervisor/alive.ts';
import { leaseStatus, type LeaseState } from './lease.ts';
import { listConsoleLogs } from './hypervisor/consoles.ts';
import { readQueueDepth } from './queue.ts';
import { engineFiles, initialConnectivity, type Connectivity } from './state.ts';
import { timeMarkFile } from './time-mark.ts';
import { releaseLabel, releaseName } from './update/executors.ts';
import type { Transaction } from './update/machine.ts';
import { TransactionFiles, type VmRecord } from './update/records.ts';
import {
  releaseKey,
  releaseVolumes,
  ReleaseSchema,
  volumeLayout,
  type Release,
} from './volumes/index.ts';

/** What `bulkhead engine status` shows; read from the files alone. */
export interface EngineStatus {
  dataDir: string;
  enrolled: boolean;
  deviceId: string | null;
  centerUrl: string | null;
  connectivity: Connectivity;
  /** When Center killed this device, once Engine verified the notice; then no VM starts. */
  killedAt: number | null;
  desired: {
    revision: number;
    generatedAt: number;
    expiresAt: number;
    deviceState: string;
    verifiedAt: number;
    pendingCommands: number;
  } | null;
  vms: {
    name: string;
    /** `personal` for the user's own VM, `work` for every VM the organisation manages. */
    kind: 'work' | 'personal';
    /** What it runs, `image@version`; null before its first install. */
    currentVersion: string | null;
    currentVersionId: string | null;
    previousVersionId: string | null;
    desiredVersionId: string | null;
    transaction: string;
    badVersions: string[];
    lastError: string | null;
    leaseExpiresAt: number | null;
    /**
     * Where its lease stands by Engine's record of time (time-mark.ts): `none` (no lease),
     * `valid`, `warning` (in the window before it runs out) or `expired`.
     */
    lease: LeaseState;
    /** Where each boot's serial console log is kept, and the logs there, oldest first. */
    consoleDir: string;
    consoleLogs: string[];
    /** What the VM is doing, in one sentence naming versions as `image@version`. */
    summary: string;
    activity: VmActivity;
    /** A staged update waiting for its switch window (the VM off, the user, the deadline). */
    staged: { to: string; since: number } | null;
    /** How the last update that switched it ended. */
    lastOutcome: LocalUpdateOutcome | null;
  }[];
  queueDepth: number;
  /** The earliest lease expiry among the desired VMs: past it, they do not start offline. */
  leaseExpiresAt: number | null;
}

/**
 * Reads Engine's state from its data directory without changing anything, so it works while
 * `engine run` runs (every file is replaced atomically, so a read sees one whole version).
 */
export async function readEngineStatus(dataDir: string): Promise<EngineStatus> {
  const files = engineFiles(dataDir);
  const readOnly = { repair: false };
  const [identity, desired, killed, sync, engineState, queueDepth, mark] = await Promise.all([
    files.identity.read(readOnly),
    files.desiredState.read(readOnly),
    files.killNotice.read(readOnly),
    files.sync.read(readOnly),
    files.engineState.read(readOnly),
    readQueueDepth(files.queueDir),
    // An unreadable mark counts every lease as expired, as engine run does.
    timeMarkFile(dataDir)
      .read(readOnly)
      .then((m) => m?.mark ?? 0)
      .catch(() => Number.POSITIVE_INFINITY),
  ]);
  const leaseNow = Math.max(systemClock.now(), mark);
  const state = desired?.document.state;
  const desiredVms = new Map((state?.vms ?? []).map((vm) => [vm.name, vm]));
  const names = [
    ...new Set([...(engineState?.vms ?? []).map((v) => v.name), ...desiredVms.keys()]),
  ];
  const transactions = new TransactionFiles(dataDir, systemClock);
  const vms = await Promise.all(
    names.map(async (name) => {
      const { consoleDir, runDir } = volumeLayout(dataDir, name);
      const local = engineState?.vms.find((v) => v.name === name);
      const want = desiredVms.get(name);
      const current = ReleaseSchema.safeParse((local as VmRecord | undefined)?.current);
      // An unreadable transaction file is shown as none: status never repairs or throws.
      const transaction = await Promise.resolve()
        .then(() => transactions.file(name).read(readOnly))
        .catch(() => undefined);
      const { summary, activity } = describeVm({
        name,
        record: {
          currentVersionId: local?.currentVersionId ?? null,
          current: current.success ? current.data : null,
          badVersions: local?.badVersions ?? [],
          lastError: local?.lastError ?? null,
          transaction: local?.transaction ?? { state: 'idle', targetVersionId: null },
        },
        transaction,
        desired: want,
        deviceState: state?.device.state ?? null,
        killed: killed !== undefined,
        run: await runStateOf(runDir),
      });
      const outcome = LocalUpdateOutcomeSchema.safeParse(
        (local as VmRecord | undefined)?.lastOutcome,
      );
      return {
        name,
        kind: want?.personal ? ('personal' as const) : ('work' as const),
        currentVersion: current.success && current.data ? releaseName(current.data) : null,
        currentVersionId: local?.currentVersionId ?? null,
        previousVersionId: local?.previousVersionId ?? null,
        desiredVersionId: want?.system.versionId ?? null,
        transaction: local?.transaction.state ?? 'idle',
        badVersions: local?.badVersions ?? [],
        lastError: local?.lastError ? `${local.lastError.code}: ${local.lastError.message}` : null,
        leaseExpiresAt: want?.lease?.expiresAt ?? null,
        lease: want ? leaseStatus(want, leaseNow) : ('none' as const),
        consoleDir,
        consoleLogs: await listConsoleLogs(consoleDir),
        summary,
        activity,
        staged:
          transaction?.state === 'staged' && activity === 'updating'
            ? { to: releaseName(transaction.to), since: transaction.since }
            : null,
        lastOutcome: outcome.success ? outcome.data : null,
      };
    }),
  );
  const leases = vms.map((v) => v.leaseExpiresAt).filter((x): x is number => x !== null);
  return {
    dataDir,
    enrolled: identity !== undefined,
    deviceId: identity?.deviceId ?? null,
    centerUrl: identity?.centerUrl ?? null,
    connectivity: sync?.connectivity ?? initialConnectivity(),
    killedAt: killed?.notice.notice.killedAt ?? null,
    desired:
      state === undefined || desired === undefined
        ? null
        : {
            revision: state.revision,
            generatedAt: state.generatedAt,
            expiresAt: state.expiresAt,
            deviceState: state.device.state,
            verifiedAt: desired.verifiedAt,
            pendingCommands: state.commands.length,
          },
    vms,
    queueDepth,
    leaseExpiresAt: leases.length === 0 ? null : Math.min(...leases),
  };
}

/** The status as lines for a person. */
export function formatEngineStatus(s: EngineStatus, now: number): string[] {
  const when = (ms: number | null) =>
    ms === null ? 'never' : `${new Date(ms).toISOString()} (${ago(ms, now)})`;
  const lines: string[] = [];
  if (!s.enrolled) {
    lines.push(`Not enrolled (data in ${s.dataDir}).`);
    lines.push('Enrol with: bulkhead engine enroll --center URL --token TOKEN');
    return lines;
  }
  const c = s.connectivity;
  lines.push(`Device      ${s.deviceId}`);
  lines.push(`Center      ${s.centerUrl}`);
  lines.push(
    `Connection  ${c.online ? 'online' : 'offline'}; last contact ${when(c.lastContactAt)}` +
      (c.consecutiveFailures > 0 ? `; ${c.consecutiveFailures} failed attempts` : ''),
  );
  if (c.lastError !== null) lines.push(`Last error  ${c.lastError.code}: ${c.lastError.message}`);
  if (s.killedAt !== null) {
    lines.push(`Killed      by Center at ${when(s.killedAt)}; no VM starts again`);
  }
  lines.push(
    s.desired === null
      ? 'Desired     none yet'
      : `Desired     revision ${s.desired.revision}, device ${s.desired.deviceState}, ` +
          `${s.desired.pendingCommands} pending commands, verified ${when(s.desired.verifiedAt)}`,
  );
  lines.push(
    `Lease       ${s.leaseExpiresAt === null ? 'none' : `until ${when(s.leaseExpiresAt)}`}`,
  );
  lines.push(`Queue       ${s.queueDepth} events waiting`);
  if (s.vms.length === 0) {
    lines.push(
      s.desired === null
        ? 'VMs         none yet: no desired state from Center yet (is `bulkhead engine run` running?)'
        : 'VMs         none: Center assigns this PC no profile',
    );
  }
  for (const vm of s.vms) {
    lines.push(vm.summary);
    lines.push(
      `  lease         ${vm.leaseExpiresAt === null ? 'none' : `${vm.lease === 'expired' ? 'expired' : 'until'} ${when(vm.leaseExpiresAt)}${vm.lease === 'warning' ? ' (runs out soon: go online to renew it)' : ''}`}`,
    );
    const latest = vm.consoleLogs.at(-1);
    lines.push(
      `  console logs  ${vm.consoleDir}` +
        (latest === undefined
          ? ' (none yet)'
          : ` (last ${vm.consoleLogs.length} boots; latest ${latest})`),
    );
  }
  return lines;
}

function ago(ms: number, now: number): string {
  const s = Math.round((now - ms) / 1000);
  const future = s < 0;
  const a = Math.abs(s);
  const text =
    a < 90
      ? `${a} s`
      : a < 5400
        ? `${Math.round(a / 60)} min`
        : a < 172_800
          ? `${Math.round(a / 3600)} h`
          : `${Math.round(a / 86_400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

/** What a VM is doing, as a machine reads it (`--json`'s `activity`). */
export type VmActivity =
  'running' | 'updating' | 'rolled-back' | 'locked' | 'killed' | 'stopped' | 'crashed';

/** Whether the VM's QEMU runs, read from its pidfile: none is stopped, a dead pid crashed. */
export type VmRunState = 'running' | 'stopped' | 'crashed';

/** Everything `describeVm` needs about one VM, all read from Engine's files. */
export interface VmFacts {
  name: string;
  /** The record in `engine-state.json` (its `current` release when it has one). */
  record: Pick<VmRecord, 'currentVersionId' | 'current' | 'badVersions' | 'lastError'> & {
    transaction: { state: string; targetVersionId: string | null };
  };
  /** The persisted update transaction, when one runs. */
  transaction: Transaction | undefined;
  /** What Center wants this VM to run; undefined when the desired state has no such VM. */
  desired: DesiredVm | undefined;
  /** The device's state in the desired state (`locked`: no VM may run). */
  deviceState: string | null;
  /** Center killed this device (a verified kill notice). */
  killed: boolean;
  run: VmRunState;
}

/**
 * One sentence saying what a VM is doing, naming versions as `image@version` (an id not in the
 * records or the desired state falls back to a short id). After a rollback the desired version
 * is marked bad and is shown as refused, never as a target still being moved to.
 */
export function describeVm(f: VmFacts): { activity: VmActivity; summary: string } {
  const names = new Map<string, string>();
  for (const r of [
    f.desired && desiredRelease(f.desired),
    f.transaction?.to,
    f.transaction?.from,
  ]) {
    if (r) names.set(r.system.versionId, releaseName(r));
  }
  const byId = (id: string | null) =>
    id === null ? null : (names.get(id) ?? `version ${id.slice(0, 8)}`);
  const current = f.record.current
    ? releaseName(f.record.current)
    : byId(f.record.currentVersionId);
  const on = current === null ? 'with nothing installed' : `on ${current}`;
  const say = (activity: VmActivity, text: string) => ({
    activity,
    summary: `${f.name}: ${text}`,
  });

  if (f.killed || f.deviceState === 'killed') {
    return say('killed', 'killed — Center killed this PC; no VM starts again');
  }
  if (f.deviceState === 'locked') {
    return say(
      'locked',
      f.run === 'running'
        ? 'locked — stopping until Center unlocks this PC'
        : 'locked — stopped until Center unlocks this PC',
    );
  }
  const tx = f.transaction;
  const desired = f.desired ? desiredRelease(f.desired) : undefined;
  const isBad = desired !== undefined && f.record.badVersions.includes(releaseKey(desired));
  const reason = f.record.lastError?.message ?? tx?.reason ?? 'no reason recorded';
  if (tx && tx.state !== 'rolled-back' && tx.state !== 'failed') {
    return say('updating', `updating to ${releaseName(tx.to)} — ${step(tx)}`);
  }
  if (tx?.state === 'rolled-back' || (tx === undefined && isBad && desired)) {
    const bad = tx ? releaseName(tx.to) : releaseName(desired!);
    const back = tx?.from ? releaseName(tx.from) : current;
    const why = tx?.reason ?? reason;
    return say(
      'rolled-back',
      `rolled back from ${bad} to ${back ?? 'nothing'}: ${why} (${bad} is refused` +
        ` until Center assigns another version)` +
        (f.run === 'running' ? '' : `; the VM is ${f.run}`),
    );
  }
  if (tx?.state === 'failed') {
    return say('updating', `updating to ${releaseName(tx.to)} — failed: ${tx.reason ?? reason}`);
  }
  if (desired && desired.system.versionId !== f.record.currentVersionId) {
    const target = releaseName(desired);
    return say(
      'updating',
      f.record.lastError
        ? `updating to ${target} — waiting to retry after: ${f.record.lastError.message}`
        : `updating to ${target} — waiting to start`,
    );
  }
  if (f.run === 'running') return say('running', `running and healthy ${on}`);
  if (f.run === 'crashed') {
    return say('crashed', `crashed ${on} (its QEMU is gone; see its console log)`);
  }
  // A VM whose start is refused as configured (Secure Boot with a direct kernel, …) says why.
  const refused = f.record.lastError?.code === ErrorCodes.VALIDATION ? f.record.lastError : null;
  return say('stopped', `stopped ${on}${refused ? ` — not started: ${refused.message}` : ''}`);
}

/** The step of a running transaction, in words. */
function step(tx: Transaction): string {
  switch (tx.state) {
    case 'downloading':
      return `downloading (${megabytes(releaseVolumes(tx.to).reduce((n, v) => n + v.size, 0))})`;
    case 'staged':
      return 'staged, switches when the VM is next off, when the user accepts it (bulkhead engine accept) or at the switch deadline';
    case 'switching':
      return 'switching';
    case 'booting':
      return `booting${tx.attempt > 1 ? ` (attempt ${tx.attempt})` : ''}`;
    case 'health-check':
      return 'checking health';
    case 'committed':
      return 'healthy, committing';
    case 'rolling-back':
      return `rolling back to ${releaseLabel(tx.from) ?? 'nothing'}: ${tx.reason ?? 'failed'}`;
    default:
      return tx.state;
  }
}

function desiredRelease(vm: DesiredVm): Release {
  return { system: vm.system, apps: vm.apps };
}

function megabytes(bytes: number): string {
  return `${(bytes / 1_000_000).toFixed(1)} MB`;
}

/** Whether a VM's QEMU runs: its pidfile in the run dir, and whether that pid is alive. */
export async function runStateOf(runDir: string): Promise<VmRunState> {
  let text: string;
  try {
    text = await readFile(join(runDir, 'qemu.pid'), 'utf8');
  } catch {
    return 'stopped';
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1) return 'stopped';
  return isAlive(pid) ? 'running' : 'crashed';
}
