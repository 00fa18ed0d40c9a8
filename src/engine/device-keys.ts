import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { chmod, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { AtomicJsonFile, exists, fsyncDir, replaceFile } from '../durable/index.ts';
import { BulkheadError, ErrorCodes, type DesiredVm } from '../protocol/index.ts';
import { rawX25519, unwrapDataKey, x25519PrivateFromSeed } from '../signing/index.ts';
import type { WrappedKeyFiles } from './wrapped-keys.ts';
import { resolveTcti, sealedBlobs, tpmSeal, tpmUnseal, type TpmSetting } from './tpm.ts';

/*
 * The device's encryption key (docs/keys.md): an X25519 key pair made at enrolment beside the
 * Ed25519 signing key. Center wraps the VMs' data keys to its public half. The private half is
 * kept in `<data>/keys/`:
 *
 *   encryption.json   which protection it has and its public key           (no secret)
 *   sealed.pub/.priv  the private key sealed by the host TPM                 (protection: tpm)
 *   encryption.key    the private key's 32 bytes, mode 0600                  (protection: file)
 *
 * The key file is the documented weaker fallback for PCs without a TPM: whoever reads the
 * disk reads the key. With a TPM, the blobs open only in that TPM.
 */

export const KeyRecordSchema = z.strictObject({
  version: z.literal(1),
  protection: z.enum(['tpm', 'file']),
  /** Raw X25519 public key, base64. */
  publicKey: z.string(),
});
export type KeyRecord = z.infer<typeof KeyRecordSchema>;

export const keysDir = (dataDir: string) => join(dataDir, 'keys');
const recordFile = (dataDir: string) =>
  new AtomicJsonFile({
    path: join(keysDir(dataDir), 'encryption.json'),
    schema: KeyRecordSchema,
    what: "the device's encryption key record",
    hint: 'enrol the device again (bulkhead engine enroll --force)',
  });
const keyFilePath = (dataDir: string) => join(keysDir(dataDir), 'encryption.key');

/** The device's encryption key, unsealed in memory. */
export interface DeviceKeys {
  protection: 'tpm' | 'file';
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/**
 * Makes the device's encryption key pair and protects the private key (TPM when `tpm` resolves
 * to one, else the key file), or loads the one an unfinished enrolment left.
 * @throws BulkheadError ERR_TPM / ERR_TOOL_MISSING when the configured TPM cannot seal.
 */
export async function createEncryptionKey(dataDir: string, tpm: TpmSetting): Promise<DeviceKeys> {
  const existing = await loadEncryptionKey(dataDir, tpm);
  if (existing) return existing;
  const dir = keysDir(dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d as string, 'base64url');
  const tcti = await resolveTcti(tpm);
  try {
    if (tcti !== null) {
      await tpmSeal(tcti, seed, dir, sealedBlobs(dir));
    } else {
      await replaceFile(keyFilePath(dataDir), seed, { mode: 0o600 });
    }
  } finally {
    seed.fill(0);
  }
  // The record last: without it the key does not exist, and a retry makes a new one.
  await recordFile(dataDir).write({
    version: 1,
    protection: tcti !== null ? 'tpm' : 'file',
    publicKey: rawX25519(publicKey).toString('base64'),
  });
  return { protection: tcti !== null ? 'tpm' : 'file', privateKey, publicKey };
}

/**
 * The device's encryption key, unsealed, or undefined when the device has none (enrolled
 * before encryption keys, or crypto-erased).
 * @throws BulkheadError ERR_TPM when the key is sealed and the TPM cannot unseal it (or the
 *   configuration turned the TPM off); ERR_KEY_INVALID for a key file others can read.
 */
export async function loadEncryptionKey(
  dataDir: string,
  tpm: TpmSetting,
): Promise<DeviceKeys | undefined> {
  const record = await recordFile(dataDir).read();
  if (record === undefined) return undefined;
  const dir = keysDir(dataDir);
  let seed: Buffer;
  if (record.protection === 'tpm') {
    const tcti = await resolveTcti(tpm);
    if (tcti === null) {
      throw new BulkheadError(
        ErrorCodes.TPM,
        `the device's encryption key is sealed by a TPM, but Engine's tpm setting is "${tpm}" and finds none`,
        { hint: 'set tpm to auto or to the TPM’s TCTI in Engine’s configuration' },
      );
    }
    seed = await tpmUnseal(tcti, dir, sealedBlobs(dir));
  } else {
    const path = keyFilePath(dataDir);
    const info = await stat(path);
    if ((info.mode & 0o077) !== 0) {
      throw new BulkheadError(
        ErrorCodes.KEY_INVALID,
        `the encryption key ${path} is readable by others (mode ${(info.mode & 0o777).toString(8)})`,
        { hint: 'the key may have leaked: enrol again with --force to make a new one' },
      );
    }
    seed = await readFile(path);
  }
  try {
    const privateKey = x25519PrivateFromSeed(seed);
    const publicKey = createPublicKey(privateKey);
    if (rawX25519(publicKey).toString('base64') !== record.publicKey) {
      throw new BulkheadError(
        ErrorCodes.KEY_INVALID,
        "the device's encryption key does not match its recorded public key",
        { hint: 'enrol the device again (bulkhead engine enroll --force)' },
      );
    }
    return { protection: record.protection, privateKey, publicKey };
  } finally {
    seed.fill(0);
  }
}

/**
 * Destroys the encryption key: the sealed blobs or key file and the record (crypto-erase).
 * Idempotent. The key file is overwritten before it is removed.
 */
export async function destroyEncryptionKey(dataDir: string): Promise<void> {
  const keyFile = keyFilePath(dataDir);
  if (await exists(keyFile)) {
    await replaceFile(keyFile, Buffer.alloc(32), { mode: 0o600 }).catch(() => undefined);
  }
  await rm(keysDir(dataDir), { recursive: true, force: true });
  await fsyncDir(dataDir).catch(() => undefined);
}

/** Where the key ring finds a VM's wrapped key (`WrappedKeyFiles.get`). */
export type WrappedKeySource = Pick<WrappedKeyFiles, 'get'>;

/** What the volumes need of the device's keys: the VMs' data keys, unwrapped in memory. */
export interface KeyRing {
  /** How the device key is protected at rest; `none`: the device has no encryption key. */
  protection: 'tpm' | 'file' | 'none';
  /**
   * The 32-byte data key of `vm`.
   * @throws BulkheadError ERR_DATA_KEY_UNAVAILABLE when Center sent no key (with its reason) or
   *   this device has no encryption key; ERR_DATA_KEY_UNWRAP when it does not open.
   */
  dataKey(vm: DesiredVm): Buffer;
}

/**
 * The key ring of device `deviceId` holding `keys` (none: a device without a key), reading the
 * VMs' wrapped keys from `wrapped` (wrapped-keys.ts: only a key whose digest the signed document
 * carries comes back).
 */
export function keyRing(
  deviceId: string | undefined,
  keys: DeviceKeys | undefined,
  wrapped: WrappedKeySource,
): KeyRing {
  return {
    protection: keys?.protection ?? 'none',
    dataKey(vm) {
      if (vm.wrappedDataKeyDigest === undefined) {
        throw new BulkheadError(
          ErrorCodes.DATA_KEY_UNAVAILABLE,
          `VM ${vm.name} needs its data key and none came: ${vm.keyUnavailable ?? 'the desired state carries no wrapped key'}`,
          { hint: 'enrol the device again (bulkhead engine enroll --force)' },
        );
      }
      const text = wrapped.get(vm);
      if (text === undefined) {
        throw new BulkheadError(
          ErrorCodes.DATA_KEY_UNAVAILABLE,
          `VM ${vm.name} needs its data key and this PC holds none that its desired state vouches for (destroyed at its lease expiry, or missing): it comes back at the next contact with Center`,
          { hint: 'connect the PC to the network so that Engine reaches Center' },
        );
      }
      if (keys === undefined || deviceId === undefined) {
        throw new BulkheadError(
          ErrorCodes.DATA_KEY_UNAVAILABLE,
          `VM ${vm.name} needs its data key, but this device has no encryption key to unwrap it with`,
          { hint: 'enrol the device again (bulkhead engine enroll --force)' },
        );
      }
      return unwrapDataKey(keys.privateKey, text, {
        deviceId,
        profileId: vm.profileId,
      });
    },
  };
}
