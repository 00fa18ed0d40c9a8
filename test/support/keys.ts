import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { keyRing, type DeviceKeys, type KeyRing } from '../../src/engine/device-keys.ts';
import { wrapDataKey, x25519PrivateFromSeed } from '../../src/signing/index.ts';

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

/** The test device's key ring; `protection` says how its key would be kept at rest. */
export function testKeyRing(
  protection: 'tpm' | 'file' = 'file',
  deviceId = TEST_DEVICE_ID,
): KeyRing {
  return keyRing(deviceId, { ...TEST_DEVICE_KEYS, protection });
}

/** A fresh device encryption public key (SPKI PEM), as an enrol request carries it. */
export function encryptionKeyPem(): string {
  return generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'pem' }).toString();
}
