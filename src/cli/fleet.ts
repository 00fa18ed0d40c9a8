import {
  BulkheadError,
  DEVICE_STATE_NAMES,
  endpoints,
  ErrorCodes,
  FleetIdSchema,
  isBulkheadError,
  type ApiClient,
  type DeviceDetail,
  type DeviceStateName,
} from '../protocol/index.ts';
import {
  integerOption,
  optionalString,
  requireString,
  stringList,
  type Command,
} from './command.ts';
import {
  asTyped,
  onDevice,
  printDevice,
  resolveDevice,
  versionName,
  withFlags,
} from './device-view.ts';
import { listCommand, printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * The fleet over the admin API: devices, groups, profiles, apps and enrolment tokens.
 * Groups, profiles and devices may be named by name or id.
 */

function positional(inv: { positionals: string[] }, what: string): string {
  const v = inv.positionals[0];
  if (!v) throw new BulkheadError(ErrorCodes.USAGE, `give the ${what}`);
  return v;
}

/** The id of the group named `ref` (a name or an id), given with `flag`. */
async function groupId(api: ApiClient, ref: string, flag: string): Promise<string> {
  const { groups } = await api.call(endpoints.listGroups);
  const g = groups.find((x) => x.id === ref || x.name === ref);
  if (!g) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `${flag}: no device group "${ref}"`, {
      hint: 'list them with `bulkhead groups list`',
    });
  }
  return g.id;
}

/** The id of the profile named `ref` (a name or an id), given with `flag`. */
async function profileId(api: ApiClient, ref: string, flag: string): Promise<string> {
  const { profiles } = await api.call(endpoints.listProfiles);
  const p = profiles.find((x) => x.id === ref || x.name === ref);
  if (!p) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `${flag}: no profile "${ref}"`, {
      hint: 'list them with `bulkhead profiles list`',
    });
  }
  return p.id;
}

