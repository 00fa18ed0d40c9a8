import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  type ApiClient,
  type DeviceStateName,
} from '../protocol/index.ts';
import {
  integerOption,
  optionalString,
  requireString,
  stringList,
  type Command,
} from './command.ts';
import { listCommand, printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * The fleet over the admin API: devices, groups, profiles, apps and enrolment tokens.
 * Groups and profiles may be named by name or id; devices by id.
 */

function positional(inv: { positionals: string[] }, what: string): string {
  const v = inv.positionals[0];
  if (!v) throw new BulkheadError(ErrorCodes.USAGE, `give the ${what}`);
  return v;
}

/** The id of the group named `ref` (a name or an id). */
async function groupId(api: ApiClient, ref: string): Promise<string> {
  const { groups } = await api.call(endpoints.listGroups);
  const g = groups.find((x) => x.id === ref || x.name === ref);
  if (!g) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no device group "${ref}"`, {
      hint: 'list them with `bulkhead groups list`',
    });
  }
  return g.id;
}

/** The id of the profile named `ref` (a name or an id). */
async function profileId(api: ApiClient, ref: string): Promise<string> {
  const { profiles } = await api.call(endpoints.listProfiles);
  const p = profiles.find((x) => x.id === ref || x.name === ref);
  if (!p) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no profile "${ref}"`, {
      hint: 'list them with `bulkhead profiles list`',
    });
  }
  return p.id;
}

const devicesList: Command = {
  name: 'devices list',
  summary: 'List devices, filtered and paged (fast on 100,000 devices).',
  usage: `Usage: bulkhead devices list [--group NAME|ID] [--state active|locked|killed|retired]
         [--profile NAME|ID] [--name PREFIX] [--silent-for-days N] [--limit N] [--all]

  --limit N   devices per page (default 100, at most 500); --all follows every page.

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    group: { type: 'string' },
    state: { type: 'string' },
    profile: { type: 'string' },
    name: { type: 'string' },
    'silent-for-days': { type: 'string' },
    limit: { type: 'string' },
    all: { type: 'boolean' },
  },
  async run(inv, ctx) {
    const api = await connect(inv);
    const group = optionalString(inv, 'group');
    const profile = optionalString(inv, 'profile');
    const silent = integerOption(inv, 'silent-for-days', 1, 3650);
    const query = {
      limit: integerOption(inv, 'limit', 1, 500) ?? 100,
      groupId: group ? await groupId(api, group) : undefined,
      profileId: profile ? await profileId(api, profile) : undefined,
      // Center checks the state and names the field when it is not one.
      state: optionalString(inv, 'state') as DeviceStateName | undefined,
      q: optionalString(inv, 'name'),
      lastContactBefore: silent ? Date.now() - silent * 86_400_000 : undefined,
    };
    const devices = [];
    let cursor: string | undefined;
    do {
      const page = await api.call(endpoints.listDevices, { query: { ...query, cursor } });
      devices.push(...page.devices);
      cursor = page.next ?? undefined;
    } while (inv.values['all'] === true && cursor !== undefined);
    if (!inv.json) {
      printTable(ctx, devices, {
        id: (d) => d.id,
        name: (d) => d.name,
        state: (d) => d.state,
        'last contact': (d) => when(d.lastContactAt),
      });
      if (cursor) ctx.err('More devices follow: add --all, or narrow the filter.');
    }
    return { devices, next: cursor ?? null };
  },
};

const devicesCommands: Command = {
  name: 'devices commands',
  summary: "A device's commands, newest first, with what the PC answered.",
  usage: `Usage: bulkhead devices commands DEVICE-ID

  A command is pending until the PC reports it carried it out: done, or failed with its reason.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const id = positional(inv, 'device id');
    const answer = await api.call(endpoints.listCommands, { params: { id } });
    if (!inv.json) {
      printTable(ctx, answer.commands, {
        issued: (c) => when(c.createdAt),
        kind: (c) => c.kind,
        state: (c) => c.state,
        answer: (c) => {
          const r = c.result as { message?: unknown } | null;
          return typeof r?.message === 'string' ? r.message : '-';
        },
      });
    }
    return answer;
  },
};

