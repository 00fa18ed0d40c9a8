import { listConsoleLogs } from './hypervisor/consoles.ts';
import { readQueueDepth } from './queue.ts';
import { engineFiles, initialConnectivity, type Connectivity } from './state.ts';
import { volumeLayout } from './volumes/index.ts';

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
    currentVersionId: string | null;
    previousVersionId: string | null;
    desiredVersionId: string | null;
    transaction: string;
    badVersions: string[];
    lastError: string | null;
    leaseExpiresAt: number | null;
    /** Where each boot's serial console log is kept, and the logs there, oldest first. */
    consoleDir: string;
    consoleLogs: string[];
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
  const [identity, desired, killed, sync, engineState, queueDepth] = await Promise.all([
    files.identity.read(readOnly),
    files.desiredState.read(readOnly),
    files.killNotice.read(readOnly),
    files.sync.read(readOnly),
    files.engineState.read(readOnly),
    readQueueDepth(files.queueDir),
  ]);
  const state = desired?.document.state;
  const desiredVms = new Map((state?.vms ?? []).map((vm) => [vm.name, vm]));
  const names = [
    ...new Set([...(engineState?.vms ?? []).map((v) => v.name), ...desiredVms.keys()]),
  ];
  const vms = await Promise.all(
    names.map(async (name) => {
      const consoleDir = volumeLayout(dataDir, name).consoleDir;
      const local = engineState?.vms.find((v) => v.name === name);
      const want = desiredVms.get(name);
      return {
        name,
        currentVersionId: local?.currentVersionId ?? null,
        previousVersionId: local?.previousVersionId ?? null,
        desiredVersionId: want?.system.versionId ?? null,
        transaction: local?.transaction.state ?? 'idle',
        badVersions: local?.badVersions ?? [],
        lastError: local?.lastError ? `${local.lastError.code}: ${local.lastError.message}` : null,
        leaseExpiresAt: want?.lease.expiresAt ?? null,
        consoleDir,
        consoleLogs: await listConsoleLogs(consoleDir),
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
  if (s.vms.length === 0) lines.push('VMs         none');
  for (const vm of s.vms) {
    lines.push(
      `VM ${vm.name}: ${vm.currentVersionId ?? 'not installed'}` +
        (vm.desiredVersionId !== null && vm.desiredVersionId !== vm.currentVersionId
          ? ` → ${vm.desiredVersionId}`
          : '') +
        ` [${vm.transaction}]` +
        (vm.badVersions.length > 0 ? ` bad: ${vm.badVersions.join(', ')}` : '') +
        (vm.lastError !== null ? ` error: ${vm.lastError}` : ''),
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