/** `--state` checked against the states a device can be in. */
function deviceState(given: string | undefined): DeviceStateName | undefined {
  if (given === undefined) return undefined;
  const state = DEVICE_STATE_NAMES.find((s) => s === given);
  if (state === undefined) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--state must be one of ${DEVICE_STATE_NAMES.join(', ')}, not "${given}"`,
    );
  }
  return state;
}

const devicesList: Command = {
  name: 'devices list',
  summary: 'List devices, filtered and paged (fast on 100,000 devices).',
  usage: `Usage: bulkhead devices list [--group NAME|ID] [--state active|locked|killed|retired]
         [--profile NAME|ID] [--name PREFIX] [--silent-for-days N] [--limit N] [--all]

  Each device with its group, state, and each profile (VM) with the system version it last
  reported healthy.
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
    // Every flag is checked before Center is asked anything.
    const state = deviceState(optionalString(inv, 'state'));
    const silent = integerOption(inv, 'silent-for-days', 1, 3650);
    const limit = integerOption(inv, 'limit', 1, 500) ?? 100;
    const group = optionalString(inv, 'group');
    const profile = optionalString(inv, 'profile');
    const api = await connect(inv);
    const query = {
      limit,
      groupId: group ? await groupId(api, group, '--group') : undefined,
      profileId: profile ? await profileId(api, profile, '--profile') : undefined,
      state,
      q: optionalString(inv, 'name'),
      lastContactBefore: silent ? Date.now() - silent * 86_400_000 : undefined,
    };
    const devices = [];
    let cursor: string | undefined;
    do {
      const page = await withFlags({ 'querystring.q': '--name' }, () =>
        api.call(endpoints.listDevices, { query: { ...query, cursor } }),
      );
      devices.push(...page.devices);
      cursor = page.next ?? undefined;
    } while (inv.values['all'] === true && cursor !== undefined);
    if (!inv.json) {
      printTable(ctx, devices, {
        name: (d) => d.name,
        group: (d) => d.group.name,
        state: (d) => d.state,
        'profiles (running)': (d) =>
          d.profiles.map((p) => `${p.name} ${versionName(p.current)}`).join(', ') || '-',
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
  usage: `Usage: bulkhead devices commands DEVICE

  DEVICE is the device's name or id. A command is pending until the PC reports it carried it
  out: done, or failed with its reason.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const ref = positional(inv, 'device name or id');
    const api = await connect(inv);
    const answer = await onDevice(api, ref, (id) =>
      api.call(endpoints.listCommands, { params: { id } }),
    );
    if (!inv.json) {
      const { profiles } = answer.commands.some((c) => c.profileId !== null)
        ? await api.call(endpoints.listProfiles)
        : { profiles: [] };
      printTable(ctx, answer.commands, {
        issued: (c) => when(c.createdAt),
        kind: (c) => c.kind,
        vm: (c) =>
          c.profileId === null
            ? '-'
            : (profiles.find((p) => p.id === c.profileId)?.name ?? 'a removed profile'),
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
  usage: `Usage: bulkhead devices show DEVICE

  DEVICE is the device's name or id. Shows its identity, the hardware it reported, each
  profile (VM) with the versions it runs and should run, its lease, its recent events with
  their reasons, and the commands it has not carried out yet; --json gives all of it.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const ref = positional(inv, 'device name or id');
    const api = await connect(inv);
    const found = await resolveDevice(api, ref);
    const d =
      found.detail ??
      (await asTyped(ref, () => api.call(endpoints.getDevice, { params: { id: found.id } })));
    if (!inv.json) printDevice(ctx, d);
    return d;
  },
};

const devicesAssign: Command = {
  name: 'devices assign',
  summary: 'Move a device to a group and/or set the profiles (VMs) it runs.',
  usage: `Usage: bulkhead devices assign DEVICE [--group NAME|ID] [--profile NAME|ID ...]
         [--name LABEL]

  DEVICE is the device's name or id. --profile may be repeated; the device runs exactly the
  profiles given. --name renames it.

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    group: { type: 'string' },
    profile: { type: 'string', multiple: true },
    name: { type: 'string' },
  },
  async run(inv, ctx) {
    const ref = positional(inv, 'device name or id');
    const group = optionalString(inv, 'group');
    const profiles = stringList(inv, 'profile');
    const name = optionalString(inv, 'name');
    if (group === undefined && profiles.length === 0 && name === undefined) {
      throw new BulkheadError(ErrorCodes.USAGE, 'give --group, --profile or --name');
    }
    const api = await connect(inv);
    const body = {
      ...(group ? { groupId: await groupId(api, group, '--group') } : {}),
      ...(profiles.length > 0
        ? { profiles: await Promise.all(profiles.map((p) => profileId(api, p, '--profile'))) }
        : {}),
      ...(name !== undefined ? { name } : {}),
    };
    const d = await onDevice(api, ref, (id) =>
      withFlags({ 'body.name': '--name' }, () =>
        api.call(endpoints.updateDevice, { params: { id }, body }),
      ),
    );
    if (!inv.json) {
      ctx.out(
        `${d.name}: group ${d.group.name}, profiles ${d.profiles.map((p) => p.name).join(', ') || '-'}`,
      );
    }
    return d;
  },
};

/** The optional apps a device chose, by name with the profile (VM) each belongs to. */
function chosenApps(d: DeviceDetail): string {
  const vm = (id: string) => d.profiles.find((p) => p.id === id)?.name ?? id;
  return d.apps.map((a) => `${a.name} (${vm(a.profileId)})`).join(', ') || 'none';
}

const devicesApps: Command = {
  name: 'devices apps',
  summary: "Add or remove a device's optional apps (the app volumes its VMs mount).",
  usage: `Usage: bulkhead devices apps DEVICE [--add APP ...] [--remove APP ...] [--vm PROFILE]

  DEVICE is the device's name or id; APP an app's name (\`bulkhead apps list\`) that a
  profile the device runs offers as optional (\`bulkhead profiles edit P --optional-app APP\`).
  Only this device's desired state changes: its VM gets the app at /apps/APP after its next
  update, downloading the app's volume alone. --vm names the profile when several the device
  runs offer APP. Without --add or --remove, shows the apps the device chose.

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    add: { type: 'string', multiple: true },
    remove: { type: 'string', multiple: true },
    vm: { type: 'string' },
  },
  async run(inv, ctx) {
    const ref = positional(inv, 'device name or id');
    const added = stringList(inv, 'add');
    const removed = stringList(inv, 'remove');
    const vm = optionalString(inv, 'vm');
    const api = await connect(inv);
    const found = await resolveDevice(api, ref);
    const current =
      found.detail ??
      (await asTyped(ref, () => api.call(endpoints.getDevice, { params: { id: found.id } })));
    if (added.length === 0 && removed.length === 0) {
      if (!inv.json) ctx.out(`${current.name}: optional apps ${chosenApps(current)}`);
      return current;
    }
    const [{ apps: catalog }, { profiles }] = await Promise.all([
      api.call(endpoints.listApps),
      api.call(endpoints.listProfiles),
    ]);
    const held = profiles.filter((p) => current.profiles.some((dp) => dp.id === p.id));
    const inVm = vm === undefined ? held : held.filter((p) => p.id === vm || p.name === vm);
    if (inVm.length === 0) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        vm === undefined
          ? `${current.name} runs no profile, so it has no optional apps`
          : `--vm: ${current.name} runs no profile "${vm}"`,
        { hint: `see its profiles with \`bulkhead devices show ${ref}\`` },
      );
    }
    const appNamed = (name: string, flag: string) => {
      const app = catalog.find((a) => a.name === name || a.id === name);
      if (!app) {
        throw new BulkheadError(ErrorCodes.NOT_FOUND, `${flag}: no app "${name}"`, {
          hint: 'list them with `bulkhead apps list`',
        });
      }
      return app;
    };
    const chosen = new Map(
      current.apps.map((a) => [
        `${a.profileId}/${a.appId}`,
        { profileId: a.profileId, appId: a.appId },
      ]),
    );
    for (const name of removed) {
      const app = appNamed(name, '--remove');
      const keys = [...chosen].filter(
        ([, a]) => a.appId === app.id && inVm.some((p) => p.id === a.profileId),
      );
      if (keys.length === 0) {
        throw new BulkheadError(
          ErrorCodes.NOT_FOUND,
          `--remove: ${current.name} has not chosen app "${name}"`,
          { hint: `see its apps with \`bulkhead devices apps ${ref}\`` },
        );
      }
      for (const [key] of keys) chosen.delete(key);
    }
    for (const name of added) {
      const app = appNamed(name, '--add');
      const offering = inVm.filter((p) =>
        p.apps.some((a) => a.appId === app.id && a.mode === 'optional'),
      );
      if (offering.length === 0) {
        const isDefault = inVm.some((p) =>
          p.apps.some((a) => a.appId === app.id && a.mode === 'default'),
        );
        throw new BulkheadError(
          ErrorCodes.VALIDATION,
          isDefault
            ? `--add: app "${name}" is a default app of ${current.name}'s profile; it has it already`
            : `--add: no profile ${current.name} runs offers app "${name}" as optional`,
          { hint: `offer it with \`bulkhead profiles edit PROFILE --optional-app ${name}\`` },
        );
      }
      if (offering.length > 1) {
        throw new BulkheadError(
          ErrorCodes.USAGE,
          `--add: profiles ${offering.map((p) => p.name).join(', ')} all offer app "${name}"; name one with --vm`,
        );
      }
      const profileId = offering[0]!.id;
      chosen.set(`${profileId}/${app.id}`, { profileId, appId: app.id });
    }
    const d = await asTyped(ref, () =>
      api.call(endpoints.updateDevice, {
        params: { id: found.id },
        body: { apps: [...chosen.values()] },
      }),
    );
    if (!inv.json) ctx.out(`${d.name}: optional apps ${chosenApps(d)}`);
    return d;
  },
};

