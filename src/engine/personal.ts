import { createHmac, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';
import { replaceFile, replaceJsonFile } from '../durable/index.ts';
import {
  BulkheadError,
  ErrorCodes,
  errnoCode,
  ImageNameSchema,
  type DesiredState,
  type DesiredVm,
  type VolumeRef,
} from '../protocol/index.ts';
import type { KeyRing } from './device-keys.ts';

/*
 * The user's personal VM on this PC (issue 13). Center offers system images to choose from
 * (`DesiredVm.personal.images`); the choice, and the VM's data key, are the user's and stay in
 * `<data>/personal/` (0700): neither is ever sent to Center. What Engine may tell Center about
 * the VM is `PersonalSummary`: that it exists, its run state, its size and its version.
 */

/** The directory of the personal VM's local state. */
export function personalDir(dataDir: string): string {
  return join(dataDir, 'personal');
}

/**
 * What the user chose to boot: one of the images the profile offers (by name), or a disk image
 * the user brought (an absolute path on this PC).
 */
export const PersonalChoiceSchema = z.union([
  z.strictObject({ image: ImageNameSchema }),
  z.strictObject({ disk: z.string().min(1).max(4096).refine(isAbsolute, 'an absolute path') }),
]);
export type PersonalChoice = z.infer<typeof PersonalChoiceSchema>;

const choicePath = (dataDir: string) => join(personalDir(dataDir), 'choice.json');

async function ensurePersonalDir(dataDir: string): Promise<string> {
  const dir = personalDir(dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/**
 * Keeps the user's choice. A brought disk must exist and be a regular file now (its path is
 * kept absolute, resolved from the current directory).
 * @throws BulkheadError ERR_INPUT_UNREADABLE naming a disk that is not there.
 */
export async function choosePersonal(
  dataDir: string,
  choice: PersonalChoice,
): Promise<PersonalChoice> {
  let kept = choice;
  if ('disk' in choice) {
    const disk = resolve(choice.disk);
    const info = await stat(disk).catch((err: unknown) => {
      throw new BulkheadError(
        ErrorCodes.INPUT_UNREADABLE,
        `personal disk ${disk}: ${errnoCode(err) === 'ENOENT' ? 'no such file' : (err as Error).message}`,
        { cause: err, hint: 'give the path of a raw or qcow2 disk image on this PC' },
      );
    });
    if (!info.isFile()) {
      throw new BulkheadError(
        ErrorCodes.INPUT_UNREADABLE,
        `personal disk ${disk}: not a regular file`,
        { hint: 'give the path of a raw or qcow2 disk image on this PC' },
      );
    }
    kept = { disk };
  }
  const parsed = PersonalChoiceSchema.parse(kept);
  await ensurePersonalDir(dataDir);
  await replaceJsonFile(choicePath(dataDir), parsed);
  return parsed;
}

/** The user's choice, or undefined when none was made (the profile's default image then). */
export async function readPersonalChoice(dataDir: string): Promise<PersonalChoice | undefined> {
  let text: string;
  try {
    text = await readFile(choicePath(dataDir), 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  const parsed = PersonalChoiceSchema.safeParse(JSON.parse(text));
  if (!parsed.success) {
    throw new BulkheadError(
      ErrorCodes.CONFIG_INVALID,
      `${choicePath(dataDir)} is not a personal VM choice; choose again (bulkhead engine personal choose)`,
    );
  }
  return parsed.data;
}

/** What the personal VM boots: an offered image version, or the user's own disk. */
export type PersonalSource = { kind: 'image'; volume: VolumeRef } | { kind: 'disk'; path: string };

/**
 * Resolves the user's choice against the desired VM: the chosen offered image's version, the
 * default (`vm.system`) without a choice, the brought disk as it is.
 * @throws BulkheadError ERR_NOT_FOUND when the chosen image is no longer offered (naming those
 *   that are).
 */
export function personalSource(vm: DesiredVm, choice: PersonalChoice | undefined): PersonalSource {
  if (choice === undefined) return { kind: 'image', volume: vm.system };
  if ('disk' in choice) return { kind: 'disk', path: choice.disk };
  const offered = vm.personal?.images ?? [vm.system];
  const volume = offered.find((v) => v.image === choice.image);
  if (!volume) {
    throw new BulkheadError(
      ErrorCodes.NOT_FOUND,
      `the personal VM's image ${choice.image} is not offered by profile ${vm.name} (offered: ${offered.map((v) => v.image).join(', ') || 'none'})`,
      { hint: 'choose another with bulkhead engine personal choose --image NAME' },
    );
  }
  return { kind: 'image', volume };
}

/**
 * Where the personal VM's data key comes from. The key never leaves the PC and is never
 * logged. A TPM-sealed store (the device-key work of issue 13) can replace the key file
 * behind this interface.
 */
export interface PersonalKeyStore {
  /** `file` (a random key in a 0600 file) or `passphrase` (scrypt of the user's passphrase). */
  readonly kind: 'file' | 'passphrase';
  /**
   * The 32-byte key, made on first use.
   * @throws BulkheadError ERR_WRONG_PASSWORD for a passphrase that does not give the key it gave
   *   first.
   */
  key(): Promise<Buffer>;
}

const KEY_BYTES = 32;

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
}

/** A random key in `<data>/personal/data.key` (0600 in a 0700 directory): the weaker fallback. */
export class KeyFileStore implements PersonalKeyStore {
  readonly kind = 'file' as const;
  readonly #dataDir: string;

  constructor(dataDir: string) {
    this.#dataDir = dataDir;
  }

  async key(): Promise<Buffer> {
    const path = join(personalDir(this.#dataDir), 'data.key');
    const existing = await readOptional(path);
    if (existing !== undefined) {
      if (existing.length !== KEY_BYTES) {
        throw new BulkheadError(ErrorCodes.KEY_INVALID, `${path} is not a ${KEY_BYTES}-byte key`);
      }
      return existing;
    }
    await ensurePersonalDir(this.#dataDir);
    const key = randomBytes(KEY_BYTES);
    await replaceFile(path, key, { mode: 0o600 });
    return key;
  }
}

/** scrypt's cost: 2^17 × 8 × 128 bytes = 128 MiB, about a second on a laptop. */
const SCRYPT = { N: 2 ** 17, r: 8, p: 1, maxmem: 256 * 1024 * 1024 };

/**
 * The key derived from the user's passphrase with scrypt; the random salt and a check value
 * (an HMAC of a constant under the key, which tells a wrong passphrase without revealing the
 * key) live in `<data>/personal/passphrase.json`. Without the passphrase nothing on the PC
 * gives the key.
 */
export class PassphraseKeyStore implements PersonalKeyStore {
  readonly kind = 'passphrase' as const;
  readonly #dataDir: string;
  readonly #passphrase: string;
  readonly #cost: typeof SCRYPT;

  constructor(dataDir: string, passphrase: string, cost: Partial<typeof SCRYPT> = {}) {
    if (passphrase.length < 8) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        'the personal VM passphrase must have at least 8 characters',
      );
    }
    this.#dataDir = dataDir;
    this.#passphrase = passphrase;
    this.#cost = { ...SCRYPT, ...cost };
  }

  async key(): Promise<Buffer> {
    const path = join(personalDir(this.#dataDir), 'passphrase.json');
    const saved = await readOptional(path);
    const params = saved
      ? (JSON.parse(saved.toString()) as { salt: string; check: string; N: number })
      : undefined;
    const salt = params ? Buffer.from(params.salt, 'base64') : randomBytes(16);
    const N = params?.N ?? this.#cost.N;
    const key = await new Promise<Buffer>((ok, fail) =>
      scrypt(this.#passphrase, salt, KEY_BYTES, { ...this.#cost, N }, (err, k) =>
        err ? fail(err) : ok(k),
      ),
    );
    const check = createHmac('sha256', key).update('bulkhead personal key check v1').digest();
    if (params) {
      const expected = Buffer.from(params.check, 'base64');
      if (expected.length !== check.length || !timingSafeEqual(expected, check)) {
        throw new BulkheadError(
          ErrorCodes.WRONG_PASSWORD,
          "wrong passphrase for the personal VM's data",
        );
      }
      return key;
    }
    await ensurePersonalDir(this.#dataDir);
    await replaceJsonFile(path, {
      salt: salt.toString('base64'),
      check: check.toString('base64'),
      N,
    });
    return key;
  }
}

/**
 * All Center may learn of the personal VM: that it exists, its run state, the size of its
 * volumes, and its version (`image@version`, or `local` for a disk the user brought).
 */
export interface PersonalSummary {
  exists: boolean;
  state: string;
  sizeBytes: number;
  version: string;
}

export function personalSummary(
  source: PersonalSource | undefined,
  state: string,
  sizeBytes: number,
): PersonalSummary {
  return {
    exists: source !== undefined,
    state,
    sizeBytes,
    version:
      source === undefined
        ? 'none'
        : source.kind === 'disk'
          ? 'local'
          : `${source.volume.image}@${source.volume.version}`,
  };
}

/** What `localizePersonal` needs. */
export interface LocalizeDeps {
  dataDir: string;
  keys: PersonalKeyStore;
  /** Where the personal VMs' keys are left, by profile id, for `withPersonalKeys`. */
  localKeys: Map<string, Buffer>;
  log: { warn(obj: object, msg: string): void };
}

/**
 * The desired state as this PC runs it: a personal VM boots the user's choice among the offered
 * versions, with its data volume encrypted under the user's key (never Center's: Center sends
 * none). Returns a copy; the signed document Engine keeps is not changed, so the key stays in
 * memory only. A personal VM whose choice cannot be run (an image no longer offered, or a disk
 * the user brought, which Engine does not boot yet) is left out, with the reason logged.
 */
export async function localizePersonal(
  desired: DesiredState,
  deps: LocalizeDeps,
): Promise<DesiredState> {
  if (!desired.vms.some((vm) => vm.personal)) return desired;
  const choice = await readPersonalChoice(deps.dataDir);
  const vms: DesiredVm[] = [];
  for (const vm of desired.vms) {
    if (!vm.personal) {
      vms.push(vm);
      continue;
    }
    let source: PersonalSource;
    try {
      source = personalSource(vm, choice);
    } catch (err) {
      deps.log.warn({ vm: vm.name, err }, 'personal VM left out: its chosen image is not offered');
      continue;
    }
    if (source.kind === 'disk') {
      // TODO(issue 13): boot a disk the user brought (an overlay on it, no download).
      deps.log.warn(
        { vm: vm.name },
        'personal VM left out: booting a brought disk is not supported yet',
      );
      continue;
    }
    deps.localKeys.set(vm.profileId, await deps.keys.key());
    const copy: DesiredVm = {
      ...vm,
      system: source.volume,
      policy: { ...vm.policy, encryptData: true },
    };
    vms.push(copy);
  }
  return { ...desired, vms };
}

/**
 * `ring`, with the personal VMs' keys made on this PC (`localKeys`, filled by
 * `localizePersonal`) in place of a key from Center, which never sends one for them.
 */
export function withPersonalKeys(ring: KeyRing, localKeys: Map<string, Buffer>): KeyRing {
  return {
    protection: ring.protection,
    dataKey(vm) {
      if (!vm.personal) return ring.dataKey(vm);
      const key = localKeys.get(vm.profileId);
      if (key === undefined) {
        throw new BulkheadError(
          ErrorCodes.DATA_KEY_UNAVAILABLE,
          `the personal VM ${vm.name} has no key on this PC yet`,
          { hint: 'its key is made when Engine first runs it: restart engine run' },
        );
      }
      return key;
    },
  };
}