const devicesShow: Command = {
  name: 'devices show',
  summary: 'Show one device: inventory, group, profiles, versions, events, commands.',
  usage: `Usage: bulkhead devices show DEVICE-ID\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const id = positional(inv, 'device id');
    const d = await api.call(endpoints.getDevice, { params: { id } });
    if (!inv.json) {
      ctx.out(`${d.name} (${d.id})`);
      ctx.out(`  state          ${d.state}`);
      ctx.out(`  group          ${d.group.name}`);
      ctx.out(`  profiles       ${d.profiles.map((p) => p.name).join(', ') || '-'}`);
      ctx.out(`  optional apps  ${d.apps.map((a) => a.name).join(', ') || '-'}`);
      ctx.out(`  enrolled       ${when(d.enrolledAt)}`);
      ctx.out(`  last contact   ${when(d.lastContactAt)}`);
      ctx.out(`  versions       ${JSON.stringify(d.currentVersions)}`);
      ctx.out(`  pending        ${d.pendingCommands.map((c) => c.kind).join(', ') || '-'}`);
      if (d.recentEvents.length > 0) {
        ctx.out('  recent events');
        for (const e of d.recentEvents.slice(0, 10)) {
          ctx.out(`    ${when(e.occurredAt)}  ${e.type}  ${JSON.stringify(e.data)}`);
        }
      }
    }
    return d;
  },
};

const devicesAssign: Command = {
  name: 'devices assign',
  summary: 'Move a device to a group and/or set the profiles (VMs) it runs.',
  usage: `Usage: bulkhead devices assign DEVICE-ID [--group NAME|ID] [--profile NAME|ID ...]
         [--name LABEL]

  --profile may be repeated; the device runs exactly the profiles given.

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    group: { type: 'string' },
    profile: { type: 'string', multiple: true },
    name: { type: 'string' },
  },
  async run(inv, ctx) {
    const api = await connect(inv);
    const id = positional(inv, 'device id');
    const group = optionalString(inv, 'group');
    const profiles = stringList(inv, 'profile');
    const name = optionalString(inv, 'name');
    const body = {
      ...(group ? { groupId: await groupId(api, group) } : {}),
      ...(profiles.length > 0
        ? { profiles: await Promise.all(profiles.map((p) => profileId(api, p))) }
        : {}),
      ...(name ? { name } : {}),
    };
    if (Object.keys(body).length === 0) {
      throw new BulkheadError(ErrorCodes.USAGE, 'give --group, --profile or --name');
    }
    const d = await api.call(endpoints.updateDevice, { params: { id }, body });
    if (!inv.json) {
      ctx.out(
        `${d.name}: group ${d.group.name}, profiles ${d.profiles.map((p) => p.name).join(', ') || '-'}`,
      );
    }
    return d;
  },
};

/** `devices lock|unlock|kill|restart-vm`: a command queued for the device. */
function commandVerb(kind: 'lock' | 'unlock' | 'kill' | 'restart-vm', summary: string): Command {
  return {
    name: `devices ${kind}`,
    summary,
    usage: `Usage: bulkhead devices ${kind} DEVICE-ID${kind === 'restart-vm' ? ' --vm PROFILE' : ''}${kind === 'kill' ? ' --yes' : ''}

  Online devices get the command within a second (push channel); others at their next contact.

${CONNECTION_USAGE}`,
    options: {
      ...connectionOptions,
      ...(kind === 'restart-vm' ? { vm: { type: 'string' } } : {}),
      ...(kind === 'kill' ? { yes: { type: 'boolean' } } : {}),
    },
    async run(inv, ctx) {
      const id = positional(inv, 'device id');
      if (kind === 'kill' && inv.values['yes'] !== true) {
        throw new BulkheadError(
          ErrorCodes.USAGE,
          'kill destroys the device key material and its work data for good; add --yes',
        );
      }
      const api = await connect(inv);
      const body =
        kind === 'restart-vm'
          ? { kind, profileId: await profileId(api, requireString(inv, 'vm')) }
          : { kind };
      const command = await api.call(endpoints.issueCommand, { params: { id }, body });
      if (!inv.json) ctx.out(`Queued ${kind} for ${id} (command ${command.id}, ${command.state}).`);
      return command;
    },
  };
}

