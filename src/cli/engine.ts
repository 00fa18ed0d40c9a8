import {
  choosePersonal,
  DEFAULT_ENGINE_DATA_DIR,
  enroll,
  formatEngineStatus,
  type PersonalChoice,
  readEngineStatus,
  acceptUpdate,
  readSwitcherUrl,
  takeScreenshot,
} from '../engine/index.ts';
import { writeFile } from 'node:fs/promises';
import { BulkheadError, ErrorCodes, ImageNameSchema } from '../protocol/index.ts';
import { engineRunCommand } from './engine-run.ts';
import { optionalString, requireString, type Command, type Invocation } from './command.ts';

function dataDir(inv: Invocation): string {
  return optionalString(inv, 'data') ?? process.env.BULKHEAD_ENGINE_DATA ?? DEFAULT_ENGINE_DATA_DIR;
}

const enrollCommand: Command = {
  name: 'engine enroll',
  summary: 'Enrol this PC with Center using a one-time enrolment token.',
  usage: `Usage: bulkhead engine enroll --center URL --token TOKEN [--name NAME] [--data DIR]
         [--tpm auto|off|TCTI] [--force] [--personal-image NAME | --personal-disk FILE]

  Makes the device's Ed25519 key pair (the private key stays in DIR, mode 0600), reports the
  hardware inventory and stores the identity with Center's key pinned.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.
  --force enrols an already enrolled PC again, as a new device with a new key.
  --tpm chooses where the device's encryption key (which Center wraps data keys to) is kept:
  auto (default, or $BULKHEAD_TPM) seals it with the PC's TPM (/dev/tpmrm0) when there is one,
  off keeps it in a key file (mode 0600, the weaker fallback), any other value is a tpm2-tools
  TCTI. Use the same setting for engine run. See docs/keys.md.
  --personal-image NAME     the system image the personal VM boots, among those its profile
                            offers (default: the profile's first)
  --personal-disk FILE      the personal VM boots a disk image you bring instead
  The choice is kept on this PC only (DIR/personal); Center never learns it.`,
  options: {
    center: { type: 'string' },
    token: { type: 'string' },
    name: { type: 'string' },
    data: { type: 'string' },
    force: { type: 'boolean' },
    tpm: { type: 'string' },
    'personal-image': { type: 'string' },
    'personal-disk': { type: 'string' },
  },
  async run(inv, ctx) {
    // A brought disk that is not there fails before the token is spent.
    const personal = personalChoiceOf(inv, false);
    if (personal) await choosePersonal(dataDir(inv), personal);
    const identity = await enroll({
      tpm: optionalString(inv, 'tpm') ?? process.env.BULKHEAD_TPM ?? 'auto',
      centerUrl: requireString(inv, 'center'),
      token: requireString(inv, 'token'),
      name: optionalString(inv, 'name'),
      dataDir: dataDir(inv),
      force: inv.values.force === true,
    });
    const result = {
      deviceId: identity.deviceId,
      centerUrl: identity.centerUrl,
      centerKeyId: identity.centerKey.keyid,
      dataDir: dataDir(inv),
      keyProtection: identity.keyProtection,
      ...(personal ? { personal } : {}),
    };
    if (!inv.json) {
      ctx.out(`Enrolled with ${identity.centerUrl} as device ${identity.deviceId}`);
      ctx.out(`Center's key ${identity.centerKey.keyid} is pinned; data in ${result.dataDir}`);
      ctx.out(
        identity.keyProtection === 'tpm'
          ? "The device's encryption key is sealed by the TPM"
          : "The device's encryption key is in a key file (no TPM: the weaker fallback, docs/keys.md)",
      );
    }
    return result;
  },
};

/** The --personal-image / --personal-disk (or, with `bare`, --image / --disk) choice, if any. */
function personalChoiceOf(inv: Invocation, bare: boolean): PersonalChoice | undefined {
  const [imageFlag, diskFlag] = bare ? ['image', 'disk'] : ['personal-image', 'personal-disk'];
  const image = optionalString(inv, imageFlag);
  const disk = optionalString(inv, diskFlag);
  if (image !== undefined && disk !== undefined) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `give --${imageFlag} or --${diskFlag}, not both: the personal VM boots one of them`,
    );
  }
  if (image !== undefined) {
    const parsed = ImageNameSchema.safeParse(image);
    if (!parsed.success) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `--${imageFlag} ${JSON.stringify(image)}: not an image name (letters, digits, . _ + -)`,
      );
    }
    return { image };
  }
  return disk === undefined ? undefined : { disk };
}

