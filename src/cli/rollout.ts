import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  ROLLOUT_STATE_NAMES,
  RolloutPhasesSchema,
  type ApiClient,
  type Rollout,
  type RolloutDetail,
  type RolloutStateName,
  type TrailEvent,
  RolloutDeviceStatusSchema,
  type RolloutDevicePage,
  type DeviceEventPage,
} from '../protocol/index.ts';
import {
  integerOption,
  optionalString,
  type Command,
  type CommandContext,
  type Invocation,
} from './command.ts';
import { resolveDevice } from './device-view.ts';
import { printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * Phased rollouts over the admin API: create one for an image version, list and watch them, and
 * pause, resume, abort or promote one by hand. Center halts a rollout by itself when a phase's
 * failures cross its threshold, and a rollout that completes makes its version the image's
 * released version unless it was created with --keep-release. Human output names images as
 * image@version and targets by group and profile name; --json keeps every field.
 */

function usage(message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.USAGE, message);
}

/** `--image NAME --version VERSION`, or `--image NAME@VERSION`. */
function imageAndVersion(inv: Invocation): { image: string; version: string } {
  const image = optionalString(inv, 'image');
  const version = optionalString(inv, 'version');
  if (!image) throw usage('--image is required: --image NAME@VERSION or --image NAME --version V');
  const at = image.lastIndexOf('@');
  if (at >= 0) {
    const name = image.slice(0, at);
    const v = image.slice(at + 1);
    if (name === '' || v === '') {
      throw usage(`--image must be NAME or NAME@VERSION, not "${image}"`);
    }
    if (version !== undefined && version !== v) {
      throw usage(
        `--image ${image} and --version ${version} disagree; give the version once (--image ${name}@VERSION)`,
      );
    }
    return { image: name, version: v };
  }
  if (!version) throw usage(`--version is required (or give --image ${image}@VERSION)`);
  return { image, version };
}

async function versionId(api: ApiClient, image: string, version: string): Promise<string> {
  const { images } = await api.call(endpoints.listImages);
  const found = images.find((i) => i.name === image || i.id === image);
  if (!found) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `--image: no image "${image}" at Center`, {
      hint: 'push it first with `bulkhead image push`',
    });
  }
  const detail = await api.call(endpoints.getImage, { params: { id: found.id } });
  const v = detail.versions.find((x) => x.version === version || x.id === version);
  if (!v) {
    const known = detail.versions.map((x) => x.version).join(', ') || 'none';
    throw new BulkheadError(
      ErrorCodes.NOT_FOUND,
      `--version: image ${found.name} has no version ${version} (it has: ${known})`,
    );
  }
  if (v.state !== 'published') {
    throw new BulkheadError(
      ErrorCodes.VERSION_STATE,
      `${found.name}@${v.version} is ${v.state}; only a published version can be rolled out`,
      { hint: v.state === 'draft' ? 'publish it first' : undefined },
    );
  }
  return v.id;
}

async function idByName(api: ApiClient, kind: 'group' | 'profile', ref: string): Promise<string> {
  const list =
    kind === 'group'
      ? (await api.call(endpoints.listGroups)).groups
      : (await api.call(endpoints.listProfiles)).profiles;
  const hit = list.find((x) => x.id === ref || x.name === ref);
  if (!hit) {
    const what = kind === 'group' ? 'device group' : 'profile';
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `--${kind}: no ${what} "${ref}" at Center`);
  }
  return hit.id;
}

/** What --phases takes, for its help and its error. */
const PHASES_RULE =
  'strictly increasing percentages of the target, above 0 and at most 100, e.g. 1,10,50,100 ' +
  '(a last phase below 100 leaves the rest out)';

function parsePhases(text: string): number[] {
  const parts = text.split(',').map((p) => p.trim().replace(/%$/, ''));
  const phases = parts.map((p) => (/^\d+(\.\d+)?$/.test(p) ? Number(p) : NaN));
  if (!RolloutPhasesSchema.safeParse(phases).success) {
    throw usage(`--phases must be ${PHASES_RULE}; not "${text}"`);
  }
  return phases;
}

