import { readFile } from 'node:fs/promises';
import { basename, extname } from 'node:path';
import {
  BulkheadError,
  DEFAULT_VM_MACHINE,
  endpoints,
  ErrorCodes,
  HealthCheckSchema,
  IsolationPolicySchema,
  NetworkEndpointSchema,
  ProfileKindSchema,
  PublisherNameSchema,
  ResetPolicySchema,
  ShortNameSchema,
  type ApiClient,
  type App,
  type ImageDetail,
  type ImageInfo,
  type IsolationPolicy,
  type HealthCheck,
  type Profile,
  type ProfileApp,
  type Publisher,
  type UpdateProfileRequest,
  type VmMachineHint,
} from '../protocol/index.ts';
import { loadPublicKey } from '../signing/index.ts';
import {
  integerOption,
  optionalString,
  parseImageRef,
  requireString,
  stringList,
  type Command,
  type CommandContext,
  type Invocation,
} from './command.ts';
import { formatBytes } from './progress.ts';
import { printTable, when } from './remote.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * What Center offers devices, by name: trusted publisher keys (`publishers`), VM profiles
 * (`profiles`) and the versions of Center's images (`images`, plural: Center's catalog; the
 * singular `image` group works on local stores). Names are resolved to ids here, from the
 * lists Center gives every role that may read them.
 */

function positional(inv: Invocation, what: string): string {
  const v = inv.positionals[0];
  if (v === undefined || v === '') throw new BulkheadError(ErrorCodes.USAGE, `give the ${what}`);
  return v;
}

function short(keyid: string): string {
  return keyid.slice(0, 16);
}

// Publishers

/** The publisher `ref` names: its name, its key id, or a unique prefix of it (8+ digits). */
function findPublisher(publishers: readonly Publisher[], ref: string): Publisher {
  const byName = publishers.find((p) => p.name === ref);
  if (byName) return byName;
  const lower = ref.toLowerCase();
  const byKey = /^[0-9a-f]{8,64}$/.test(lower)
    ? publishers.filter((p) => p.keyid.startsWith(lower))
    : [];
  if (byKey.length === 1) return byKey[0]!;
  throw new BulkheadError(
    ErrorCodes.NOT_FOUND,
    byKey.length > 1 ? `key id ${ref} is ambiguous: give more of it` : `no publisher ${ref}`,
    { hint: 'list them with `bulkhead publishers list`' },
  );
}

