import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
} from 'node:crypto';
import { chmod, mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { cpus, hostname, totalmem, type } from 'node:os';
import { join } from 'node:path';
import { keyIdOf } from '../signing/index.ts';
import {
  BulkheadError,
  createApiClient,
  deviceEndpoints,
  ErrorCodes,
  errnoCode,
  BULKHEAD_VERSION,
  InventorySchema,
  toName,
  toText,
  type Fetch,
  type Inventory,
} from '../protocol/index.ts';
import { systemClock, type Clock } from './clock.ts';
import { engineFiles, type Identity } from './state.ts';
import { exists, fsyncDir } from '../durable/index.ts';
import { createEncryptionKey, destroyEncryptionKey } from './device-keys.ts';
import type { TpmSetting } from './tpm.ts';

export interface EnrollOptions {
  /** Center's base URL (`https://center.example.org`). */
  centerUrl: string;
  /** The one-time enrolment token an administrator created. Never logged or stored. */
  token: string;
  dataDir: string;
  /** Label for administrators; Center uses the host name when omitted. */
  name?: string;
  /** Replace an existing identity (the device becomes a new device at Center). */
  force?: boolean;
  fetch?: Fetch;
  /** The inventory to report; gathered from this host when omitted. */
  inventory?: Inventory;
  clock?: Clock;
  timeoutMs?: number;
  /**
   * Engine's `tpm` setting: where the device's encryption key is sealed (`auto`, `off`, or a
   * TCTI; default `auto`). Without a TPM the key is kept in a key file (docs/keys.md).
   */
  tpm?: TpmSetting;
}

/** A base URL without a trailing slash, or a usage error naming the flag. */
export function normalizeCenterUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new BulkheadError(ErrorCodes.USAGE, `--center "${raw}" is not a URL`, {
      hint: 'give Center’s base URL, like https://center.example.org',
    });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--center must be an http or https URL, not "${raw}"`,
    );
  }
  if (url.search !== '' || url.hash !== '') {
    throw new BulkheadError(ErrorCodes.USAGE, `--center must not have a query or fragment`);
  }
  return url.href.replace(/\/+$/, '');
}

/**
 * Enrols this device with Center: makes its Ed25519 key pair (the private key never leaves the
 * data directory, mode 0600), reports its inventory with the one-time token, and stores the
 * identity with Center's key pinned.
 *
 * A key left by an enrolment that did not finish (Center unreachable, say) is used again, so a
 * retry with the same token works; `force` starts from a fresh key.
 *
 * @throws BulkheadError `ERR_IDENTITY_EXISTS` when the device is enrolled and `force` is not
 *   set; Center's refusal (`ERR_ENROLMENT_TOKEN_REFUSED`, `ERR_DEVICE_EXISTS`, …); the
 *   network errors of the API client (`createApiClient`).
 */
export async function enroll(options: EnrollOptions): Promise<Identity> {
  const centerUrl = normalizeCenterUrl(options.centerUrl);
  const clock = options.clock ?? systemClock;
  const files = engineFiles(options.dataDir, { clock });
  await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
  // The directory holds the private key: nobody else may even list it.
  await chmod(options.dataDir, 0o700);

  const existing = await files.identity.read();
  if (existing !== undefined && options.force !== true) {
    throw new BulkheadError(
      ErrorCodes.IDENTITY_EXISTS,
      `this device is already enrolled with ${existing.centerUrl} as ${existing.deviceId}`,
      { hint: 'add --force to enrol it again as a new device (a new key; the old id is dropped)' },
    );
  }
  if (options.force === true) {
    // What belonged to the old identity goes with it; the VMs on this PC stay.
    await files.identity.remove();
    await rm(files.privateKeyPath, { force: true });
    await destroyEncryptionKey(options.dataDir);
    await files.desiredState.remove();
    await files.killNotice.remove();
    await files.sync.remove();
    await rm(files.queueDir, { recursive: true, force: true });
  }

  const privateKey = await createOrReuseKey(files.privateKeyPath);
  const publicPem = createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }).toString();
  const encryption = await createEncryptionKey(options.dataDir, options.tpm ?? 'auto');
  const inventory = InventorySchema.parse(options.inventory ?? (await gatherInventory()));

  const center = createApiClient({
    baseUrl: centerUrl,
    fetch: options.fetch ?? fetch,
    timeoutMs: options.timeoutMs ?? 30_000,
  });
  const answer = await center.call(deviceEndpoints.enrol, {
    body: {
      token: options.token,
      publicKey: publicPem,
      encryptionKey: encryption.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
      inventory,
      ...(options.name === undefined ? {} : { name: options.name }),
    },
  });
  let centerKeyId: string;
  try {
    centerKeyId = keyIdOf(createPublicKey(answer.centerKey.publicKey));
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.CENTER_PROTOCOL,
      'Center sent a public key that does not parse',
      {
        cause: err,
      },
    );
  }
  if (centerKeyId !== answer.centerKey.keyid) {
    throw new BulkheadError(
      ErrorCodes.CENTER_PROTOCOL,
      `Center's key id ${answer.centerKey.keyid} does not match the key it sent`,
    );
  }
  const identity: Identity = {
    version: 1,
    deviceId: answer.deviceId,
    centerUrl,
    centerKey: answer.centerKey,
    publicKey: publicPem,
    enrolledAt: clock.now(),
    keyProtection: encryption.protection,
  };
  await files.identity.write(identity);
  return identity;
}