/** `devices lock|unlock|kill|restart-vm`: a command queued for the device. */
function commandVerb(kind: 'lock' | 'unlock' | 'kill' | 'restart-vm', summary: string): Command {
  return {
    name: `devices ${kind}`,
    summary,
    usage: `Usage: bulkhead devices ${kind} DEVICE${kind === 'restart-vm' ? ' --vm PROFILE' : ''}${kind === 'kill' ? ' --yes' : ''}

  DEVICE is the device's name or id. Online devices get the command within a second (push
  channel); others at their next contact.

${CONNECTION_USAGE}`,
    options: {
      ...connectionOptions,
      ...(kind === 'restart-vm' ? { vm: { type: 'string' } } : {}),
      ...(kind === 'kill' ? { yes: { type: 'boolean' } } : {}),
    },
    async run(inv, ctx) {
      const ref = positional(inv, 'device name or id');
      if (kind === 'kill' && inv.values['yes'] !== true) {
        throw new BulkheadError(
          ErrorCodes.USAGE,
          'kill destroys the device key material and its work data for good; add --yes',
        );
      }
      const vm = kind === 'restart-vm' ? requireString(inv, 'vm') : undefined;
      const api = await connect(inv);
      const body =
        vm !== undefined ? { kind, profileId: await profileId(api, vm, '--vm') } : { kind };
      const command = await onDevice(api, ref, (id) =>
        api.call(endpoints.issueCommand, { params: { id }, body }),
      );
      if (!inv.json) {
        ctx.out(
          `Queued ${kind}${vm === undefined ? '' : ` of ${vm}`} for ${ref} (${command.state}); ` +
            `see \`bulkhead devices commands ${ref}\`.`,
        );
      }
      return command;
    },
  };
}

