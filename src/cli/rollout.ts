import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  type ApiClient,
  type RolloutDetail,
  type RolloutStateName,
} from '../protocol/index.ts';
import { integerOption, optionalString, requireString, type Command } from './command.ts';
import type { CommandContext } from './command.ts';
import { printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * Phased rollouts over the admin API: create one for an image version, watch it, and pause,
 * resume, abort or promote it by hand. Center halts a rollout by itself when a phase's failures
 * cross its threshold.
 */

async function versionId(api: ApiClient, image: string, version: string): Promise<string> {
  const { images } = await api.call(endpoints.listImages);
  const found = images.find((i) => i.name === image || i.id === image);
  if (!found) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no image "${image}" at Center`, {
      hint: 'push it first with `bulkhead image push`',
    });
  }
  const detail = await api.call(endpoints.getImage, { params: { id: found.id } });
  const v = detail.versions.find((x) => x.version === version || x.id === version);
  if (!v) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `image ${found.name} has no version ${version}`);
  }
  return v.id;
}

async function idByName(api: ApiClient, kind: 'groups' | 'profiles', ref: string): Promise<string> {
  const list =
    kind === 'groups'
      ? (await api.call(endpoints.listGroups)).groups
      : (await api.call(endpoints.listProfiles)).profiles;
  const hit = list.find((x) => x.id === ref || x.name === ref);
  if (!hit) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no ${kind.slice(0, -1)} "${ref}"`);
  return hit.id;
}

function parsePhases(text: string): number[] {
  const phases = text.split(',').map((p) => Number(p.trim().replace(/%$/, '')));
  if (phases.some((p) => !Number.isFinite(p))) {
    throw new BulkheadError(ErrorCodes.USAGE, `--phases must be percentages like 1,10,50,100`);
  }
  return phases;
}

function printRollout(ctx: CommandContext, r: RolloutDetail): void {
  ctx.out(`Rollout ${r.id}: ${r.image} ${r.version} — ${r.state}`);
  if (r.stateReason) ctx.out(`  reason      ${r.stateReason}`);
  ctx.out(
    `  phases      ${r.phases.map((p) => `${p}%`).join(' → ')} (now phase ${r.currentPhase + 1})`,
  );
  ctx.out(`  soak        ${r.soakMinutes} min, halt above ${r.failureThreshold * 100}% failures`);
  ctx.out(`  since       ${when(r.phaseStartedAt)}`);
  printTable(ctx, r.phaseCounts, {
    phase: (p) => `${p.index + 1} (${p.percent}%)`,
    reached: (p) => (p.reached ? 'yes' : 'no'),
    included: (p) => p.included,
    healthy: (p) => p.healthy,
    failed: (p) => p.failed,
    'rolled back': (p) => p.rolledBack,
    pending: (p) => p.pending + p.inProgress,
  });
}

const create: Command = {
  name: 'rollout create',
  summary: 'Roll an image version out to a group (or profile) in phases.',
  usage: `Usage: bulkhead rollout create --image NAME --version VERSION
         (--group NAME|ID | --profile NAME|ID) [--phases 1,10,50,100] [--soak-minutes N]
         [--failure-threshold SHARE] [--min-reports N] [--start]

  --failure-threshold  share (0..1) of failed or rolled-back devices among those that reported
                       in a phase above which Center halts the rollout (default 0.1)
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
    start: { type: 'boolean' },
  },
  async run(inv, ctx) {
    const api = await connect(inv);
    const group = optionalString(inv, 'group');
    const profile = optionalString(inv, 'profile');
    if (!group && !profile) {
      throw new BulkheadError(ErrorCodes.USAGE, 'give --group or --profile: who gets it');
    }
    const threshold = optionalString(inv, 'failure-threshold');
    const share = threshold === undefined ? undefined : Number(threshold);
    if (share !== undefined && !(share >= 0 && share <= 1)) {
      throw new BulkheadError(ErrorCodes.USAGE, '--failure-threshold is a share from 0 to 1');
    }
    const phases = optionalString(inv, 'phases');
    const soak = integerOption(inv, 'soak-minutes', 0, 30 * 24 * 60);
    const minReports = integerOption(inv, 'min-reports', 1, 1_000_000);
    const body = {
      imageVersionId: await versionId(
        api,
        requireString(inv, 'image'),
        requireString(inv, 'version'),
      ),
      ...(group ? { groupId: await idByName(api, 'groups', group) } : {}),
      ...(profile ? { profileId: await idByName(api, 'profiles', profile) } : {}),
      ...(phases ? { phases: parsePhases(phases) } : {}),
      ...(soak !== undefined ? { soakMinutes: soak } : {}),
      ...(share !== undefined ? { failureThreshold: share } : {}),
      ...(minReports !== undefined ? { minReports } : {}),
      start: inv.values['start'] === true,
    };
    const r = await api.call(endpoints.createRollout, { body });
    if (!inv.json) ctx.out(`Rollout ${r.id} of ${r.image} ${r.version}: ${r.state}.`);
    return r;
  },
};

const status: Command = {
  name: 'rollout status',
  summary: 'Show a rollout and its phases, or list rollouts without an id.',
  usage: `Usage: bulkhead rollout status [ROLLOUT-ID] [--state STATE]\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions, state: { type: 'string' } },
  async run(inv, ctx) {
    const api = await connect(inv);
    const id = inv.positionals[0];
    if (id) {
      const r = await api.call(endpoints.getRollout, { params: { id } });
      if (!inv.json) printRollout(ctx, r);
      return r;
    }
    const list = await api.call(endpoints.listRollouts, {
      // Center checks the state and names the field when it is not one.
      query: { state: optionalString(inv, 'state') as RolloutStateName | undefined },
    });
    if (!inv.json) {
      printTable(ctx, list.rollouts, {
        id: (r) => r.id,
        image: (r) => `${r.image} ${r.version}`,
        state: (r) => r.state,
        phase: (r) => `${r.currentPhase + 1}/${r.phases.length}`,
        created: (r) => when(r.createdAt),
      });
    }
    return list;
  },
};

function action(name: 'pause' | 'resume' | 'abort' | 'promote', summary: string): Command {
  return {
    name: `rollout ${name}`,
    summary,
    usage: `Usage: bulkhead rollout ${name} ROLLOUT-ID [--reason TEXT]\n\n${CONNECTION_USAGE}`,
    options: { ...connectionOptions, reason: { type: 'string' } },
    async run(inv, ctx) {
      const id = inv.positionals[0];
      if (!id) throw new BulkheadError(ErrorCodes.USAGE, 'give the rollout id');
      const api = await connect(inv);
      const reason = optionalString(inv, 'reason');
      const r = await api.call(endpoints.actOnRollout, {
        params: { id, action: name },
        body: reason ? { reason } : {},
      });
      if (!inv.json)
        ctx.out(`Rollout ${r.id}: ${r.state}, phase ${r.currentPhase + 1}/${r.phases.length}.`);
      return r;
    },
  };
}

export const rolloutCommands: Command[] = [
  create,
  status,
  action('pause', 'Pause a rollout: devices already in keep the version, no new ones join.'),
  action('resume', 'Start a pending rollout, or resume a paused or halted one.'),
  action('abort', 'Abort a rollout: its devices go back to the released version.'),
  action('promote', 'Move a rollout to its next phase now, without waiting for the soak time.'),
];