const publishersList: Command = {
  name: 'publishers list',
  summary: 'List the publisher keys Center trusts, and the ones revoked.',
  usage: `Usage: bulkhead publishers list\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const answer = await api.call(endpoints.listPublishers);
    if (!inv.json) {
      printTable(ctx, answer.publishers, {
        name: (p) => p.name,
        'key id': (p) => short(p.keyid),
        state: (p) => (p.revokedAt === null ? 'trusted' : `revoked ${when(p.revokedAt)}`),
        added: (p) => when(p.createdAt),
      });
    }
    return answer;
  },
};

const publishersTrust: Command = {
  name: 'publishers trust',
  summary: 'Trust a publisher key: Center accepts image versions it signs.',
  usage: `Usage: bulkhead publishers trust --key FILE.pub [--name NAME]

  --key FILE.pub  the public key \`bulkhead keys generate\` wrote (never the .key file)
  --name NAME     what to call the publisher (default: the file's name without .pub)
  Needs the admin role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, key: { type: 'string' }, name: { type: 'string' } },
  async run(inv, ctx) {
    const file = requireString(inv, 'key');
    const name = optionalString(inv, 'name') ?? basename(file, extname(file));
    if (!PublisherNameSchema.safeParse(name).success) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `${optionalString(inv, 'name') === undefined ? `the name taken from ${file}, ` : '--name '}"${name}" is not a publisher name (letters, digits and . _ @ -, at most 64); give --name`,
      );
    }
    // A private key would give its public half too, but whoever passes one is about to send
    // the secret somewhere it should not go: say so instead.
    if ((await readFile(file, 'utf8').catch(() => '')).includes('PRIVATE KEY')) {
      throw new BulkheadError(
        ErrorCodes.KEY_INVALID,
        `${file} is a private key; give the public key (the .pub file beside it) and keep this one secret`,
      );
    }
    const { key } = await loadPublicKey(file);
    const api = await connect(inv);
    const publicKey = key.export({ type: 'spki', format: 'pem' }).toString();
    const publisher = await api.call(endpoints.createPublisher, { body: { name, publicKey } });
    if (!inv.json) {
      ctx.out(
        `Trusted publisher ${publisher.name} (key ${short(publisher.keyid)}): versions it signs may be pushed.`,
      );
    }
    return publisher;
  },
};

const publishersRevoke: Command = {
  name: 'publishers revoke',
  summary: 'Revoke a publisher key, by name or key id; for good.',
  usage: `Usage: bulkhead publishers revoke NAME|KEYID

  The key verifies no new upload; a version no other trusted key signed can no longer be
  published, released or rolled out. Versions already out stay. Needs the admin role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const ref = positional(inv, 'publisher (NAME or KEYID)');
    const api = await connect(inv);
    const { publishers } = await api.call(endpoints.listPublishers);
    const { keyid } = findPublisher(publishers, ref);
    const revoked = await api.call(endpoints.revokePublisher, { params: { keyid } });
    if (!inv.json) {
      ctx.out(
        `Revoked publisher ${revoked.name} (key ${short(revoked.keyid)}): versions only it signed can no longer be published, released or rolled out.`,
      );
    }
    return revoked;
  },
};

// Images at Center

function releasedOf(image: ImageInfo): string {
  return image.release === null ? '-' : `${image.name}@${image.release.version}`;
}

const imagesList: Command = {
  name: 'images list',
  summary: "List Center's images and the version each releases (`image list`: a local store).",
  usage: `Usage: bulkhead images list [--kind system|app]

  Center's images; \`bulkhead image list --store DIR\` lists a local store instead.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, kind: { type: 'string' } },
  async run(inv, ctx) {
    const kind = optionalString(inv, 'kind');
    if (kind !== undefined && kind !== 'system' && kind !== 'app') {
      throw new BulkheadError(ErrorCodes.USAGE, `--kind must be system or app, not "${kind}"`);
    }
    const api = await connect(inv);
    const answer = await api.call(endpoints.listImages, { query: { kind } });
    if (!inv.json) {
      printTable(ctx, answer.images, {
        name: (i) => i.name,
        kind: (i) => i.kind,
        released: releasedOf,
        description: (i) => i.description || '-',
      });
    }
    return answer;
  },
};

const imagesShow: Command = {
  name: 'images show',
  summary: "Show one of Center's images: its versions with state, size and the released one.",
  usage: `Usage: bulkhead images show NAME\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const name = positional(inv, 'image NAME');
    const api = await connect(inv);
    const image = await imageNamed(api, name);
    if (!inv.json) {
      ctx.out(
        `${image.name} (${image.kind} image)${image.description ? `: ${image.description}` : ''}`,
      );
      ctx.out(`released: ${releasedOf(image)}`);
      if (image.versions.length === 0) {
        ctx.out('No versions yet: push one with `bulkhead image push`.');
      } else {
        ctx.out('');
        printTable(ctx, image.versions, {
          version: (v) => `${image.name}@${v.version}`,
          state: (v) => v.state,
          released: (v) => (v.released ? 'released' : ''),
          size: (v) => formatBytes(v.size),
          parent: (v) => (v.parentVersion === null ? '-' : `${image.name}@${v.parentVersion}`),
          pushed: (v) => when(v.createdAt),
        });
      }
    }
    return image;
  },
};