const groupsList = listCommand('groups list', endpoints.listGroups, 'List device groups.', {
  name: (g) => g.name,
  devices: (g) => g.devices,
  created: (g) => when(g.createdAt),
  description: (g) => g.description || '-',
});

const groupsCreate: Command = {
  name: 'groups create',
  summary: 'Create a device group.',
  usage: `Usage: bulkhead groups create --name NAME [--description TEXT]\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions, name: { type: 'string' }, description: { type: 'string' } },
  async run(inv, ctx) {
    const description = optionalString(inv, 'description');
    const body = { name: requireString(inv, 'name'), ...(description ? { description } : {}) };
    const api = await connect(inv);
    const group = await withFlags(
      { 'body.name': '--name', 'body.description': '--description' },
      () => api.call(endpoints.createGroup, { body }),
    );
    if (!inv.json) ctx.out(`Created group ${group.name}.`);
    return group;
  },
};

const appsList: Command = {
  name: 'apps list',
  summary: 'List the app catalog (app volumes profiles may offer).',
  usage: `Usage: bulkhead apps list\n\n  Each app with its image and that image's released version; --json adds the ids.\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const answer = await api.call(endpoints.listApps);
    if (!inv.json) {
      const { images } = await api.call(endpoints.listImages, { query: { kind: 'app' } });
      const imageOf = (id: string) => images.find((i) => i.id === id);
      printTable(ctx, answer.apps, {
        name: (a) => a.name,
        title: (a) => a.displayName,
        image: (a) => imageOf(a.imageId)?.name ?? a.imageId,
        released: (a) => {
          const image = imageOf(a.imageId);
          return image?.release ? `${image.name}@${image.release.version}` : '-';
        },
      });
    }
    return answer;
  },
};