function shareOption(inv: Invocation, name: string): number | undefined {
  const text = optionalString(inv, name);
  if (text === undefined) return undefined;
  const share = /^\d+(\.\d+)?$/.test(text.trim()) ? Number(text) : NaN;
  if (!(share >= 0 && share <= 1)) {
    throw usage(`--${name} must be a share from 0 to 1 (0.05 is 5 %), not "${text}"`);
  }
  return share;
}

function stateOption(inv: Invocation): RolloutStateName | undefined {
  const state = optionalString(inv, 'state');
  if (state === undefined) return undefined;
  if (!(ROLLOUT_STATE_NAMES as readonly string[]).includes(state)) {
    throw usage(`--state must be one of ${ROLLOUT_STATE_NAMES.join(', ')}, not "${state}"`);
  }
  return state as RolloutStateName;
}

/** Center's ids are at most 64 characters; anything longer names no rollout either. */
const MAX_ID = 64;

/** The one ROLLOUT positional: a rollout's id, or IMAGE@VERSION for its newest rollout. */
function rolloutId(inv: Invocation, name: string): string {
  const [id, ...extra] = inv.positionals;
  if (!id) {
    throw usage(`give the rollout: bulkhead rollout ${name} ROLLOUT-ID (or IMAGE@VERSION)`);
  }
  if (extra.length > 0) throw usage(`one rollout at a time; unexpected "${extra[0]}"`);
  return id;
}

/**
 * The id of the rollout `reference` names: itself, or for `IMAGE@VERSION` the newest rollout of
 * that version (what a person means by "the rollout of debian@12.2").
 */