/** Center's image `name` with its versions; a one-line error when there is none. */
async function imageNamed(api: ApiClient, name: string): Promise<ImageDetail> {
  try {
    return await api.call(endpoints.getImage, { params: { id: name } });
  } catch (err) {
    if (err instanceof BulkheadError && err.code === ErrorCodes.NOT_FOUND) {
      throw new BulkheadError(ErrorCodes.NOT_FOUND, `no image ${name}`, {
        hint: 'list them with `bulkhead images list`',
      });
    }
    throw err;
  }
}

/** The version `ref` (NAME@VERSION) names, with its image; one-line errors naming what is missing. */
async function versionNamed(api: ApiClient, ref: string | undefined) {
  if (ref === undefined || ref === '') {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      'give the version as NAME@VERSION (e.g. debian@12.2)',
    );
  }
  const { name, version } = parseImageRef(ref, 'the version');
  const image = await imageNamed(api, name);
  const found = image.versions.find((v) => v.version === version);
  if (!found) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `${name} has no version ${version}`, {
      hint: `\`bulkhead images show ${name}\` lists its versions`,
    });
  }
  return { image, version: found };
}

const imagesRelease: Command = {
  name: 'images release',
  summary: 'Make NAME@VERSION the version devices get outside rollouts (publishing a draft).',
  usage: `Usage: bulkhead images release NAME@VERSION

  Devices holding a profile that runs the image get this version unless a rollout gives them
  another. A draft is published first; a retired version cannot be released. Needs the
  operator role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const { image, version } = await versionNamed(api, inv.positionals[0]);
    const label = `${image.name}@${version.version}`;
    if (version.state === 'retired') {
      throw new BulkheadError(
        ErrorCodes.VERSION_STATE,
        `${label} is retired; a retired version cannot be released again (push a new version)`,
      );
    }
    const after = await api.call(endpoints.publishVersion, {
      params: { id: image.name, version: version.version },
      body: { release: true },
    });
    if (!inv.json) {
      if (version.released) ctx.out(`${label} already is the released version.`);
      else {
        const before = image.release === null ? '' : ` (was ${releasedOf(image)})`;
        const published = version.state === 'draft' ? 'Published and released' : 'Released';
        ctx.out(`${published} ${label}${before}: devices outside a rollout get it now.`);
      }
    }
    return after;
  },
};

const imagesRetire: Command = {
  name: 'images retire',
  summary: 'Retire NAME@VERSION: no new installs (not the released version).',
  usage: `Usage: bulkhead images retire NAME@VERSION

  A retired version is given to no device any more and cannot be published again; release
  another version before retiring the released one. Needs the operator role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const { image, version } = await versionNamed(api, inv.positionals[0]);
    const label = `${image.name}@${version.version}`;
    const after = await api.call(endpoints.retireVersion, {
      params: { id: image.name, version: version.version },
    });
    if (!inv.json) {
      ctx.out(
        version.state === 'retired'
          ? `${label} already is retired.`
          : `Retired ${label}: no new installs.`,
      );
    }
    return after;
  },
};

// Profiles

const PROFILE_FLAGS = `  --image NAME              its system image, one of Center's images of kind system
  --description TEXT
  --app NAME                an app every device with the profile gets (repeatable)
  --optional-app NAME       an app offered, chosen per device (repeatable)
  --user-chooses-apps on|off
                            the PC's user may choose the optional apps too, through Engine
                            (default off: administrators choose, \`bulkhead devices apps\`)
  --network nat|restricted|none
                            ordinary outbound access, only the --allow endpoints, or none
  --allow HOST:PORT         an endpoint a restricted VM may reach (repeatable)
  --clipboard on|off        a clipboard shared with the user's other VMs (default off)
  --usb VENDOR:PRODUCT      a USB device given to this VM, in hex (repeatable)
  --encrypt-data on|off     LUKS-encrypt the VM's data volume, key escrowed at Center
  --require-tpm on|off      run only on PCs that seal their keys with a TPM (docs/keys.md)
  --health-timeout SECONDS  how long the guest agent has to answer after a switch (default 120)
  --health-command "CMD ARGS"
                            run in the guest after it answers; must exit 0 (split at spaces,
                            no shell); "" for none
  --health-screen on|off    the VM's screen must not be blank (one colour) by the timeout
  --lease-days N            days the VM may run without contact with Center (default 30)
  --cpus N  --memory MIB    the VM's resources (default 2 CPUs, 4096 MiB)
  --reset on-update|on-boot when the system overlay is discarded (default on-update)
  --firmware bios|uefi      the VM's firmware (default bios)
  --secure-boot on|off      UEFI Secure Boot with Microsoft's keys (needs --firmware uefi)
  --tpm on|off              a TPM 2.0, its state encrypted at rest (default off)
  --os linux|windows        the guest OS: windows adds Hyper-V enlightenments, local-time clock
  --devices virtio|compat   paravirtual devices, or AHCI/e1000/USB tablet for guests without
                            virtio drivers (default virtio)`;

