import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  FleetIdSchema,
  isBulkheadError,
  type ApiClient,
  type DeviceDetail,
  type DeviceListItem,
  type VersionName,
  type VmVersions,
} from '../protocol/index.ts';
import type { CommandContext } from './command.ts';
import { printTable, when } from './remote.ts';

/*
 * Devices as a person names and reads them: a device given by its name or its id, and one
 * device shown in sections (identity, inventory, profiles, lease, events, pending commands)
 * with names and versions, never the ids behind them.
 */

/** The most devices one name is looked up among (pages of the name-prefix filter). */
const MAX_NAME_MATCHES = 2000;

/**
 * The device `ref` names: its id, or its name (exact, else the only one equal ignoring case).
 * Gives the detail too when it fetched it on the way.
 * @throws BulkheadError `ERR_NOT_FOUND` ("no device REF") when none has that id or name;
 *   `ERR_USAGE` listing the candidates' ids when several devices share the name.
 */
export async function resolveDevice(
  api: ApiClient,
  ref: string,
): Promise<{ id: string; detail?: DeviceDetail }> {
  if (FleetIdSchema.safeParse(ref).success) {
    try {
      return { id: ref, detail: await api.call(endpoints.getDevice, { params: { id: ref } }) };
    } catch (err) {
      // A name may look like an id; look it up as a name before saying there is none.
      if (!isBulkheadError(err, ErrorCodes.NOT_FOUND)) throw err;
    }
  }
  const matches = await devicesNamed(api, ref);
  const exact = matches.filter((d) => d.name === ref);
  const found =
    exact.length > 0 ? exact : matches.filter((d) => d.name.toLowerCase() === ref.toLowerCase());
  if (found.length === 0) throw noDevice(ref);
  if (found.length > 1) {
    const candidates = found
      .map((d) => `${d.id} (${d.group.name}, ${d.state}, last seen ${when(d.lastContactAt)})`)
      .join('; ');
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `${found.length} devices are named "${ref}": ${candidates}`,
      { hint: 'give the id of the one you mean' },
    );
  }
  return { id: found[0]!.id };
}

function noDevice(ref: string): BulkheadError {
  return new BulkheadError(ErrorCodes.NOT_FOUND, `no device ${ref}`, {
    hint: 'give a device name or id from `bulkhead devices list`',
  });
}

/** Devices whose name starts with `name` (ignoring case), following the pages. */
async function devicesNamed(api: ApiClient, name: string): Promise<DeviceListItem[]> {
  // Center takes up to 200 characters of printable text as a prefix; nothing else can match.
  if (name.length === 0 || name.length > 200) return [];
  const found: DeviceListItem[] = [];
  let cursor: string | undefined;
  try {
    do {
      const page = await api.call(endpoints.listDevices, {
        query: { q: name, limit: 500, cursor },
      });
      found.push(...page.devices);
      cursor = page.next ?? undefined;
    } while (cursor !== undefined && found.length < MAX_NAME_MATCHES);
  } catch (err) {
    // A name Center's filter refuses (control characters, say) is a name no device has.
    if (isBulkheadError(err, ErrorCodes.VALIDATION)) return [];
    throw err;
  }
  return found;
}

/**
 * Runs `call` against the device `ref` resolved: a device deleted or renamed meanwhile, which
 * Center answers with 404 for the id, is still named as the user typed it.
 */
export async function onDevice<T>(
  api: ApiClient,
  ref: string,
  call: (id: string) => Promise<T>,
): Promise<T> {
  const { id } = await resolveDevice(api, ref);
  return asTyped(ref, () => call(id));
}

/** Runs `call`, which asks Center about the device `ref`; its 404 names `ref`. */
export async function asTyped<T>(ref: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.NOT_FOUND) && /\bdevice\b/.test(err.message)) {
      throw noDevice(ref);
    }
    throw err;
  }
}

/**
 * Runs `call`; a validation error Center names by a field of the request (`body.name: …`) becomes
 * a usage error naming the flag that field came from (`--name: …`), exit 2.
 */
export async function withFlags<T>(
  fields: Record<string, string>,
  call: () => Promise<T>,
): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.VALIDATION)) {
      for (const [field, flag] of Object.entries(fields)) {
        if (err.message === field || err.message.startsWith(`${field}:`)) {
          throw new BulkheadError(
            ErrorCodes.USAGE,
            `${flag}${err.message.slice(field.length)}`,
            err.hint === undefined ? { cause: err } : { cause: err, hint: err.hint },
          );
        }
      }
    }
    throw err;
  }
}

