import { join } from 'node:path';
import { z } from 'zod';
import {
  DeviceIdSchema,
  PublicKeyRefSchema,
  SignedDesiredStateSchema,
  SignedKillNoticeSchema,
} from '../protocol/index.ts';
import type { Clock } from './clock.ts';
import type { Log } from './log.ts';
import { AtomicJsonFile } from '../durable/index.ts';
import { wrappedKeyFiles, type WrappedKeyFiles } from './wrapped-keys.ts';

/*
 * Engine's files under its data directory (default /var/lib/bulkhead/engine, mode 0700):
 *
 *   identity.json       who this device is and which Center key it pinned   (enroll)
 *   device.key          the device's Ed25519 private key, PKCS#8 PEM, 0600   (enroll)
 *   desired-state.json  the last desired state that verified, with its ETag  (sync)
 *                       (signed; the VMs' wrapped keys only as digests)
 *   keys/wrapped/       each VM's wrapped data key, destroyed at lease expiry (sync, reconcile)
 *   kill-notice.json    Center's signed notice that this device is killed    (sync)
 *   sync.json           connectivity and the commands already handled        (sync)
 *   engine-state.json   the VMs as they are on this PC                      (update/reconcile)
 *   queue/              events waiting to be reported                        (queue)
 *
 * Each JSON file is written atomically (src/durable), so `engine status` can read them at
 * any moment while `engine run` writes them.
 */

const EpochMs = z.number().int().min(0);

export const IdentitySchema = z.strictObject({
  version: z.literal(1),
  deviceId: DeviceIdSchema,
  /** Center's base URL, as given to `engine enroll`. */
  centerUrl: z.string().url(),
  /** Center's signing key, pinned at enrolment: nothing signed by another key is accepted. */
  centerKey: PublicKeyRefSchema,
  /** The device's public key (SPKI PEM); the private one is in `device.key`. */
  publicKey: z.string(),
  enrolledAt: EpochMs,
  /**
   * How the device's encryption key is kept (docs/keys.md): sealed by the TPM, or in a key file
   * (no TPM). Absent for a device enrolled before encryption keys.
   */
  keyProtection: z.enum(['tpm', 'file']).optional(),
});
export type Identity = z.infer<typeof IdentitySchema>;

export const StoredDesiredStateSchema = z.strictObject({
  /** Center's ETag for it, sent back as If-None-Match. */
  etag: z.string().nullable(),
  document: SignedDesiredStateSchema,
  /** When Engine verified it. */
  verifiedAt: EpochMs,
});
export type StoredDesiredState = z.infer<typeof StoredDesiredStateSchema>;

/**
 * Center's notice that this device is killed, as verified. Once it is on disk the device is
 * killed for good: no VM starts again, whatever desired state comes later or was kept.
 */
export const StoredKillNoticeSchema = z.strictObject({
  notice: SignedKillNoticeSchema,
  /** When Engine verified it. */
  verifiedAt: EpochMs,
});
export type StoredKillNotice = z.infer<typeof StoredKillNoticeSchema>;

export const ConnectivitySchema = z.strictObject({
  /** Whether the last contact attempt reached Center. */
  online: z.boolean(),
  lastContactAt: EpochMs.nullable(),
  lastError: z.strictObject({ code: z.string(), message: z.string(), at: EpochMs }).nullable(),
  consecutiveFailures: z.number().int().min(0),
  /** When the sync loop tries next (absent before its first attempt). */
  nextAttemptAt: EpochMs.nullable(),
});
export type Connectivity = z.infer<typeof ConnectivitySchema>;

export const SyncStateSchema = z.strictObject({
  connectivity: ConnectivitySchema,
  /** Ids of commands already handled, newest last (bounded): a command runs once. */
  handledCommands: z.array(z.string()).max(10_000),
});
export type SyncState = z.infer<typeof SyncStateSchema>;