const profileOptions = {
  ...connectionOptions,
  image: { type: 'string' },
  description: { type: 'string' },
  app: { type: 'string', multiple: true },
  'optional-app': { type: 'string', multiple: true },
  'user-chooses-apps': { type: 'string' },
  network: { type: 'string' },
  allow: { type: 'string', multiple: true },
  clipboard: { type: 'string' },
  usb: { type: 'string', multiple: true },
  'encrypt-data': { type: 'string' },
  'require-tpm': { type: 'string' },
  'health-timeout': { type: 'string' },
  'health-command': { type: 'string' },
  'health-screen': { type: 'string' },
  'lease-days': { type: 'string' },
  cpus: { type: 'string' },
  memory: { type: 'string' },
  reset: { type: 'string' },
  firmware: { type: 'string' },
  'secure-boot': { type: 'string' },
  tpm: { type: 'string' },
  os: { type: 'string' },
  devices: { type: 'string' },
} as const;

/** The machine `current` changed by the flags given. */
function machineFrom(inv: Invocation, current: VmMachineHint): VmMachineHint {
  const firmware = oneOf(inv, 'firmware', ['bios', 'uefi'] as const);
  const secureBoot = onOff(inv, 'secure-boot');
  const tpm = onOff(inv, 'tpm');
  const os = oneOf(inv, 'os', ['linux', 'windows'] as const);
  const devices = oneOf(inv, 'devices', ['virtio', 'compat'] as const);
  const machine: VmMachineHint = {
    firmware: firmware ?? current.firmware,
    secureBoot: secureBoot ?? current.secureBoot,
    tpm: tpm ?? current.tpm,
    os: os ?? current.os,
    devices: devices ?? current.devices,
  };
  if (machine.secureBoot && machine.firmware !== 'uefi') {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      secureBoot
        ? '--secure-boot on needs --firmware uefi (BIOS has no Secure Boot)'
        : '--firmware bios: the profile has Secure Boot on; add --secure-boot off',
    );
  }
  return machine;
}

/** What a profile's lookups need: Center's images and apps, by id and by name. */
interface Catalog {
  images: ImageInfo[];
  apps: App[];
}

async function catalogOf(api: ApiClient): Promise<Catalog> {
  const [{ images }, { apps }] = await Promise.all([
    api.call(endpoints.listImages),
    api.call(endpoints.listApps),
  ]);
  return { images, apps };
}