const groupsList = listCommand('groups list', endpoints.listGroups, 'List device groups.', {
  id: (g) => g.id,
  name: (g) => g.name,
  devices: (g) => g.devices,
  description: (g) => g.description,
});

const groupsCreate: Command = {
  name: 'groups create',
  summary: 'Create a device group.',
  usage: `Usage: bulkhead groups create --name NAME [--description TEXT]\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions, name: { type: 'string' }, description: { type: 'string' } },
  async run(inv, ctx) {
    const api = await connect(inv);
    const description = optionalString(inv, 'description');
    const group = await api.call(endpoints.createGroup, {
      body: { name: requireString(inv, 'name'), ...(description ? { description } : {}) },
    });
    if (!inv.json) ctx.out(`Created group ${group.name} (${group.id}).`);
    return group;
  },
};

const appsList = listCommand(
  'apps list',
  endpoints.listApps,
  'List the app catalog (app volumes profiles may offer).',
  {
    id: (a) => a.id,
    name: (a) => a.name,
    title: (a) => a.displayName,
    image: (a) => a.imageId,
  },
);

const tokensCreate: Command = {
  name: 'tokens create',
  summary: 'Create an enrolment token devices join a group with; shown only once.',
  usage: `Usage: bulkhead tokens create --group NAME|ID [--uses N] [--expires-in-hours N]
         [--note TEXT]

  --uses N              devices that may enrol with it (default 1, at most 10,000)
  --expires-in-hours N  lifetime (default 24, at most 720)

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    group: { type: 'string' },
    uses: { type: 'string' },
    'expires-in-hours': { type: 'string' },
    note: { type: 'string' },
  },
  async run(inv, ctx) {
    const api = await connect(inv);
    const uses = integerOption(inv, 'uses', 1, 10_000);
    const hours = integerOption(inv, 'expires-in-hours', 1, 720);
    const note = optionalString(inv, 'note');
    const created = await api.call(endpoints.createEnrolmentToken, {
      body: {
        groupId: await groupId(api, requireString(inv, 'group')),
        ...(uses ? { uses } : {}),
        ...(hours ? { expiresInHours: hours } : {}),
        ...(note ? { note } : {}),
      },
    });
    if (!inv.json) {
      ctx.out(created.token);
      ctx.err(
        `Enrolment token ${created.id}: ${created.usesLeft} use(s) until ${when(created.expiresAt)}. ` +
          'It is not shown again. On a PC: bulkhead engine enroll --center URL --token TOKEN',
      );
    }
    return created;
  },
};

const tokensList = listCommand(
  'tokens list',
  endpoints.listEnrolmentTokens,
  'List enrolment tokens (never their secrets).',
  {
    id: (t) => t.id,
    group: (t) => t.groupId,
    'uses left': (t) => t.usesLeft,
    expires: (t) => when(t.expiresAt),
    note: (t) => t.note,
  },
);

const tokensRevoke: Command = {
  name: 'tokens revoke',
  summary: 'Revoke an enrolment token by id.',
  usage: `Usage: bulkhead tokens revoke TOKEN-ID\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const id = positional(inv, 'token id');
    await api.call(endpoints.revokeEnrolmentToken, { params: { id } });
    if (!inv.json) ctx.out(`Revoked enrolment token ${id}.`);
    return { revoked: id };
  },
};

export const fleetCommands: Command[] = [
  devicesList,
  devicesShow,
  devicesCommands,
  devicesAssign,
  commandVerb('lock', 'Lock a device: its VMs stop and may not start until unlocked.'),
  commandVerb('unlock', 'Unlock a locked device.'),
  commandVerb('kill', 'Kill a device: crypto-erase its work data and cut it off for good.'),
  commandVerb('restart-vm', 'Restart one VM of a device.'),
  groupsList,
  groupsCreate,
  appsList,
  tokensCreate,
  tokensList,
  tokensRevoke,
];
