import {
  DEFAULT_ENGINE_DATA_DIR,
  enroll,
  formatEngineStatus,
  readEngineStatus,
  acceptUpdate,
  takeScreenshot,
} from '../engine/index.ts';
import { writeFile } from 'node:fs/promises';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { engineRunCommand } from './engine-run.ts';
import { optionalString, requireString, type Command, type Invocation } from './command.ts';

function dataDir(inv: Invocation): string {
  return optionalString(inv, 'data') ?? process.env.BULKHEAD_ENGINE_DATA ?? DEFAULT_ENGINE_DATA_DIR;
}

const enrollCommand: Command = {
  name: 'engine enroll',
  summary: 'Enrol this PC with Center using a one-time enrolment token.',
  usage: `Usage: bulkhead engine enroll --center URL --token TOKEN [--name NAME] [--data DIR]
         [--tpm auto|off|TCTI] [--force]

  Makes the device's Ed25519 key pair (the private key stays in DIR, mode 0600), reports the
  hardware inventory and stores the identity with Center's key pinned.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.
  --force enrols an already enrolled PC again, as a new device with a new key.
  --tpm chooses where the device's encryption key (which Center wraps data keys to) is kept:
  auto (default, or $BULKHEAD_TPM) seals it with the PC's TPM (/dev/tpmrm0) when there is one,
  off keeps it in a key file (mode 0600, the weaker fallback), any other value is a tpm2-tools
  TCTI. Use the same setting for engine run. See docs/keys.md.`,
  options: {
    center: { type: 'string' },
    token: { type: 'string' },
    name: { type: 'string' },
    data: { type: 'string' },
    force: { type: 'boolean' },
    tpm: { type: 'string' },
  },
  async run(inv, ctx) {
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
  statusCommand,
  acceptCommand,
  screenshotCommand,
  engineRunCommand,
];