async function profileNamed(api: ApiClient, name: string): Promise<Profile> {
  const { profiles } = await api.call(endpoints.listProfiles);
  const p = profiles.find((x) => x.name === name);
  if (!p) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no profile ${name}`, {
      hint: 'list them with `bulkhead profiles list`',
    });
  }
  return p;
}

function systemImageId(catalog: Catalog, name: string): string {
  const image = catalog.images.find((i) => i.name === name);
  if (!image) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no image ${name}`, {
      hint: 'list them with `bulkhead images list`',
    });
  }
  if (image.kind !== 'system') {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--image ${name} is an app image; a profile runs a system image (add the app with --app)`,
    );
  }
  return image.id;
}

function appId(catalog: Catalog, name: string): string {
  const app = catalog.apps.find((a) => a.name === name);
  if (!app) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `no app ${name}`, {
      hint: 'list them with `bulkhead apps list`',
    });
  }
  return app.id;
}

function onOff(inv: Invocation, flag: string): boolean | undefined {
  const v = optionalString(inv, flag);
  if (v === undefined) return undefined;
  if (v === 'on' || v === 'off') return v === 'on';
  throw new BulkheadError(ErrorCodes.USAGE, `--${flag} must be on or off, not "${v}"`);
}

function oneOf<T extends string>(
  inv: Invocation,
  flag: string,
  values: readonly T[],
): T | undefined {
  const v = optionalString(inv, flag);
  if (v === undefined) return undefined;
  if ((values as readonly string[]).includes(v)) return v as T;
  throw new BulkheadError(
    ErrorCodes.USAGE,
    `--${flag} must be one of ${values.join(', ')}, not "${v}"`,
  );
}

function endpointsOf(inv: Invocation, flag: string) {
  return stringList(inv, flag).map((given) => {
    const at = given.lastIndexOf(':');
    const parsed = NetworkEndpointSchema.safeParse({
      host: given.slice(0, at).replace(/^\[(.*)\]$/, '$1'),
      port: Number(given.slice(at + 1)),
    });
    if (at <= 0 || !parsed.success) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `--${flag} takes HOST:PORT (e.g. vpn.example.org:443), not "${given}"`,
      );
    }
    return parsed.data;
  });
}

function usbOf(inv: Invocation, flag: string): string[] {
  return stringList(inv, flag).map((given) => {
    const v = given.toLowerCase();
    if (!/^[0-9a-f]{4}:[0-9a-f]{4}$/.test(v)) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `--${flag} takes VENDOR:PRODUCT in hex (e.g. 046d:c52b), not "${given}"`,
      );
    }
    return v;
  });
}

/** The isolation policy `current` changed by the flags given. */
function isolationFrom(
  inv: Invocation,
  current: IsolationPolicy,
  removed: { endpoints: string[]; usb: string[] },
): IsolationPolicy {
  const key = (e: { host: string; port: number }) => `${e.host}:${e.port}`;
  const allowed = [
    ...current.allowedEndpoints.filter((e) => !removed.endpoints.includes(key(e))),
    ...endpointsOf(inv, 'allow'),
  ];
  const usb = [...current.usbDevices.filter((d) => !removed.usb.includes(d)), ...usbOf(inv, 'usb')];
  return {
    network: oneOf(inv, 'network', ['nat', 'restricted', 'none'] as const) ?? current.network,
    allowedEndpoints: [...new Map(allowed.map((e) => [key(e), e])).values()],
    clipboard: onOff(inv, 'clipboard') ?? current.clipboard,
    usbDevices: [...new Set(usb)],
    encryptData: onOff(inv, 'encrypt-data') ?? current.encryptData,
    requireTpm: onOff(inv, 'require-tpm') ?? current.requireTpm,
  };
}

function healthFrom(inv: Invocation, current: HealthCheck): HealthCheck {
  const timeout = integerOption(inv, 'health-timeout', 5, 3600);
  const given = optionalString(inv, 'health-command');
  const command =
    given === undefined
      ? current.command
      : given.trim() === ''
        ? undefined
        : given.trim().split(/\s+/);
  const screen = onOff(inv, 'health-screen') ?? current.screen === true;
  return {
    timeoutSeconds: timeout ?? current.timeoutSeconds,
    ...(command === undefined ? {} : { command }),
    // Off is left out, as in profiles made before the screen could be checked.
    ...(screen ? { screen } : {}),
  };
}

/** The apps of a profile: `current` with the given ones added or their mode changed. */
function appsFrom(
  inv: Invocation,
  catalog: Catalog,
  current: readonly ProfileApp[],
  removed: readonly string[],
): ProfileApp[] {
  const apps = new Map(current.map((a) => [a.appId, a.mode]));
  for (const name of removed) apps.delete(appId(catalog, name));
  for (const name of stringList(inv, 'app')) apps.set(appId(catalog, name), 'default');
  for (const name of stringList(inv, 'optional-app')) apps.set(appId(catalog, name), 'optional');
  return [...apps].map(([id, mode]) => ({ appId: id, mode }));
}

function shortNameOf(given: string, flag: string): string {
  if (!ShortNameSchema.safeParse(given).success) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `${flag} "${given}" is not a profile name (lower-case letters, digits and -, starting with a letter)`,
    );
  }
  return given;
}

/** The profile as readable lines: names, not ids. */
function printProfile(ctx: CommandContext, p: Profile, catalog: Catalog): void {
  const image = catalog.images.find((i) => i.id === p.systemImageId);
  const appName = (id: string) => catalog.apps.find((a) => a.id === id)?.name ?? id;
  const apps = p.apps.map((a) => `${appName(a.appId)} (${a.mode})`).join(', ');
  const net = p.isolation;
  const network =
    net.network === 'restricted'
      ? `restricted to ${net.allowedEndpoints.map((e) => `${e.host}:${e.port}`).join(', ') || 'nothing'}`
      : net.network === 'none'
        ? 'none'
        : 'nat (ordinary outbound access)';
  const health = `guest agent answers within ${p.healthCheck.timeoutSeconds} s${p.healthCheck.command ? `, then \`${p.healthCheck.command.join(' ')}\` exits 0` : ''}${p.healthCheck.screen ? ', and the screen is not blank' : ''}`;
  const imageName = (id: string) => catalog.images.find((i) => i.id === id)?.name ?? id;
  const rows: [string, string][] = [
    ['kind', p.kind === 'personal' ? "personal (the user's own VM)" : 'work (managed)'],
    ['system image', image ? `${image.name} (released: ${releasedOf(image)})` : p.systemImageId],
    ...(p.kind === 'personal'
      ? [['images offered', p.personalImageIds.map(imageName).join(', ')] as [string, string]]
      : []),
    ['apps', apps || '-'],
    ['app choice', p.userChoosesApps ? "administrators and the PC's user" : 'administrators'],
    ['network', network],
    ['clipboard', net.clipboard ? 'shared' : 'off'],
    ['usb devices', net.usbDevices.join(', ') || '-'],
    ['data volume', net.encryptData ? 'encrypted (LUKS, key escrowed at Center)' : 'not encrypted'],
    ['host TPM', net.requireTpm ? 'required (PCs without one refuse this VM)' : 'not required'],
    ['health check', health],
    ['offline lease', `${p.leaseDays} days`],
    ['resources', `${p.cpus} CPU${p.cpus === 1 ? '' : 's'}, ${p.memoryMib} MiB`],
    ['system overlay', p.resetPolicy === 'on-boot' ? 'reset at every boot' : 'reset on update'],
    [
      'firmware',
      p.machine.firmware === 'uefi'
        ? `uefi, Secure Boot ${p.machine.secureBoot ? 'on' : 'off'}`
        : 'bios',
    ],
    ['tpm', p.machine.tpm ? 'TPM 2.0 (state encrypted at rest)' : 'none'],
    ['guest', `${p.machine.os}, ${p.machine.devices} devices`],
    ['devices', String(p.devices)],
  ];
  ctx.out(`${p.name}${p.description ? `: ${p.description}` : ''}`);
  for (const [k, v] of rows) ctx.out(`  ${k.padEnd(15)} ${v}`);
}

const profilesList: Command = {
  name: 'profiles list',
  summary: 'List VM profiles (work, personal, …) with their image and policies.',
  usage: `Usage: bulkhead profiles list\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const api = await connect(inv);
    const [answer, catalog] = await Promise.all([api.call(endpoints.listProfiles), catalogOf(api)]);
    if (!inv.json) {
      printTable(ctx, answer.profiles, {
        name: (p) => p.name,
        image: (p) => catalog.images.find((i) => i.id === p.systemImageId)?.name,
        network: (p) => p.isolation.network,
        data: (p) => (p.isolation.encryptData ? 'encrypted' : 'plain'),
        lease: (p) => `${p.leaseDays} d`,
        vm: (p) => `${p.cpus} cpu ${p.memoryMib} MiB`,
        devices: (p) => p.devices,
      });
    }
    return answer;
  },
};

