/*
 * A device event as one sentence a person reads on the console's timeline. The payload is read
 * loosely, field by field: events stored by an older Engine, or unknown types, still get a
 * sentence rather than breaking the page.
 */

type Payload = Record<string, unknown>;

function str(data: Payload, key: string): string | undefined {
  const v = data[key];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function num(data: Payload, key: string): number | undefined {
  const v = data[key];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** Bytes as a person reads them: 512 B, 3.2 MB, 1.9 GB. */
export function bytesText(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** `image@version` of an update event's release (its system volume), from its payload. */
export function releaseOf(data: unknown): string | undefined {
  if (typeof data !== 'object' || data === null) return undefined;
  const image = str(data as Payload, 'image');
  const version = str(data as Payload, 'version');
  return image !== undefined && version !== undefined ? `${image}@${version}` : undefined;
}

/**
 * The sentence of one event. `vm` is the name of the VM (profile) it is about, when known;
 * `versionNames` gives `image@version` by version id (for the versions a payload names by id
 * only).
 */
export function describeEvent(
  type: string,
  data: unknown,
  vm: string | null,
  versionNames: ReadonlyMap<string, string> | Readonly<Record<string, string>>,
): string {
  const d: Payload = typeof data === 'object' && data !== null ? (data as Payload) : {};
  const named = (id: string | undefined): string | undefined =>
    id === undefined
      ? undefined
      : versionNames instanceof Map
        ? versionNames.get(id)
        : (versionNames as Readonly<Record<string, string>>)[id];
  const release = releaseOf(d) ?? named(str(d, 'versionId')) ?? 'a release';
  const theVm = `the ${vm ?? str(d, 'vm') ?? 'unnamed'} VM`;
  switch (type) {
    case 'download-progress': {
      const done = num(d, 'doneBytes');
      const total = num(d, 'totalBytes');
      const share =
        done !== undefined && total !== undefined && total > 0
          ? ` (${bytesText(done)} of ${bytesText(total)})`
          : '';
      return `Downloading ${release} for ${theVm}${share}.`;
    }
    case 'staged': {
      const down = num(d, 'downloadedBytes');
      const reused = num(d, 'reusedBytes');
      const how =
        down !== undefined && reused !== undefined
          ? ` (${bytesText(down)} downloaded, ${bytesText(reused)} reused)`
          : '';
      return `${release} is ready for ${theVm}${how}; it switches at the next restart.`;
    }
    case 'switched': {
      const from = named(str(d, 'fromVersionId'));
      return from === undefined
        ? `${cap(theVm)} switched to ${release}; it boots it next.`
        : `${cap(theVm)} switched from ${from} to ${release}; it boots it next.`;
    }
    case 'healthy':
      return `${cap(theVm)} came up healthy on ${release}.`;
    case 'rolled-back': {
      const running = named(str(d, 'runningVersionId'));
      return running === undefined
        ? `${release} failed on ${theVm}, which rolled back.`
        : `${release} failed on ${theVm}, which rolled back to ${running}.`;
    }
    case 'failed':
      return `Updating ${theVm} to ${release} failed.`;
    case 'vm-state': {
      const state = str(d, 'state') ?? 'changed state';
      const version = named(str(d, 'versionId'));
      return `${cap(theVm)} is ${state}${version === undefined ? '' : ` on ${version}`}.`;
    }
    case 'lease-expired':
      return (
        `The lease of ${theVm} ran out without contact with Center` +
        (d['wasRunning'] === true ? '; it was shut down.' : '.') +
        (d['keyDestroyed'] === true ? ' Its data key was destroyed on the PC.' : '')
      );
    case 'command-result': {
      const kind = str(d, 'kind') ?? 'a';
      const ok = d['ok'] === true;
      const message = str(d, 'message');
      return (
        `The ${kind} command ${ok ? 'was carried out' : 'failed'}` +
        (message === undefined ? '.' : `: ${message}${/[.!?]$/.test(message) ? '' : '.'}`)
      );
    }
    case 'desired-state-refused':
      return `The PC refused a desired state from Center (${str(d, 'code') ?? 'no code'}).`;
    default:
      return `The PC reported ${type}.`;
  }
}

function cap(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}