/**
 * One VM on this PC as the update transaction leaves it. Loose: the update engine may keep
 * more facts per VM (they are preserved); these are the ones `engine status` shows.
 */
export const EngineVmSchema = z.looseObject({
  /** The VM's name (its profile name, `work`, `personal`). */
  name: z.string().min(1),
  /** Image version id of the system volume it boots, null before the first install. */
  currentVersionId: z.string().nullable(),
  /** The version it would roll back to. */
  previousVersionId: z.string().nullable(),
  transaction: z.looseObject({
    /**
     * The update transaction's state (`idle`, `downloading`, `staged`, `switching`, `booting`,
     * `health-check`, `committed`, `rolling-back`, `rolled-back`, `failed`; DESIGN §3). A string
     * here, so that a state the update machine adds never makes this file unreadable.
     */
    state: z.string().min(1).max(64),
    /** The version being installed, while a transaction runs. */
    targetVersionId: z.string().nullable(),
    /** When the current state was entered. */
    since: EpochMs,
  }),
  /** Versions that failed their health check here: never tried again. */
  badVersions: z.array(z.string()),
  lastError: z.strictObject({ code: z.string(), message: z.string(), at: EpochMs }).nullable(),
});
export type EngineVm = z.infer<typeof EngineVmSchema>;

export const EngineStateSchema = z.looseObject({
  version: z.literal(1),
  vms: z.array(EngineVmSchema),
  updatedAt: EpochMs,
});
export type EngineState = z.infer<typeof EngineStateSchema>;

export const DEFAULT_ENGINE_DATA_DIR = '/var/lib/bulkhead/engine';

export interface EngineFiles {
  dataDir: string;
  identity: AtomicJsonFile<Identity>;
  /** Path of the device's private key. */
  privateKeyPath: string;
  desiredState: AtomicJsonFile<StoredDesiredState>;
  /** The VMs' wrapped data keys, apart from the document (wrapped-keys.ts). */
  wrappedKeys: WrappedKeyFiles;
  killNotice: AtomicJsonFile<StoredKillNotice>;
  sync: AtomicJsonFile<SyncState>;
  engineState: AtomicJsonFile<EngineState>;
  queueDir: string;
}

/** The files of the Engine whose data directory is `dataDir`. */
export function engineFiles(dataDir: string, deps: { clock?: Clock; log?: Log } = {}): EngineFiles {
  const file = <T>(name: string, schema: z.ZodType<T>, what: string, hint: string) =>
    new AtomicJsonFile<T>({ path: join(dataDir, name), schema, what, hint, ...deps });
  return {
    dataDir,
    identity: file(
      'identity.json',
      IdentitySchema,
      'the device identity',
      'enrol the device again: bulkhead engine enroll --center URL --token TOKEN --force',
    ),
    privateKeyPath: join(dataDir, 'device.key'),
    desiredState: file(
      'desired-state.json',
      StoredDesiredStateSchema,
      'the stored desired state',
      'remove the file; Engine fetches the desired state again at its next contact with Center',
    ),
    wrappedKeys: wrappedKeyFiles(dataDir),
    killNotice: file(
      'kill-notice.json',
      StoredKillNoticeSchema,
      'the kill notice',
      'remove the file only if Center did not kill this device; a killed device is enrolled again with bulkhead engine enroll --force',
    ),
    sync: file(
      'sync.json',
      SyncStateSchema,
      'the sync state',
      'remove the file; Engine starts counting contacts afresh (handled commands may repeat)',
    ),
    engineState: file(
      'engine-state.json',
      EngineStateSchema,
      'the state of the VMs',
      'restore it from a backup; without it Engine no longer knows which versions the VMs run',
    ),
    queueDir: join(dataDir, 'queue'),
  };
}

export function initialConnectivity(): Connectivity {
  return {
    online: false,
    lastContactAt: null,
    lastError: null,
    consecutiveFailures: 0,
    nextAttemptAt: null,
  };
}