async function resolveRollout(api: ApiClient, reference: string): Promise<string> {
  const at = reference.lastIndexOf('@');
  if (at <= 0 || at === reference.length - 1) return reference;
  const [image, version] = [reference.slice(0, at), reference.slice(at + 1)];
  const detail = await api.call(endpoints.getImage, { params: { id: image } }).catch((err) => {
    if (err instanceof BulkheadError && err.code === ErrorCodes.NOT_FOUND) {
      throw new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout ${reference}: no image ${image}`);
    }
    throw err;
  });
  const v = detail.versions.find((x) => x.version === version);
  if (v === undefined) {
    throw new BulkheadError(
      ErrorCodes.NOT_FOUND,
      `no rollout ${reference}: ${detail.name} has no version ${version}`,
    );
  }
  const { rollouts } = await api.call(endpoints.listRollouts, {
    query: { imageVersionId: v.id, limit: 100 },
  });
  if (rollouts[0] === undefined) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout of ${reference}`, {
      hint: `start one with \`bulkhead rollout create --image ${reference} --group NAME\``,
    });
  }
  // Two rollouts of one version still under way (to two groups) are not "the" rollout: acting
  // on the newer one alone would surprise whoever meant the other.
  const open = rollouts.filter((r) => r.state !== 'completed' && r.state !== 'aborted');
  if (open.length > 1) {
    throw usage(
      `${reference} has ${open.length} rollouts under way; name one by its id: ${open
        .map((r) => `${r.id} (${targetOf(r)}, ${r.state})`)
        .join(', ')}`,
    );
  }
  return (open[0] ?? rollouts[0]).id;
}

/** Calls Center about rollout `id`; an id Center cannot know reads `no rollout ID`. */
async function aboutRollout<T>(id: string, call: () => Promise<T>): Promise<T> {
  const missing = () => new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout ${id}`);
  if (id.length > MAX_ID) throw missing();
  try {
    return await call();
  } catch (err) {
    // An id Center refuses to look up is only a rollout that does not exist, in user's terms.
    if (
      err instanceof BulkheadError &&
      err.code === ErrorCodes.VALIDATION &&
      err.message.startsWith('params.id')
    ) {
      throw missing();
    }
    throw err;
  }
}

const ref = (r: Pick<Rollout, 'image' | 'version'>) => `${r.image}@${r.version}`;

/** Who a rollout goes to, by name: `group finance`, `profile work`, or both. */
function targetOf(r: Rollout): string {
  const parts = [];
  if (r.groupId !== null) parts.push(`group ${r.group ?? r.groupId}`);
  if (r.profileId !== null) parts.push(`profile ${r.profile ?? r.profileId}`);
  return parts.join(', devices with ');
}

/** `phase 2 of 4 (10%)`, `done: phase 4 of 4 (100%)` or `not started`. */
function progressOf(r: Rollout): string {
  if (r.state === 'pending') return 'not started';
  if (r.state === 'completed') {
    return `done: phase ${r.phases.length} of ${r.phases.length} (${r.phases.at(-1)}%)`;
  }
  return `phase ${r.currentPhase + 1} of ${r.phases.length} (${r.phases[r.currentPhase]}%)`;
}

/** The image's released version now, by name. */
function releaseName(r: RolloutDetail): string {
  return r.imageRelease ? `${r.image}@${r.imageRelease.version}` : 'none';
}

/**
 * The rollout's state in words, and what its completion did or will do to the image's
 * released version.
 */
export function stateLine(r: RolloutDetail): string {
  const self = ref(r);
  if (r.state === 'completed') {
    if (r.releasedAt !== null) {
      return r.imageRelease?.id === r.imageVersionId
        ? `completed; ${self} is now the released version`
        : `completed; it released ${self} at ${when(r.releasedAt)}, and the released version is now ${releaseName(r)}`;
    }
    if (!r.releaseOnCompletion) {
      return r.imageRelease
        ? `completed; the released version stays ${releaseName(r)} (this rollout does not release)`
        : `completed; ${r.image} has no released version (this rollout does not release)`;
    }
    return `completed; ${r.stateReason ?? 'not released'}; the released version stays ${releaseName(r)}`;
  }
  return `${r.state}, ${progressOf(r)}`;
}

/** What completing will do to the released version, while it still may complete. */
function onCompletion(r: RolloutDetail): string | undefined {
  if (!['pending', 'running', 'paused'].includes(r.state)) return undefined;
  const now = r.imageRelease ? ` (now ${releaseName(r)})` : '';
  return r.releaseOnCompletion
    ? `${ref(r)} becomes the released version${now}`
    : `the released version stays ${releaseName(r)} (--keep-release)`;
}

function printRollout(ctx: CommandContext, r: RolloutDetail): void {
  const pct = (x: number) => `${Math.round(x * 1000) / 10}%`;
  ctx.out(`Rollout ${r.id}: ${ref(r)} to ${targetOf(r)}`);
  ctx.out(`  state          ${stateLine(r)}`);
  if (r.stateReason && r.state !== 'completed') ctx.out(`  reason         ${r.stateReason}`);
  const next = onCompletion(r);
  if (next) ctx.out(`  on completion  ${next}`);
  ctx.out(`  phases         ${r.phases.map((p) => `${p}%`).join(' → ')}`);
  ctx.out(
    `  rules          each phase ${r.soakMinutes} min at least and ${r.minReports} ` +
      `report${r.minReports === 1 ? '' : 's'}; halts above ${pct(r.failureThreshold)} failed or rolled back`,
  );
  if (r.phaseStartedAt !== null) ctx.out(`  phase since    ${when(r.phaseStartedAt)}`);
  ctx.out(`  created        ${when(r.createdAt)}`);
  const t = r.totals;
  ctx.out(
    `  devices        ${t.targeted} targeted, ${t.included} included: ${t.healthy} healthy, ` +
      `${t.failed} failed, ${t.rolledBack} rolled back, ${t.inProgress} updating, ${t.pending} not reported`,
  );
  printTable(ctx, r.phaseCounts, {
    phase: (p) => `${p.index + 1} (${p.percent}%)`,
    reached: (p) => (p.reached ? 'yes' : 'no'),
    targeted: (p) => p.targeted,
    included: (p) => p.included,
    healthy: (p) => p.healthy,
    failed: (p) => p.failed,
    'rolled back': (p) => p.rolledBack,
    updating: (p) => p.inProgress,
    'not reported': (p) => p.pending,
  });
}

const create: Command = {
  name: 'rollout create',
  summary: 'Roll an image version out to a group (or profile) in phases.',
  usage: `Usage: bulkhead rollout create --image NAME@VERSION (or --image NAME --version VERSION)
         (--group NAME | --profile NAME) [--phases 1,10,50,100] [--soak-minutes N]
         [--failure-threshold SHARE] [--min-reports N] [--keep-release] [--start]

  --group, --profile   the devices it goes to: a group, the devices holding a profile, or both
  --phases             cumulative percentages of the target, strictly increasing, each above 0
                       and at most 100 (default 1,10,50,100); a last phase below 100 leaves
                       the rest of the target out
  --soak-minutes       how long each phase runs at least before the next (default 60)
  --failure-threshold  share (0..1) of failed or rolled-back devices among those that reported
                       above which Center halts the rollout (default 0.1)
  --min-reports        outcomes a phase needs before the next starts and before failures are
                       judged (default 1)
  --keep-release       on completion, keep the image's released version as it is; by default
                       the rollout's version becomes the released version once its last phase
                       completes, so devices outside the rollout and PCs enrolled later get it
  --start              start at once; otherwise start it with \`bulkhead rollout resume ID\`

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    image: { type: 'string' },
    version: { type: 'string' },
    group: { type: 'string' },
    profile: { type: 'string' },
    phases: { type: 'string' },
    'soak-minutes': { type: 'string' },
    'failure-threshold': { type: 'string' },
    'min-reports': { type: 'string' },
    'keep-release': { type: 'boolean' },
    start: { type: 'boolean' },
  },
  async run(inv, ctx) {
    // Every flag is checked before Center is asked anything.
    const { image, version } = imageAndVersion(inv);
    const group = optionalString(inv, 'group');
    const profile = optionalString(inv, 'profile');
    if (!group && !profile) throw usage('give --group or --profile (or both): who gets it');
    const phasesText = optionalString(inv, 'phases');
    const phases = phasesText === undefined ? undefined : parsePhases(phasesText);
    const soak = integerOption(inv, 'soak-minutes', 0, 30 * 24 * 60);
    const share = shareOption(inv, 'failure-threshold');
    const minReports = integerOption(inv, 'min-reports', 1, 1_000_000);
    if (inv.positionals.length > 0) {
      throw usage(`unexpected "${inv.positionals[0]}"; every value is given with its flag`);
    }
    const api = await connect(inv);
    const body = {
      imageVersionId: await versionId(api, image, version),
      ...(group ? { groupId: await idByName(api, 'group', group) } : {}),
      ...(profile ? { profileId: await idByName(api, 'profile', profile) } : {}),
      ...(phases ? { phases } : {}),
      ...(soak !== undefined ? { soakMinutes: soak } : {}),
      ...(share !== undefined ? { failureThreshold: share } : {}),
      ...(minReports !== undefined ? { minReports } : {}),
      releaseOnCompletion: inv.values['keep-release'] !== true,
      start: inv.values['start'] === true,
    };
    const r = await api.call(endpoints.createRollout, { body });
    if (!inv.json) {
      ctx.out(`Rollout ${r.id} of ${ref(r)} to ${targetOf(r)}: ${stateLine(r)}.`);
      ctx.out(`On completion ${onCompletion(r) ?? 'nothing changes'}.`);
      if (r.state === 'pending') ctx.out(`Start it with: bulkhead rollout resume ${r.id}`);
    }
    return r;
  },
};

/** Rollouts newest first, one page or (`all`) every page. */
async function listAll(api: ApiClient, inv: Invocation) {
  const state = stateOption(inv);
  const limit = integerOption(inv, 'limit', 1, 500);
  const rollouts: Rollout[] = [];
  let cursor: string | undefined;
  do {
    const page = await api.call(endpoints.listRollouts, {
      query: {
        ...(state ? { state } : {}),
        ...(limit !== undefined ? { limit } : {}),
        ...(cursor ? { cursor } : {}),
      },
    });
    rollouts.push(...page.rollouts);
    cursor = page.next ?? undefined;
  } while (inv.values['all'] === true && cursor !== undefined);
  return { rollouts, next: cursor ?? null };
}

function printList(ctx: CommandContext, list: { rollouts: Rollout[]; next: string | null }) {
  if (list.rollouts.length === 0) {
    ctx.out('No rollouts.');
    return;
  }
  printTable(ctx, list.rollouts, {
    id: (r) => r.id,
    image: (r) => ref(r),
    target: (r) => targetOf(r),
    state: (r) => r.state,
    progress: (r) => progressOf(r),
    created: (r) => when(r.createdAt),
  });
  if (list.next) ctx.err('More rollouts follow: add --all, or narrow with --state.');
}

const LIST_OPTIONS = {
  ...connectionOptions,
  state: { type: 'string' },
  limit: { type: 'string' },
  all: { type: 'boolean' },
} as const;

const LIST_USAGE = `[--state ${ROLLOUT_STATE_NAMES.join('|')}] [--limit N] [--all]`;

const list: Command = {
  name: 'rollout list',
  summary: 'List rollouts, newest first: image@version, target, state, progress.',
  usage: `Usage: bulkhead rollout list ${LIST_USAGE}

  --limit N   rollouts per page (default 100, at most 500); --all follows every page.

${CONNECTION_USAGE}`,
  options: LIST_OPTIONS,
  async run(inv, ctx) {
    if (inv.positionals.length > 0) {
      throw usage(
        `unexpected "${inv.positionals[0]}"; to see one rollout: bulkhead rollout status ROLLOUT-ID`,
      );
    }
    const result = await listAll(await connect(inv), inv);
    if (!inv.json) printList(ctx, result);
    return result;
  },
};

const status: Command = {
  name: 'rollout status',
  summary: 'Show a rollout: its phases with device counts, and what completing it releases.',
  usage: `Usage: bulkhead rollout status ROLLOUT-ID|IMAGE@VERSION
       bulkhead rollout status ${LIST_USAGE}     (without an id: as rollout list)

  IMAGE@VERSION names the rollout of that version under way, or else its newest one.

${CONNECTION_USAGE}`,
  options: LIST_OPTIONS,
  async run(inv, ctx) {
    if (inv.positionals.length === 0) {
      const result = await listAll(await connect(inv), inv);
      if (!inv.json) printList(ctx, result);
      return result;
    }
    const reference = rolloutId(inv, 'status');
    for (const flag of ['state', 'limit', 'all']) {
      if (inv.values[flag] !== undefined) throw usage(`--${flag} lists rollouts; not with an id`);
    }
    const api = await connect(inv);
    const id = await resolveRollout(api, reference);
    const r = await aboutRollout(id, () => api.call(endpoints.getRollout, { params: { id } }));
    if (!inv.json) printRollout(ctx, r);
    return r;
  },
};

function action(name: 'pause' | 'resume' | 'abort' | 'promote', summary: string): Command {
  return {
    name: `rollout ${name}`,
    summary,
    usage: `Usage: bulkhead rollout ${name} ROLLOUT-ID|IMAGE@VERSION${name === 'abort' ? ' [--reason TEXT]' : ''}\n\n  IMAGE@VERSION names the rollout of that version under way, or else its newest one.\n\n${CONNECTION_USAGE}`,
    options: { ...connectionOptions, ...(name === 'abort' ? { reason: { type: 'string' } } : {}) },
    async run(inv, ctx) {
      const reference = rolloutId(inv, name);
      const api = await connect(inv);
      const id = await resolveRollout(api, reference);
      const reason = optionalString(inv, 'reason');
      const r = await aboutRollout(id, () =>
        api.call(endpoints.actOnRollout, {
          params: { id, action: name },
          body: reason ? { reason } : {},
        }),
      );
      if (!inv.json) ctx.out(`Rollout ${r.id} of ${ref(r)}: ${stateLine(r)}.`);
      return r;
    },
  };
}

const STATUSES = RolloutDeviceStatusSchema.options;

/**
 * One trail event in a line: time, type, the version it is about (when `names` is given: the
 * rollout's trail names its version once, above), the reason.
 */
function trailLine(e: TrailEvent, names?: Record<string, string>): string {
  const data = (e.data ?? {}) as Record<string, unknown>;
  const versionId = typeof data['versionId'] === 'string' ? data['versionId'] : undefined;
  const version =
    names === undefined || versionId === undefined
      ? ''
      : ` ${names[versionId] ?? `${String(data['image'] ?? '?')}@${String(data['version'] ?? '?')}`}`;
  return `${when(e.occurredAt)}  ${e.type}${version}${e.reason ? `: ${e.reason}` : ''}`;
}

const devices: Command = {
  name: 'rollout devices',
  summary: "List a rollout's devices by phase, each with its outcome trail.",
  usage: `Usage: bulkhead rollout devices ROLLOUT-ID|IMAGE@VERSION [--status STATUS] [--limit N] [--all]

  Each device the rollout included, by phase: its status (${STATUSES.join(', ')}),
  the reason it failed or rolled back, and what it reported about the version, in order
  (downloaded, staged, switched, healthy or rolled back). IMAGE@VERSION names the rollout of
  that version under way, or else its newest one.
  --status    only the devices in this status
  --limit N   devices per page (default 50, at most 200); --all follows every page

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    status: { type: 'string' },
    limit: { type: 'string' },
    all: { type: 'boolean' },
  },
  async run(inv, ctx) {
    const reference = rolloutId(inv, 'devices');
    const statusText = optionalString(inv, 'status');
    const parsed = RolloutDeviceStatusSchema.safeParse(statusText);
    if (statusText !== undefined && !parsed.success) {
      throw usage(`--status must be one of ${STATUSES.join(', ')}; not "${statusText}"`);
    }
    const limit = integerOption(inv, 'limit', 1, 200);
    const api = await connect(inv);
    const id = await resolveRollout(api, reference);
    let page: RolloutDevicePage | undefined;
    const found: RolloutDevicePage['devices'] = [];
    let cursor: string | undefined;
    do {
      page = await aboutRollout(id, () =>
        api.call(endpoints.listRolloutDevices, {
          params: { id },
          query: {
            ...(parsed.success && parsed.data ? { status: parsed.data } : {}),
            ...(limit !== undefined ? { limit } : {}),
            ...(cursor ? { cursor } : {}),
          },
        }),
      );
      found.push(...page.devices);
      cursor = page.next ?? undefined;
    } while (inv.values['all'] === true && cursor !== undefined);
    const result = { ...page, devices: found, next: cursor ?? null };
    if (!inv.json) {
      ctx.out(`Rollout ${id} of ${result.image}@${result.version}: ${found.length} device(s)`);
      for (const d of found) {
        ctx.out(`${d.device}  phase ${d.phase + 1}  ${d.status}${d.reason ? `: ${d.reason}` : ''}`);
        if (d.trailTruncated) ctx.out('    … older events: bulkhead devices events DEVICE');
        for (const e of d.trail) ctx.out(`    ${trailLine(e)}`);
        if (d.trail.length === 0) ctx.out('    (nothing reported about this version yet)');
      }
      if (result.next) ctx.err('More devices follow: add --all.');
    }
    return result;
  },
};