const profilesShow: Command = {
  name: 'profiles show',
  summary: 'Show one VM profile: image, apps, isolation, health check, lease, resources.',
  usage: `Usage: bulkhead profiles show NAME\n\n${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const name = positional(inv, 'profile NAME');
    const api = await connect(inv);
    const [profile, catalog] = await Promise.all([profileNamed(api, name), catalogOf(api)]);
    if (!inv.json) printProfile(ctx, profile, catalog);
    return profile;
  },
};

const profilesCreate: Command = {
  name: 'profiles create',
  summary: 'Create a VM profile: one VM (work, personal…) that devices assigned it run.',
  usage: `Usage: bulkhead profiles create --name NAME --image NAME [options]

  --name NAME               the VM's name on the PC: lower-case letters, digits and -
  --kind work|personal      work (default): managed by Center; personal: the user's own VM,
                            its image chosen on the PC (--image is the default choice), nat
                            network, no apps, a data key that never leaves the PC
  --personal-image NAME     another system image a personal VM's user may choose (repeatable)
${PROFILE_FLAGS}
  Needs the admin role. Assign it with \`bulkhead devices assign DEVICE --profile NAME\`.

${CONNECTION_USAGE}`,
  options: {
    ...profileOptions,
    name: { type: 'string' },
    kind: { type: 'string' },
    'personal-image': { type: 'string', multiple: true },
  },
  async run(inv, ctx) {
    const name = shortNameOf(requireString(inv, 'name'), '--name');
    const kind = oneOf(inv, 'kind', ProfileKindSchema.options) ?? 'work';
    const offered = stringList(inv, 'personal-image');
    if (kind !== 'personal' && offered.length > 0) {
      throw new BulkheadError(ErrorCodes.USAGE, '--personal-image needs --kind personal');
    }
    const imageName = requireString(inv, 'image');
    const api = await connect(inv);
    const catalog = await catalogOf(api);
    const description = optionalString(inv, 'description');
    const lease = integerOption(inv, 'lease-days', 1, 365);
    const cpus = integerOption(inv, 'cpus', 1, 64);
    const memory = integerOption(inv, 'memory', 64, 1024 * 1024);
    const reset = oneOf(inv, 'reset', ResetPolicySchema.options);
    const profile = await api.call(endpoints.createProfile, {
      body: {
        name,
        systemImageId: systemImageId(catalog, imageName),
        apps: appsFrom(inv, catalog, [], []),
        isolation: isolationFrom(inv, IsolationPolicySchema.parse({}), { endpoints: [], usb: [] }),
        healthCheck: healthFrom(inv, HealthCheckSchema.parse({})),
        ...(description === undefined ? {} : { description }),
        ...(lease === undefined ? {} : { leaseDays: lease }),
        ...(cpus === undefined ? {} : { cpus }),
        ...(memory === undefined ? {} : { memoryMib: memory }),
        ...(reset === undefined ? {} : { resetPolicy: reset }),
        machine: machineFrom(inv, DEFAULT_VM_MACHINE),
        userChoosesApps: onOff(inv, 'user-chooses-apps') ?? false,
        kind,
        personalImageIds: offered.map((n) => systemImageId(catalog, n)),
      },
    });
    if (!inv.json) {
      ctx.out(`Created profile ${profile.name}.`);
      printProfile(ctx, profile, catalog);
    }
    return profile;
  },
};

