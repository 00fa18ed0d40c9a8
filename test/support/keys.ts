import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import {
  keyRing,
  type DeviceKeys,
  type KeyRing,
  type WrappedKeySource,
} from '../../src/engine/device-keys.ts';
import { wrapDataKey, wrappedKeyDigest, x25519PrivateFromSeed } from '../../src/signing/index.ts';

/** The device id the test desired states name (test/support/desired.ts). */
export const TEST_DEVICE_ID = '01890000-0000-7000-8000-000000000001';

const privateKey = x25519PrivateFromSeed(Buffer.alloc(32, 0x5a));

/** A fixed device encryption key for tests that drive Engine without enrolling. */
export const TEST_DEVICE_KEYS: DeviceKeys = {
  protection: 'file',
  privateKey,
  publicKey: createPublicKey(privateKey),
};

/** `key` wrapped for the test device and `profileId`, as Center would send it. */
export function wrapForTest(key: Buffer, profileId: string, deviceId = TEST_DEVICE_ID): string {
  return wrapDataKey(TEST_DEVICE_KEYS.publicKey, key, { deviceId, profileId });
}

/**
 * Wrapped keys the test key rings hold, by digest: as if each had come beside a signed desired
 * state and been stored (src/engine/wrapped-keys.ts).
 */
const testWrappedKeys = new Map<string, string>();

/**
 * `key` wrapped for the test device and `profileId`, held by every test key ring; answers the
 * digest a desired state's VM carries (`wrappedDataKeyDigest`).
 */
export function wrappedDigestForTest(
  key: Buffer,
  profileId: string,
  deviceId = TEST_DEVICE_ID,
): string {
  const wrapped = wrapForTest(key, profileId, deviceId);
  const digest = wrappedKeyDigest(wrapped);
  testWrappedKeys.set(digest, wrapped);
  return digest;
}

/** The wrapped key whose digest `wrappedDigestForTest` answered (to store it as Engine would). */
export function testWrappedKey(digest: string): string | undefined {
  return testWrappedKeys.get(digest);
}

/** The test device's key ring; `protection` says how its key would be kept at rest. */
export function testKeyRing(
  protection: 'tpm' | 'file' = 'file',
  deviceId = TEST_DEVICE_ID,
  wrapped: WrappedKeySource = {
    get: (vm) =>
      vm.wrappedDataKeyDigest === undefined
        ? undefined
        : testWrappedKeys.get(vm.wrappedDataKeyDigest),
  },
): KeyRing {
  return keyRing(deviceId, { ...TEST_DEVICE_KEYS, protection }, wrapped);
}

/** A fresh device encryption public key (SPKI PEM), as an enrol request carries it. */
export function encryptionKeyPem(): string {
  return generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
}