const deviceEvents: Command = {
  name: 'devices events',
  summary: "List a device's events, newest first: updates and their outcomes with reasons.",
  usage: `Usage: bulkhead devices events DEVICE [--version IMAGE@VERSION | --rollout ROLLOUT-ID]
         [--type TYPE] [--limit N] [--all]

  DEVICE is the device's name or id.
  --version   only events about this image version
  --rollout   only events about this rollout's version since it was created
  --type      only events of this type (staged, healthy, rolled-back, vm-state, …)
  --limit N   events per page (default 100, at most 500); --all follows every page

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    version: { type: 'string' },
    rollout: { type: 'string' },
    type: { type: 'string' },
    limit: { type: 'string' },
    all: { type: 'boolean' },
  },
  async run(inv, ctx) {
    const ref = inv.positionals[0];
    if (!ref) throw usage('give the device name or id: bulkhead devices events DEVICE');
    if (inv.positionals.length > 1) {
      throw usage(`unexpected "${inv.positionals[1]}"; every other value is given with its flag`);
    }
    const versionRef = optionalString(inv, 'version');
    const rolloutRef = optionalString(inv, 'rollout');
    if (versionRef !== undefined && rolloutRef !== undefined) {
      throw usage('give --version or --rollout, not both (a rollout names its version)');
    }
    let versionParts: { image: string; version: string } | undefined;
    if (versionRef !== undefined) {
      const at = versionRef.lastIndexOf('@');
      if (at <= 0 || at === versionRef.length - 1) {
        throw usage(`--version must be IMAGE@VERSION, not "${versionRef}"`);
      }
      versionParts = { image: versionRef.slice(0, at), version: versionRef.slice(at + 1) };
    }
    const type = optionalString(inv, 'type');
    const limit = integerOption(inv, 'limit', 1, 500);
    const api = await connect(inv);
    const { id } = await resolveDevice(api, ref);
    const versionFilter = versionParts
      ? await anyVersionId(api, versionParts.image, versionParts.version)
      : undefined;
    const rollout = rolloutRef ? await resolveRollout(api, rolloutRef) : undefined;
    const events: DeviceEventPage['events'] = [];
    const names: Record<string, string> = {};
    let page: DeviceEventPage;
    let cursor: string | undefined;
    do {
      page = await api.call(endpoints.listDeviceEvents, {
        params: { id },
        query: {
          ...(versionFilter ? { versionId: versionFilter } : {}),
          ...(rollout ? { rolloutId: rollout } : {}),
          ...(type ? { type } : {}),
          ...(limit !== undefined ? { limit } : {}),
          ...(cursor ? { cursor } : {}),
        },
      });
      events.push(...page.events);
      Object.assign(names, page.versionNames);
      cursor = page.next ?? undefined;
    } while (inv.values['all'] === true && cursor !== undefined);
    const result = { ...page, events, versionNames: names, next: cursor ?? null };
    if (!inv.json) {
      if (events.length === 0) ctx.out(`No events of ${page.device} match.`);
      else ctx.out(`Events of ${page.device}, newest first:`);
      for (const e of events) {
        ctx.out(`  ${trailLine(e, names)}${e.vm ? `  (vm ${e.vm})` : ''}`);
      }
      if (result.next) ctx.err('More events follow: add --all.');
    }
    return result;
  },
};

/** The id of IMAGE@VERSION whatever its state (a device may report about any version). */
async function anyVersionId(api: ApiClient, image: string, version: string): Promise<string> {
  const { images } = await api.call(endpoints.listImages);
  const found = images.find((i) => i.name === image || i.id === image);
  if (!found) throw new BulkheadError(ErrorCodes.NOT_FOUND, `--version: no image "${image}"`);
  const detail = await api.call(endpoints.getImage, { params: { id: found.id } });
  const v = detail.versions.find((x) => x.version === version || x.id === version);
  if (!v) {
    throw new BulkheadError(
      ErrorCodes.NOT_FOUND,
      `--version: image ${found.name} has no version ${version}`,
    );
  }
  return v.id;
}

export const rolloutCommands: Command[] = [
  create,
  list,
  status,
  { ...status, name: 'rollout show', summary: 'Show a rollout (the same as rollout status).' },
  devices,
  deviceEvents,
  action('pause', 'Pause a rollout: devices already in keep the version, no new ones join.'),
  action('resume', 'Start a pending rollout, or resume a paused one.'),
  action('abort', 'Abort a rollout: its devices go back to the released version.'),
  action(
    'promote',
    'Move a rollout to its next phase now, without the soak time (after the last: complete it).',
  ),
];