const personalChooseCommand: Command = {
  name: 'engine personal',
  summary: 'Choose what the personal VM boots: an image its profile offers, or your own disk.',
  usage: `Usage: bulkhead engine personal (--image NAME | --disk FILE) [--data DIR]

  --image NAME   one of the system images the personal profile offers
  --disk FILE    a raw or qcow2 disk image of your own on this PC
  The choice is kept on this PC only (DIR/personal); Center never learns it. Engine boots it
  from its next start of the personal VM.`,
  options: { image: { type: 'string' }, disk: { type: 'string' }, data: { type: 'string' } },
  async run(inv, ctx) {
    const choice = personalChoiceOf(inv, true);
    if (!choice) {
      throw new BulkheadError(ErrorCodes.USAGE, 'give --image NAME or --disk FILE');
    }
    const kept = await choosePersonal(dataDir(inv), choice);
    if (!inv.json) {
      ctx.out(
        'image' in kept
          ? `The personal VM will boot the image ${kept.image}`
          : `The personal VM will boot your disk ${kept.disk}`,
      );
    }
    return kept;
  },
};

const statusCommand: Command = {
  name: 'engine status',
  summary: "Show this PC's enrolment, connection to Center, desired state, VMs and queue.",
  usage: `Usage: bulkhead engine status [--data DIR]

  Reads Engine's state files; works whether \`engine run\` is running or not.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.`,
  options: { data: { type: 'string' } },
  async run(inv, ctx) {
    const status = await readEngineStatus(dataDir(inv));
    if (!inv.json) for (const line of formatEngineStatus(status, Date.now())) ctx.out(line);
    return status;
  },
};

const acceptCommand: Command = {
  name: 'engine accept',
  summary: 'Allow a staged update to switch now (all VMs, or one with --vm).',
  usage: `Usage: bulkhead engine accept [--vm NAME] [--data DIR]

  A staged update switches when its VM is off, at its deadline, or when the user accepts it.
  The running Engine switches at its next pass (within seconds).`,
  options: { vm: { type: 'string' }, data: { type: 'string' } },
  async run(inv, ctx) {
    const vm = optionalString(inv, 'vm') ?? null;
    await acceptUpdate(dataDir(inv), vm);
    if (!inv.json) ctx.out(`Accepted the staged update of ${vm ?? 'every VM'}`);
    return { accepted: vm ?? 'all' };
  },
};

const switcherCommand: Command = {
  name: 'engine switcher',
  summary: "Print the switcher's address: the page where the person at this PC uses its VMs.",
  usage: `Usage: bulkhead engine switcher [--data DIR]

  Prints the address (http://127.0.0.1:PORT/?key=…) of the switcher \`engine run\` serves: the
  PC's VMs, their screens, update prompts and the lease. Open it in the PC's own browser (the
  kiosk or desktop session opens it at login). The key changes every time Engine starts and
  lets anyone on this PC who has it use the VMs: do not share it.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.`,
  options: { data: { type: 'string' } },
  async run(inv, ctx) {
    const url = await readSwitcherUrl(dataDir(inv));
    if (!inv.json) ctx.out(url);
    return { url };
  },
};

const screenshotCommand: Command = {
  name: 'engine screenshot',
  summary: "Save a VM's screen as a PNG.",
  usage: `Usage: bulkhead engine screenshot --vm NAME --out FILE.png [--data DIR]

  Captures the screen of the running VM NAME through its screen monitor; works whether
  \`engine run\` is running or not. Replaces FILE.png if it exists.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.`,
  options: { vm: { type: 'string' }, out: { type: 'string' }, data: { type: 'string' } },
  async run(inv, ctx) {
    const vm = requireString(inv, 'vm');
    const out = requireString(inv, 'out');
    const shot = await takeScreenshot(dataDir(inv), vm);
    try {
      await writeFile(out, shot.png);
    } catch (err) {
      throw new BulkheadError(
        ErrorCodes.INPUT_UNREADABLE,
        `cannot write ${out}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    const result = {
      vm,
      out,
      width: shot.width,
      height: shot.height,
      bytes: shot.png.length,
      variance: Math.round(shot.variance * 100) / 100,
    };
    if (!inv.json) ctx.out(`Saved the screen of ${vm} (${shot.width}×${shot.height}) to ${out}`);
    return result;
  },
};

export const engineCommands: Command[] = [
  enrollCommand,
  personalChooseCommand,
  statusCommand,
  acceptCommand,
  switcherCommand,
  screenshotCommand,
  engineRunCommand,
];