const profilesEdit: Command = {
  name: 'profiles edit',
  summary: 'Change a VM profile; every device holding it is told at once.',
  usage: `Usage: bulkhead profiles edit NAME [options]

  Only what is given changes. The list flags add: --app, --optional-app, --allow, --usb;
  --remove-app NAME, --disallow HOST:PORT and --remove-usb VENDOR:PRODUCT take away.
  --rename NEW              a new name for the profile
${PROFILE_FLAGS}
  Needs the admin role.

${CONNECTION_USAGE}`,
  options: {
    ...profileOptions,
    rename: { type: 'string' },
    'remove-app': { type: 'string', multiple: true },
    disallow: { type: 'string', multiple: true },
    'remove-usb': { type: 'string', multiple: true },
  },
  async run(inv, ctx) {
    const name = positional(inv, 'profile NAME');
    const api = await connect(inv);
    const [current, catalog] = await Promise.all([profileNamed(api, name), catalogOf(api)]);
    const image = optionalString(inv, 'image');
    const rename = optionalString(inv, 'rename');
    const description = optionalString(inv, 'description');
    const lease = integerOption(inv, 'lease-days', 1, 365);
    const cpus = integerOption(inv, 'cpus', 1, 64);
    const memory = integerOption(inv, 'memory', 64, 1024 * 1024);
    const reset = oneOf(inv, 'reset', ResetPolicySchema.options);
    const removed = {
      endpoints: endpointsOf(inv, 'disallow').map((e) => `${e.host}:${e.port}`),
      usb: usbOf(inv, 'remove-usb'),
    };
    const isolation = isolationFrom(inv, current.isolation, removed);
    const healthCheck = healthFrom(inv, current.healthCheck);
    const apps = appsFrom(inv, catalog, current.apps, stringList(inv, 'remove-app'));
    const machine = machineFrom(inv, current.machine);
    const userChoosesApps = onOff(inv, 'user-chooses-apps');
    const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
    const body: UpdateProfileRequest = {
      ...(rename === undefined ? {} : { name: shortNameOf(rename, '--rename') }),
      ...(description === undefined ? {} : { description }),
      ...(image === undefined ? {} : { systemImageId: systemImageId(catalog, image) }),
      ...(same(apps, current.apps) ? {} : { apps }),
      ...(same(isolation, current.isolation) ? {} : { isolation }),
      ...(same(healthCheck, current.healthCheck) ? {} : { healthCheck }),
      ...(lease === undefined ? {} : { leaseDays: lease }),
      ...(cpus === undefined ? {} : { cpus }),
      ...(memory === undefined ? {} : { memoryMib: memory }),
      ...(reset === undefined ? {} : { resetPolicy: reset }),
      ...(same(machine, current.machine) ? {} : { machine }),
      ...(userChoosesApps === undefined || userChoosesApps === current.userChoosesApps
        ? {}
        : { userChoosesApps }),
    };
    if (Object.keys(body).length === 0) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        'nothing to change: give at least one option (see `bulkhead profiles edit --help`)',
      );
    }
    const profile = await api.call(endpoints.updateProfile, { params: { id: current.id }, body });
    if (!inv.json) {
      ctx.out(
        `Changed profile ${profile.name}${profile.devices > 0 ? `; its ${profile.devices} device(s) are told now` : ''}.`,
      );
      printProfile(ctx, profile, catalog);
    }
    return profile;
  },
};

const profilesDelete: Command = {
  name: 'profiles delete',
  summary: 'Delete a VM profile that no device holds.',
  usage: `Usage: bulkhead profiles delete NAME

  Refused while devices hold it or a rollout targets it. Needs the admin role.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions },
  async run(inv, ctx) {
    const name = positional(inv, 'profile NAME');
    const api = await connect(inv);
    const profile = await profileNamed(api, name);
    await api.call(endpoints.deleteProfile, { params: { id: profile.id } });
    if (!inv.json) ctx.out(`Deleted profile ${profile.name}.`);
    return { deleted: profile.name, id: profile.id };
  },
};

export const catalogCommands: Command[] = [
  publishersList,
  publishersTrust,
  publishersRevoke,
  imagesList,
  imagesShow,
  imagesRelease,
  imagesRetire,
  profilesList,
  profilesShow,
  profilesCreate,
  profilesEdit,
  profilesDelete,
];
