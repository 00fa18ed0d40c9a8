import { z } from 'zod';
import { text } from './text.ts';

/*
 * Device events: what Engine tells Center, one typed registry for both sides. Engine's queue
 * accepts only these types with these payloads, and Center parses the same schemas, so a field
 * one side sends is a field the other side reads. Every payload is strict and bounded.
 *
 * The registry only grows: a Center knows every type an Engine of its version or older sends
 * (Center is upgraded before the fleet).
 */

const Id = text({ min: 1, max: 64 });
const Text = (max: number) => text({ max });
const Bytes = z
  .number()
  .int()
  .min(0)
  .max(2 ** 53 - 1);

/** Most volumes one release names (a system volume and up to 64 app layers). */
export const MAX_RELEASE_VOLUMES = 65;

/** One volume version of the release an update event is about. */
export const ReleaseVolumeSchema = z.strictObject({
  role: z.enum(['system', 'app']),
  /** Image name (an app's image, not its catalog name). */
  image: Text(128),
  imageId: Id,
  version: Text(128),
  versionId: Id,
  /**
   * True when the transaction brings this volume version (the release it came from did not
   * have it). Center credits a rollout's outcome only to the versions a transaction changed: an
   * app update that rolls back says nothing about the system version it kept.
   */
  isNew: z.boolean(),
});
export type ReleaseVolume = z.infer<typeof ReleaseVolumeSchema>;

/** What every update event names: the VM's profile and every volume of the release. */
const UpdateEventShape = {
  profileId: Id,
  /** The system volume's image, version and version id (for people reading the timeline). */
  image: Text(128),
  version: Text(128),
  versionId: Id,
  volumes: z.array(ReleaseVolumeSchema).min(1).max(MAX_RELEASE_VOLUMES),
};

const Reason = Text(2000);

/** Milliseconds since the Unix epoch. */
const EpochMsSchema = z.number().int().min(0).max(8.64e15);

export const COMMAND_KINDS = ['lock', 'unlock', 'kill', 'restart-vm'] as const;
export const CommandKindSchema = z.enum(COMMAND_KINDS);

/** Payload schema of each event type. */
export const DEVICE_EVENT_DATA = {
  /** Bytes of the release downloaded so far. */
  'download-progress': z.strictObject({
    ...UpdateEventShape,
    doneBytes: Bytes,
    totalBytes: Bytes,
  }),
  /** The release is on disk and verified; it waits for its switch window. */
  staged: z.strictObject({
    ...UpdateEventShape,
    downloadedBytes: Bytes,
    reusedBytes: Bytes,
  }),
  /** The VM was stopped and its disks switched to the release; it boots next. */
  switched: z.strictObject({ ...UpdateEventShape, fromVersionId: Id.nullable() }),
  /** The VM came up healthy on the release. */
  healthy: z.strictObject(UpdateEventShape),
  /** The release failed its health check; the VM runs `runningVersionId` again. */
  'rolled-back': z.strictObject({
    ...UpdateEventShape,
    reason: Reason,
    runningVersionId: Id.nullable(),
  }),
  /** Downloading, verifying or switching to the release failed. */
  failed: z.strictObject({ ...UpdateEventShape, reason: Reason }),
  /** A VM started or stopped outside an update. */
  'vm-state': z.strictObject({
    vm: Text(64),
    profileId: Id.nullable(),
    state: Text(32),
    versionId: Id.optional(),
    reason: Reason.optional(),
  }),
  /** The VM's offline lease ran out without contact with Center: it was shut down. */
  'lease-expired': z.strictObject({
    vm: Text(64),
    profileId: Id.nullable(),
    expiresAt: EpochMsSchema,
    /** Whether it was running (and so was shut down) when the lease ran out. */
    wasRunning: z.boolean(),
    /**
     * Whether the VM's wrapped data key is destroyed on the PC (docs/keys.md): its data cannot
     * be opened there until the next document from Center brings the key back.
     */
    keyDestroyed: z.boolean().optional(),
  }),
  /** The outcome of a command from Center. */
  'command-result': z.strictObject({
    commandId: Id,
    kind: CommandKindSchema,
    ok: z.boolean(),
    message: Text(1000),
  }),
  /** Engine refused a desired state (bad signature, another device's, older, expired). */
  'desired-state-refused': z.strictObject({
    code: Text(64),
    message: Text(500),
    revision: z.number().int().optional(),
  }),
} as const;