const appsCreate: Command = {
  name: 'apps create',
  summary: 'Add an app to the catalog: an app image that profiles may offer.',
  usage: `Usage: bulkhead apps create --name NAME --image IMAGE [--title TEXT] [--description TEXT]

  NAME is the app's name and its mount point in the VM (/apps/NAME; 1-16 of a-z, 0-9, -).
  IMAGE is an image of kind app (\`bulkhead images list --kind app\`), by name or id. --title
  is what people read (default NAME). Offer it with \`bulkhead profiles edit PROFILE
  --optional-app NAME\` (or --app NAME for every device of the profile).

${CONNECTION_USAGE}`,
  options: {
    ...connectionOptions,
    name: { type: 'string' },
    image: { type: 'string' },
    title: { type: 'string' },
    description: { type: 'string' },
  },
  async run(inv, ctx) {
    const name = requireString(inv, 'name');
    const imageRef = requireString(inv, 'image');
    const description = optionalString(inv, 'description');
    const api = await connect(inv);
    const { images } = await api.call(endpoints.listImages, { query: {} });
    const image = images.find((i) => i.name === imageRef || i.id === imageRef);
    if (!image) {
      throw new BulkheadError(ErrorCodes.NOT_FOUND, `--image: no image "${imageRef}"`, {
        hint: 'push one with `bulkhead image push` or list them with `bulkhead images list`',
      });
    }
    const body = {
      name,
      displayName: optionalString(inv, 'title') ?? name,
      ...(description === undefined ? {} : { description }),
      imageId: image.id,
    };
    const app = await withFlags(
      {
        'body.name': '--name',
        'body.displayName': '--title',
        'body.description': '--description',
        'body.imageId': '--image',
      },
      () => api.call(endpoints.createApp, { body }),
    );
    if (!inv.json) ctx.out(`Created app ${app.name} (image ${image.name}).`);
    return app;
  },
};

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
    const uses = integerOption(inv, 'uses', 1, 10_000);
    const hours = integerOption(inv, 'expires-in-hours', 1, 720);
    const note = optionalString(inv, 'note');
    const group = requireString(inv, 'group');
    const api = await connect(inv);
    const body = {
      groupId: await groupId(api, group, '--group'),
      ...(uses ? { uses } : {}),
      ...(hours ? { expiresInHours: hours } : {}),
      ...(note ? { note } : {}),
    };
    const created = await withFlags({ 'body.note': '--note' }, () =>
      api.call(endpoints.createEnrolmentToken, { body }),
    );
    if (!inv.json) {
      ctx.out(created.token);
      ctx.err(
        `Enrolment token ${created.id} for group ${group}: ${created.usesLeft} use(s) until ${when(created.expiresAt)}. ` +
          'It is not shown again. On a PC: bulkhead engine enroll --center URL --token TOKEN',
      );
    }
    return created;
  },
};

const tokensList: Command = {
  name: 'tokens list',
  summary: 'List enrolment tokens (never their secrets), with the group each enrols into.',
  usage: `Usage: bulkhead tokens list

  Each token's id (what \`bulkhead tokens revoke\` takes), its group, the uses it has left and
  when it expires.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const answer = await api.call(endpoints.listEnrolmentTokens);
    if (!inv.json) {
      const { groups } = await api.call(endpoints.listGroups);
      const names = new Map(groups.map((g) => [g.id, g.name]));
      const nowMs = Date.now();
      printTable(ctx, answer.tokens, {
        id: (t) => t.id,
        group: (t) => names.get(t.groupId) ?? 'a deleted group',
        'uses left': (t) => t.usesLeft,
        expires: (t) => `${when(t.expiresAt)}${t.expiresAt <= nowMs ? ' (expired)' : ''}`,
        note: (t) => t.note,
      });
    }
    return answer;
  },
};

const tokensRevoke: Command = {
  name: 'tokens revoke',
  summary: 'Revoke an enrolment token by id.',
  usage: `Usage: bulkhead tokens revoke TOKEN-ID

  TOKEN-ID is the id \`bulkhead tokens list\` shows (not the secret).

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const id = positional(inv, 'token id');
    const none = () =>
      new BulkheadError(ErrorCodes.NOT_FOUND, `no enrolment token ${id}`, {
        hint: 'give an id from `bulkhead tokens list`',
      });
    // Center takes only ids it made; anything else names no token.
    if (!FleetIdSchema.safeParse(id).success) throw none();
    const api = await connect(inv);
    try {
      await api.call(endpoints.revokeEnrolmentToken, { params: { id } });
    } catch (err) {
      if (isBulkheadError(err, ErrorCodes.NOT_FOUND)) throw none();
      throw err;
    }
    if (!inv.json) ctx.out(`Revoked enrolment token ${id}.`);
    return { revoked: id };
  },
};

export const fleetCommands: Command[] = [
  devicesList,
  devicesShow,
  devicesCommands,
  devicesAssign,
  devicesApps,
  commandVerb('lock', 'Lock a device: its VMs stop and may not start until unlocked.'),
  commandVerb('unlock', 'Unlock a locked device.'),
  commandVerb('kill', 'Kill a device: crypto-erase its work data and cut it off for good.'),
  commandVerb('restart-vm', 'Restart one VM of a device.'),
  groupsList,
  groupsCreate,
  appsList,
  appsCreate,
  tokensCreate,
  tokensList,
  tokensRevoke,
];