/** Creates the device key with O_EXCL, or loads the one an unfinished enrolment left. */
async function createOrReuseKey(path: string): Promise<KeyObject> {
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  let handle;
  try {
    handle = await open(path, 'wx', 0o600);
  } catch (err) {
    if (errnoCode(err) !== 'EEXIST') throw err;
    return loadPrivateKeyFile(path);
  }
  try {
    await handle.writeFile(pem);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fsyncDir(join(path, '..'));
  return privateKey;
}

async function loadPrivateKeyFile(path: string): Promise<KeyObject> {
  const info = await stat(path);
  if ((info.mode & 0o077) !== 0) {
    throw new BulkheadError(
      ErrorCodes.KEY_INVALID,
      `the device key ${path} is readable by others (mode ${(info.mode & 0o777).toString(8)})`,
      { hint: 'the key may have leaked: enrol again with --force to make a new one' },
    );
  }
  try {
    const key = createPrivateKey(await readFile(path, 'utf8'));
    if (key.asymmetricKeyType === 'ed25519') return key;
  } catch {
    // Reported below.
  }
  throw new BulkheadError(ErrorCodes.KEY_INVALID, `${path} is not an Ed25519 private key`, {
    hint: 'enrol again with --force to make a new one',
  });
}

/** The enrolled identity and the device key, for `engine run` and the Center client. */
export async function loadIdentity(
  dataDir: string,
  deps: { clock?: Clock } = {},
): Promise<{ identity: Identity; privateKey: KeyObject }> {
  const files = engineFiles(dataDir, deps);
  const identity = await files.identity.read();
  if (
    (await files.killNotice.read({ repair: false })) !== undefined &&
    !(await exists(files.privateKeyPath))
  ) {
    throw new BulkheadError(
      ErrorCodes.DEVICE_KILLED,
      `this device was killed by Center: its keys and work data are erased and it no longer contacts Center (${dataDir})`,
      { hint: 'to use this PC again, enrol it as a new device: bulkhead engine enroll --force' },
    );
  }
  if (identity === undefined) {
    throw new BulkheadError(ErrorCodes.IDENTITY_MISSING, `no device identity in ${dataDir}`, {
      hint: 'enrol the device first: bulkhead engine enroll --center URL --token TOKEN',
    });
  }
  return { identity, privateKey: await loadPrivateKeyFile(files.privateKeyPath) };
}

/*
 * Inventory from the host: the os module and sysfs. Every field is optional except the host
 * name, and every read that fails (no DMI in a container, no permission for the serial) just
 * leaves its field out. The schema's bounds are applied by truncation, never by failing.
 */

async function sysText(path: string): Promise<string | undefined> {
  try {
    const text = (await readFile(path, 'utf8')).trim();
    return text === '' ? undefined : text;
  } catch {
    return undefined;
  }
}

/** A firmware or hardware string as the inventory takes it: bounded, and text (no NUL). */
const cut = (s: string | undefined, max = 200) =>
  s === undefined ? undefined : toText(s.slice(0, max));

/** Physical block devices: no loop, RAM, zram or device-mapper devices. */
async function gatherDisks(): Promise<NonNullable<Inventory['disks']>> {
  let names: string[];
  try {
    names = await readdir('/sys/block');
  } catch {
    return [];
  }
  const disks: NonNullable<Inventory['disks']> = [];
  for (const name of names.sort()) {
    if (/^(loop|ram|zram|dm-|md|sr|fd|nbd)/.test(name)) continue;
    const sectors = Number(await sysText(`/sys/block/${name}/size`));
    if (!Number.isSafeInteger(sectors) || sectors <= 0) continue;
    const model = cut(await sysText(`/sys/block/${name}/device/model`));
    disks.push({
      name: name.slice(0, 64),
      ...(model === undefined ? {} : { model }),
      // The kernel counts sizes in 512-byte sectors, whatever the device's block size.
      sizeBytes: sectors * 512,
    });
    if (disks.length === 32) break;
  }
  return disks;
}

/** What this host is, bounded to the inventory schema. */
export async function gatherInventory(): Promise<Inventory> {
  const cpuList = cpus();
  const dmi = (f: string) => sysText(`/sys/class/dmi/id/${f}`);
  const [biosVendor, biosVersion, vendor, model, serial] = await Promise.all([
    dmi('bios_vendor'),
    dmi('bios_version'),
    dmi('sys_vendor'),
    dmi('product_name'),
    dmi('product_serial'),
  ]);
  const kvm = await stat('/dev/kvm').then(
    () => true,
    () => false,
  );
  const inventory: Inventory = {
    hostname: toName((hostname() || 'unnamed').slice(0, 253)),
    ...(cpuList.length > 0
      ? {
          cpu: {
            model: cut(cpuList[0]?.model.trim() || 'unknown') as string,
            cores: Math.min(cpuList.length, 4096),
          },
        }
      : {}),
    memoryBytes: totalmem(),
    disks: await gatherDisks(),
    ...(biosVendor !== undefined && biosVersion !== undefined
      ? { firmware: { vendor: cut(biosVendor) as string, version: cut(biosVersion) as string } }
      : {}),
    ...(vendor === undefined ? {} : { vendor: cut(vendor) }),
    ...(model === undefined ? {} : { model: cut(model) }),
    ...(serial === undefined ? {} : { serial: cut(serial) }),
    hypervisor: cut(`QEMU/${kvm ? 'KVM' : 'TCG'} on ${type()}`),
    engineVersion: BULKHEAD_VERSION,
  };
  return InventorySchema.parse(inventory);
}
