import { TEST_DEVICE_ID, wrappedDigestForTest } from './keys.ts';
import type { ImportResult } from '../../src/image/index.ts';
import type { DesiredState, PublicKeyRef, VolumeRef } from '../../src/protocol/index.ts';

const DAY = 86_400_000;

/**
 * A signed-state document as Engine reads it, for one device running the VM `work` on `system`:
 * one CPU and 256 MiB (the test guest), no network, the guest's own health check, current for
 * a day. For tests and benchmarks that drive Engine without Center.
 */
export function workDesiredState(options: {
  system: VolumeRef;
  mirrors: string[];
  publishers: PublicKeyRef[];
  /**
   * A LUKS key for the data volume (wrapped for the test device, test/support/keys.ts); without
   * it the data volume is not encrypted.
   */
  dataKey?: Buffer;
}): DesiredState {
  const now = Date.now();
  return {
    deviceId: TEST_DEVICE_ID,
    revision: 1,
    generatedAt: now,
    expiresAt: now + DAY,
    device: { state: 'active' },
    mirrors: options.mirrors,
    publishers: options.publishers,
    vms: [
      {
        name: 'work',
        profileId: 'profile-work',
        system: options.system,
        apps: [],
        policy: {
          network: 'none',
          allowedEndpoints: [],
          clipboard: false,
          usbDevices: [],
          encryptData: options.dataKey !== undefined,
          requireTpm: false,
        },
        // A TCG guest on a busy machine can take minutes to answer; a broken version fails its
        // check command at once, so the bound costs nothing when the test passes.
        healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
        resources: { cpus: 1, memoryMib: 256 },
        resetPolicy: 'on-update',
        lease: { days: 30, expiresAt: now + 30 * DAY },
        ...(options.dataKey === undefined
          ? {}
          : { wrappedDataKeyDigest: wrappedDigestForTest(options.dataKey, 'profile-work') }),
      },
    ],
    commands: [],
  };
}

/** Version `version` of the image `os`, as `importImage` made it (`imported`). */
export function osVersionRef(version: string, imported: ImportResult): VolumeRef {
  return {
    image: 'os',
    imageId: 'img-os',
    version,
    versionId: `ver-${version}`,
    manifestId: imported.manifest,
    size: imported.size,
  };
}
