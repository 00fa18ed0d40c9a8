import { z } from 'zod';
import { name, text } from './text.ts';
import {
  HealthCheckSchema,
  IsolationPolicySchema,
  ResetPolicySchema,
  VmMachineSchema,
  VmResourcesSchema,
} from './policy.ts';
import { CommandKindSchema, CommandResultEventSchema, DeviceEventSchema } from './events.ts';

/*
 * Wire schemas of Center's device API (`/api/v1/device/…`), shared by Center and Engine.
 * Request bodies are strict (an unknown field is a 400 naming it) and every string, array and
 * free-form object is bounded, so a request's cost is known before it is handled.
 */

/** A device id as Center hands it out (UUIDv7, lower-case). */
export const DeviceIdSchema = z
  .string()
  .regex(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a device id');

/** Milliseconds since the Unix epoch. */
const EpochMsSchema = z.number().int().min(0).max(8.64e15);

const Text = (max: number) => text({ max });

/** The version of this Bulkhead build, which Engine reports when it enrols. */
export const BULKHEAD_VERSION = '0.1.0';

/** Hardware inventory a device reports at enrolment; every part bounded. */
export const InventorySchema = z.strictObject({
  hostname: name({ min: 1, max: 253 }),
  cpu: z.strictObject({ model: Text(200), cores: z.number().int().min(1).max(4096) }).optional(),
  memoryBytes: z
    .number()
    .int()
    .min(0)
    .max(2 ** 53 - 1)
    .optional(),
  disks: z
    .array(
      z.strictObject({
        name: Text(64),
        model: Text(200).optional(),
        sizeBytes: z
          .number()
          .int()
          .min(0)
          .max(2 ** 53 - 1),
      }),
    )
    .max(32)
    .optional(),
  firmware: z.strictObject({ vendor: Text(200), version: Text(200) }).optional(),
  vendor: Text(200).optional(),
  model: Text(200).optional(),
  serial: Text(200).optional(),
  hypervisor: Text(200).optional(),
  /** The version of the Engine that enrolled (`BULKHEAD_VERSION`). */
  engineVersion: Text(64).optional(),
});
export type Inventory = z.infer<typeof InventorySchema>;

export const EnrolRequestSchema = z.strictObject({
  /** The enrolment token an administrator created (base64url, 256 bits). */
  token: text({ min: 1, max: 128 }),
  /** The device's Ed25519 public key: SPKI PEM, or base64 of the raw 32 bytes. */
  publicKey: text({ min: 1, max: 1024 }),
  inventory: InventorySchema,
  /**
   * The device's X25519 encryption public key (SPKI PEM, or base64 of the raw 32 bytes): Center
   * wraps the VMs' data keys to it (docs/keys.md). Required: an Engine that cannot receive
   * wrapped keys is not enrolled.
   */
  encryptionKey: text({ min: 1, max: 1024 }),
  /** Label shown to administrators; the host name when omitted. */
  name: name({ min: 1, max: 200 }).optional(),
});
export type EnrolRequest = z.infer<typeof EnrolRequestSchema>;

/** A public key named by its key id (SHA-256 of the SPKI DER, as `keyIdOf` computes it). */
export const PublicKeyRefSchema = z.object({
  keyid: z.string(),
  /** SPKI PEM. */
  publicKey: z.string(),
});
export type PublicKeyRef = z.infer<typeof PublicKeyRefSchema>;

export const EnrolResponseSchema = z.object({
  deviceId: z.string(),
  /**
   * Center's signing key, which the device pins: desired states and device tokens signed by
   * another key are refused from then on.
   */
  centerKey: PublicKeyRefSchema,
});
export type EnrolResponse = z.infer<typeof EnrolResponseSchema>;

export const ChallengeRequestSchema = z.strictObject({ deviceId: DeviceIdSchema });
export type ChallengeRequest = z.infer<typeof ChallengeRequestSchema>;

export const ChallengeResponseSchema = z.object({
  /** Opaque; the device signs it as is (domain `device-auth`) and sends it back. */
  challenge: z.string(),
  expiresAt: EpochMsSchema,
});
export type ChallengeResponse = z.infer<typeof ChallengeResponseSchema>;

export const TokenRequestSchema = z.strictObject({
  deviceId: DeviceIdSchema,
  challenge: text({ min: 1, max: 512 }),
  /** base64 Ed25519 signature of the challenge by the device's key, domain `device-auth`. */
  signature: text({ min: 1, max: 128 }),
});
export type TokenRequest = z.infer<typeof TokenRequestSchema>;

export const TokenResponseSchema = z.object({
  /** Bearer token for `Authorization: Bearer …`; never log it. */
  token: z.string(),
  expiresAt: EpochMsSchema,
});
export type TokenResponse = z.infer<typeof TokenResponseSchema>;

export const DeviceCommandSchema = z.object({
  id: z.string(),
  kind: CommandKindSchema,
  /** The VM (profile id) a `restart-vm` applies to; null for device-wide commands. */
  profileId: z.string().nullable(),
  issuedAt: EpochMsSchema,
});
export type DeviceCommand = z.infer<typeof DeviceCommandSchema>;

/** One volume version a VM boots: a system image or an app layer, named by its manifest. */
export const VolumeRefSchema = z.object({
  /** Image name (the store's `manifests/<image>/<version>` path). */
  image: z.string(),
  imageId: z.string(),
  version: z.string(),
  versionId: z.string(),
  /** SHA-256 id of the signed manifest; Engine refuses a manifest with another id. */
  manifestId: z.string(),
  /** Size of the volume in bytes. */
  size: z.number().int().min(0),
});
export type VolumeRef = z.infer<typeof VolumeRefSchema>;

/** An app layer attached read-only to a VM. */
export const AppVolumeRefSchema = VolumeRefSchema.extend({
  appId: z.string(),
  /** The app's catalog name; the guest sees it at `/apps/<name>`. */
  name: z.string(),
});
export type AppVolumeRef = z.infer<typeof AppVolumeRefSchema>;

/** One VM a device should run: a profile resolved to versions for this device. */
export const DesiredVmSchema = z.object({
  /** Profile name (`work`, `personal`); also the VM's name on the PC. */
  name: z.string(),
  profileId: z.string(),
  system: VolumeRefSchema,
  apps: z.array(AppVolumeRefSchema),
  policy: IsolationPolicySchema,
  healthCheck: HealthCheckSchema,
  resources: VmResourcesSchema,
  resetPolicy: ResetPolicySchema,
  /** Firmware, TPM and guest OS hint; absent (from an older Center): the defaults. */
  machine: VmMachineSchema.optional(),
  /**
   * The offline lease: past `expiresAt` (by Engine's monotonic record of time) without a newer
   * document, the VM is shut down and does not start. Absent for a VM that runs without one
   * (the user's personal VM).
   */
  lease: z.object({ days: z.number().int().min(1), expiresAt: EpochMsSchema }).optional(),
  /**
   * SHA-256 (hex) of the text of the VM's wrapped data key (`wrappedKeyDigest`), present only
   * when the policy encrypts data or the machine has a TPM (whose state is encrypted with a key
   * derived from the data key). The wrapped key itself travels beside the signature
   * (`SignedDesiredState.wrappedKeys`) so that Engine can keep the signed document and destroy
   * the key apart (docs/keys.md); this digest is what makes the signature cover it.
   */
  wrappedDataKeyDigest: z
    .string()
    .regex(/^[0-9a-f]{64}$/, 'a SHA-256 digest (hex)')
    .optional(),
  /**
   * Why the VM needs a key and none was sent (a device enrolled before encryption keys: it must
   * enrol again). Engine refuses to start such a VM and reports this reason.
   */
  keyUnavailable: z.string().max(500).optional(),
  /**
   * Present for the user's personal VM: the released (or rolled-out) version of each image the
   * profile lets the user choose (`system` is the default one). Engine boots the user's choice,
   * kept on the PC, or a disk the user brought; its data key is made on the PC and never sent.
   */
  personal: z.object({ images: z.array(VolumeRefSchema) }).optional(),
});
export type DesiredVm = z.infer<typeof DesiredVmSchema>;

/** What Center wants a device to run. */
export const DesiredStateSchema = z.object({
  deviceId: z.string(),
  /** Grows whenever the content changes; a device refuses a document older than one it has. */
  revision: z.number().int(),
  generatedAt: EpochMsSchema,
  /** A device stops trusting the document after this (freeze attacks). */
  expiresAt: EpochMsSchema,
  /**
   * The device's state at Center (`locked`: VMs may not start). Center sends no document to a
   * killed or retired device (a killed one gets its `KillNoticeSchema` instead); a device given
   * one in either state anyway runs no VM.
   */
  device: z.object({ state: z.enum(['active', 'locked', 'killed', 'retired']) }),
  /**
   * How often the device should ask for news when no push arrives; Center's administrators
   * tune it to their fleet's size (a device's own `pollIntervalSeconds` takes precedence).
   */
  pollIntervalSeconds: z.number().int().min(10).max(86_400).optional(),
  /** Base URLs of chunk stores to fetch from, Center's own first, then its mirrors. */
  mirrors: z.array(z.string()),
  /** Publisher keys Center trusts (not revoked); manifests must be signed by one of them. */
  publishers: z.array(PublicKeyRefSchema),
  vms: z.array(DesiredVmSchema),
  commands: z.array(DeviceCommandSchema),
});
export type DesiredState = z.infer<typeof DesiredStateSchema>;

/** A profile id that may name a wrapped key (and its file on the PC): no path separators. */
export const WRAPPED_KEY_PROFILE_ID = /^[A-Za-z0-9_-]{1,64}$/;
/** Wrapped keys one document may carry (one per VM). */
export const MAX_WRAPPED_KEYS = 64;

/**
 * The signed document: `signature` is Center's Ed25519 signature (domain `desired-state`) over
 * `canonicalJson(state)`, by the key `keyid`.
 */
export const SignedDesiredStateSchema = z.object({
  state: DesiredStateSchema,
  keyid: z.string(),
  signature: z.string(),
  /**
   * The VMs' data keys, wrapped to the device (`bhwk1.…`, see `wrapDataKey` and docs/keys.md),
   * by profile id. Outside the signed body on purpose: Engine stores the document without them
   * and each key in its own file, which it destroys at the VM's lease expiry. Each is
   * authenticated by its VM's signed `wrappedDataKeyDigest`; a key without a matching digest is
   * refused (anyone can wrap a key to the device's public key). Absent in a stored document.
   */
  wrappedKeys: z
    .record(z.string().regex(WRAPPED_KEY_PROFILE_ID, 'a profile id'), z.string().max(512))
    .refine((keys) => Object.keys(keys).length <= MAX_WRAPPED_KEYS, {
      message: `at most ${MAX_WRAPPED_KEYS} wrapped keys`,
    })
    .optional(),
});
export type SignedDesiredState = z.infer<typeof SignedDesiredStateSchema>;

/**
 * What Center answers a killed device instead of a token, a desired state or anything else
 * (DESIGN §4: a killed device gets nothing more from Center, acknowledged or not): a notice that
 * it is killed, signed by Center's key like a desired state but under its own domain
 * (`device-kill-notice`), carrying no data key and no VM. Engine verifies it against the key it
 * pinned and acts on it as on a kill command: every VM stops, for good.
 *
 * It travels in the body of a 403 `ERR_DEVICE_KILLED` (`error.details.notice`), and only to a
 * caller that proved to be the device: a challenge signed with the device's key (the token
 * route) or a token Center issued on one (every other device route), so nobody else learns of a
 * device's kill. It has no expiry: a kill is final, so a replayed notice tells the device
 * nothing that is not true.
 */
export const KillNoticeSchema = z.object({
  deviceId: z.string(),
  /** When Center killed the device. */
  killedAt: EpochMsSchema,
  /** When Center signed this notice. */
  issuedAt: EpochMsSchema,
  /**
   * The kill command, whose result the device sends to `POST /api/v1/device/kill-result`; null
   * when the device was killed without one.
   */
  commandId: z.string().nullable(),
});
export type KillNotice = z.infer<typeof KillNoticeSchema>;

/** A kill notice and Center's signature (domain `device-kill-notice`) of `canonicalJson(notice)`. */
export const SignedKillNoticeSchema = z.object({
  notice: KillNoticeSchema,
  keyid: z.string(),
  signature: z.string(),
});
export type SignedKillNotice = z.infer<typeof SignedKillNoticeSchema>;

/**
 * A killed device's answer to its kill command. A killed device has no token (Center issues it
 * none), so, like a token request, this proves the device by a fresh challenge signed with its
 * key; the signature covers the result as well (`killResultSigned`).
 */
export const KillResultRequestSchema = z.strictObject({
  deviceId: DeviceIdSchema,
  challenge: text({ min: 1, max: 512 }),
  /** The `command-result` event of the kill command, as the device's queue holds it. */
  event: CommandResultEventSchema,
  /** base64 Ed25519 signature by the device's key, domain `device-kill-result`. */
  signature: text({ min: 1, max: 128 }),
});
export type KillResultRequest = z.infer<typeof KillResultRequestSchema>;

/** What the device signs in a kill result: `canonicalJson` of this. */
export function killResultSigned(request: Omit<KillResultRequest, 'signature'>): object {
  return { challenge: request.challenge, deviceId: request.deviceId, event: request.event };
}

/** Most events in one report batch. */
export const MAX_REPORT_EVENTS = 500;
/**
 * Most bytes of one report's body (`{"events":[…]}` as JSON). Engine cuts its batches by this as
 * well as by MAX_REPORT_EVENTS, and every event fits (MAX_EVENT_BYTES is far smaller), so a
 * batch Engine sends is never too large for Center.
 */
export const MAX_REPORT_BYTES = 1024 * 1024;
/** Bytes `{"events":[` and `]}` add around the events of a report. */
export const REPORT_ENVELOPE_BYTES = '{"events":[]}'.length;

export const ReportRequestSchema = z.strictObject({
  /** Each event's type picks its payload's schema (src/protocol/events.ts). */
  events: z.array(DeviceEventSchema).min(1).max(MAX_REPORT_EVENTS),
});
export type ReportRequest = z.infer<typeof ReportRequestSchema>;

export const ReportResponseSchema = z.object({
  /** Events stored by this request. */
  accepted: z.number().int(),
  /** Events Center already had (replays), stored nothing. */
  duplicates: z.number().int(),
});
export type ReportResponse = z.infer<typeof ReportResponseSchema>;

/**
 * The query of `GET /api/v1/device/desired-state`. The device comes from its token; a deviceId
 * naming another device is refused outright rather than quietly answered with the caller's own.
 */
export const DesiredStateQuerySchema = z.strictObject({ deviceId: DeviceIdSchema.optional() });

/**
 * Domains of the signatures of the device API (see `signPayload` in src/signing), so that
 * a signature made for one purpose never verifies as another.
 */
export const DEVICE_SIGNATURE_DOMAINS = {
  /** Center's signature over a challenge it issued. */
  challenge: 'device-challenge',
  /** The device's signature over a challenge. */
  deviceAuth: 'device-auth',
  /** Center's signature over a device bearer token. */
  token: 'device-token',
  /** Center's signature over `canonicalJson(state)` of a desired state. */
  desiredState: 'desired-state',
  /** Center's signature over `canonicalJson(notice)` of a kill notice. */
  killNotice: 'device-kill-notice',
  /** The device's signature over `canonicalJson(killResultSigned(request))`. */
  killResult: 'device-kill-result',
} as const;

/** Most optional apps one choice names (a profile offers at most 64). */
export const MAX_CHOSEN_APPS = 64;

const AppNameSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z][a-z0-9-]*$/, 'an app name: lower-case letters, digits and -');

/**
 * The user's choice of one VM's optional apps, sent by Engine for the PC's user: it replaces the
 * apps chosen for that profile. Center takes it only for a profile the device runs whose
 * `userChoosesApps` is on, and only apps that profile offers as optional.
 */
export const ChooseAppsRequestSchema = z.strictObject({
  profileId: z
    .string()
    .regex(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a profile id'),
  apps: z
    .array(AppNameSchema)
    .max(MAX_CHOSEN_APPS)
    .refine((a) => new Set(a).size === a.length, { message: 'an app may appear once' }),
});
export type ChooseAppsRequest = z.infer<typeof ChooseAppsRequestSchema>;

export const ChooseAppsResponseSchema = z.object({
  profileId: z.string(),
  /** The optional apps chosen for the profile now, by name. */
  chosen: z.array(z.string()),
  /** The optional apps the profile offers, by name. */
  offered: z.array(z.string()),
});
export type ChooseAppsResponse = z.infer<typeof ChooseAppsResponseSchema>;