export type DeviceEventType = keyof typeof DEVICE_EVENT_DATA;
export const DEVICE_EVENT_TYPES = Object.keys(DEVICE_EVENT_DATA) as DeviceEventType[];
export type DeviceEventData<T extends DeviceEventType> = z.infer<(typeof DEVICE_EVENT_DATA)[T]>;

/** The update events, which name a release (`volumes`). */
export const UPDATE_EVENT_TYPES = [
  'download-progress',
  'staged',
  'switched',
  'healthy',
  'rolled-back',
  'failed',
] as const satisfies readonly DeviceEventType[];
export type UpdateEventType = (typeof UPDATE_EVENT_TYPES)[number];

/** Chosen by the device (a UUID, say); a replay with the same id is counted once. */
export const DeviceEventIdSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9._:-]+$/, 'letters, digits and . _ : - only');

function envelope<T extends DeviceEventType>(type: T) {
  return z.strictObject({
    id: DeviceEventIdSchema,
    type: z.literal(type),
    at: EpochMsSchema,
    data: DEVICE_EVENT_DATA[type],
  });
}

/**
 * Most bytes of one event as JSON (UTF-8), envelope included: what one row of Center's event
 * table may hold. Each field is bounded already; this bounds the whole, whatever the encoding
 * (2,000 characters of a reason may take 12,000 bytes). A real event is under 2 KiB, and an
 * outcome Center must not miss still fits at its largest in practice (a rollback of 65 volumes
 * with 64-character names and ids, and a 2,000-character reason of two-byte letters: 27 KB).
 * Engine's queue refuses a larger event when it is made, so none ever blocks its queue.
 */
export const MAX_EVENT_BYTES = 32 * 1024;

const utf8 = new TextEncoder();

/** Bytes of `event` as JSON (UTF-8): what MAX_EVENT_BYTES and report quotas count. */
export function eventBytes(event: unknown): number {
  return utf8.encode(JSON.stringify(event)).byteLength;
}

/** A command's result as an event (what a killed device sends to acknowledge its kill). */
export const CommandResultEventSchema = envelope('command-result');

/** One device event on the wire and in Engine's queue: `type` picks the payload schema. */
export const DeviceEventSchema = z
  .discriminatedUnion('type', [
    envelope('download-progress'),
    envelope('staged'),
    envelope('switched'),
    envelope('healthy'),
    envelope('rolled-back'),
    envelope('failed'),
    envelope('vm-state'),
    envelope('lease-expired'),
    CommandResultEventSchema,
    envelope('desired-state-refused'),
  ])
  .check((ctx) => {
    const bytes = eventBytes(ctx.value);
    if (bytes > MAX_EVENT_BYTES) {
      ctx.issues.push({
        code: 'custom',
        input: ctx.value,
        message: `the event is ${bytes} bytes as JSON, more than the ${MAX_EVENT_BYTES} allowed; shorten its text fields`,
      });
    }
  });
export type DeviceEvent = z.infer<typeof DeviceEventSchema>;
export type DeviceEventOf<T extends DeviceEventType> = Extract<DeviceEvent, { type: T }>;

/** An event as Engine's code creates it: the queue gives it an id and a time when omitted. */
export type NewEvent = {
  [T in DeviceEventType]: {
    type: T;
    data: DeviceEventData<T>;
    /** A fixed id, to make the event idempotent at Center (a command's result, say). */
    id?: string;
    /** When it happened; now when omitted. */
    at?: number;
  };
}[DeviceEventType];

/** True for the update events, which name the release they are about. */
export function isUpdateEvent(e: DeviceEvent): e is DeviceEventOf<UpdateEventType> {
  return (UPDATE_EVENT_TYPES as readonly string[]).includes(e.type);
}