export function versionName(v: VersionName | null | undefined): string {
  return v ? `${v.image}@${v.version}` : '-';
}

function vmVersions(v: VmVersions | null): string {
  if (v === null) return 'not reported yet';
  if (v.system === null && v.apps.length === 0) return 'none';
  return [versionName(v.system), ...v.apps.map((a) => `app ${versionName(a)}`)].join(', ');
}

/** `bytes` in binary units, one decimal: `15.6 GiB`. */
export function sizeText(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let n = bytes;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

/** How long ago `ms` was, roughly: `3 min ago`, `2 d ago`. */
export function ago(ms: number, nowMs = Date.now()): string {
  const s = Math.max(0, Math.round((nowMs - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}

type Fields = Record<string, unknown>;

function str(data: Fields, key: string): string | undefined {
  const v = data[key];
  return typeof v === 'string' ? v : undefined;
}

/** What an event says, as columns of the events table. */
function describeEvent(
  type: string,
  data: Fields,
  names: Record<string, string>,
): { event: string; versions: string; reason: string } {
  const named = (id: string | undefined) => (id === undefined ? '-' : (names[id] ?? 'unknown'));
  const release =
    str(data, 'image') && str(data, 'version') ? `${data.image}@${data.version}` : '-';
  const reason = str(data, 'reason') ?? '';
  switch (type) {
    case 'download-progress': {
      const done = Number(data['doneBytes']);
      const total = Number(data['totalBytes']);
      const share = total > 0 ? ` (${Math.floor((done / total) * 100)}%)` : '';
      return { event: 'downloading', versions: `${release}${share}`, reason };
    }
    case 'switched': {
      const from = str(data, 'fromVersionId');
      return {
        event: 'switched',
        versions: from === undefined ? release : `${named(from)} → ${release}`,
        reason,
      };
    }
    case 'rolled-back': {
      const running = str(data, 'runningVersionId');
      return {
        event: 'rolled back',
        versions: running === undefined ? release : `${release} → back to ${named(running)}`,
        reason,
      };
    }
    case 'staged':
    case 'healthy':
    case 'failed':
      return { event: type, versions: release, reason };
    case 'vm-state':
      return {
        event: `vm ${str(data, 'state') ?? '?'}`,
        versions: named(str(data, 'versionId')),
        reason,
      };
    case 'lease-expired':
      return {
        event: 'lease expired',
        versions: '-',
        reason: `${str(data, 'vm') ?? '?'}: no contact with Center before its lease ran out${data['wasRunning'] === true ? '; shut down' : ''}`,
      };
    case 'command-result':
      return {
        event: `${str(data, 'kind') ?? 'command'} ${data['ok'] === true ? 'done' : 'failed'}`,
        versions: '-',
        reason: str(data, 'message') ?? '',
      };
    case 'desired-state-refused':
      return {
        event: 'desired state refused',
        versions: '-',
        reason: `${str(data, 'message') ?? ''} (${str(data, 'code') ?? '?'})`,
      };
    default:
      return { event: type, versions: release, reason };
  }
}

/** The hardware a device reported, as labelled lines. */
function inventoryLines(inventory: unknown): [string, string][] {
  if (typeof inventory !== 'object' || inventory === null) return [];
  const inv = inventory as Fields;
  const lines: [string, string][] = [];
  const add = (label: string, value: string | undefined) => {
    if (value !== undefined && value !== '') lines.push([label, value]);
  };
  add('host name', str(inv, 'hostname'));
  add(
    'hardware',
    [str(inv, 'vendor'), str(inv, 'model'), str(inv, 'serial') && `serial ${inv['serial']}`]
      .filter(Boolean)
      .join(' ') || undefined,
  );
  const cpu = inv['cpu'] as Fields | undefined;
  if (cpu) add('CPU', `${str(cpu, 'model') ?? '?'}, ${Number(cpu['cores'])} cores`);
  if (typeof inv['memoryBytes'] === 'number') add('memory', sizeText(inv['memoryBytes']));
  const disks = Array.isArray(inv['disks']) ? (inv['disks'] as Fields[]) : [];
  if (disks.length > 0) {
    add(
      'disks',
      disks
        .map(
          (d) =>
            `${str(d, 'name') ?? '?'} ${sizeText(Number(d['sizeBytes']))}${str(d, 'model') ? ` (${d['model']})` : ''}`,
        )
        .join(', '),
    );
  }
  const firmware = inv['firmware'] as Fields | undefined;
  if (firmware)
    add('firmware', `${str(firmware, 'vendor') ?? '?'} ${str(firmware, 'version') ?? ''}`);
  add('hypervisor', str(inv, 'hypervisor'));
  return lines;
}

function section(ctx: CommandContext, title: string, lines: [string, string][]): void {
  ctx.out('');
  ctx.out(title);
  const width = Math.max(...lines.map(([label]) => label.length));
  for (const [label, value] of lines) ctx.out(`  ${label.padEnd(width)}  ${value}`);
}

function indented(ctx: CommandContext): CommandContext {
  return { ...ctx, out: (line) => ctx.out(`  ${line}`) };
}

/** One device in sections, names and versions throughout; only its own id appears. */
export function printDevice(ctx: CommandContext, d: DeviceDetail, nowMs = Date.now()): void {
  const inventory = (d.inventory ?? {}) as Fields;
  ctx.out(`Device ${d.name}`);
  const identity: [string, string][] = [
    ['id', d.id],
    ['group', d.group.name],
    ['state', d.state],
    ['enrolled', when(d.enrolledAt)],
    ['last seen', `${when(d.lastContactAt)} (${ago(d.lastContactAt, nowMs)})`],
    [
      'Engine',
      str(inventory, 'engineVersion') === undefined
        ? 'version not reported'
        : `${str(inventory, 'engineVersion')} (at enrolment)`,
    ],
  ];
  const width = Math.max(...identity.map(([label]) => label.length));
  for (const [label, value] of identity) ctx.out(`  ${label.padEnd(width)}  ${value}`);

  const hardware = inventoryLines(d.inventory);
  if (hardware.length > 0) section(ctx, 'Inventory', hardware);

  ctx.out('');
  ctx.out('Profiles');
  if (d.profiles.length === 0) {
    ctx.out('  none: assign one with `bulkhead devices assign DEVICE --profile NAME`');
  } else {
    const chosen = (profileId: string) =>
      d.apps
        .filter((a) => a.profileId === profileId)
        .map((a) => a.name)
        .join(', ') || '-';
    printTable(indented(ctx), d.profiles, {
      vm: (p) => p.name,
      runs: (p) => vmVersions(p.current),
      'should run': (p) => vmVersions(p.target),
      status: (p) => {
        if (p.target.system === null) return 'no released version';
        if (p.current === null) return 'waiting for its first report';
        const same =
          p.current.system?.id === p.target.system.id &&
          p.current.apps.map((a) => a.id).join() === p.target.apps.map((a) => a.id).join();
        return same ? 'up to date' : 'behind';
      },
      'optional apps': (p) => chosen(p.id),
    });
  }

  const leases = d.profiles.filter((p) => p.lease !== null);
  if (leases.length > 0) {
    section(
      ctx,
      'Lease',
      leases.map((p) => [
        p.name,
        `${p.lease!.days} days offline; runs out by ${when(p.lease!.expiresAt)} if the PC stays away`,
      ]),
    );
  }

  ctx.out('');
  ctx.out('Recent events');
  if (d.recentEvents.length === 0) {
    ctx.out('  none reported yet');
  } else {
    printTable(
      indented(ctx),
      d.recentEvents.map((e) => ({
        at: e.occurredAt,
        vm: e.vm,
        ...describeEvent(e.type, (e.data ?? {}) as Fields, d.versionNames),
      })),
      {
        time: (e) => when(e.at),
        vm: (e) => e.vm ?? '-',
        event: (e) => e.event,
        versions: (e) => e.versions,
        reason: (e) => e.reason || '-',
      },
    );
  }

  ctx.out('');
  ctx.out('Pending commands');
  if (d.pendingCommands.length === 0) {
    ctx.out('  none');
  } else {
    const profileName = (id: string | null) =>
      id === null ? '-' : (d.profiles.find((p) => p.id === id)?.name ?? 'a removed profile');
    printTable(indented(ctx), d.pendingCommands, {
      issued: (c) => when(c.createdAt),
      command: (c) => c.kind,
      vm: (c) => profileName(c.profileId),
      state: (c) => c.state,
    });
  }
}
