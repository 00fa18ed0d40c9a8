import { z } from 'zod';
import { name, text } from './text.ts';
import { CommandKindSchema } from './events.ts';
import {
  HealthCheckSchema,
  IsolationPolicySchema,
  ResetPolicySchema,
  DEFAULT_VM_MACHINE,
  VmMachineSchema,
  VmResourcesSchema,
} from './policy.ts';

/*
 * Wire schemas of Center's fleet admin API (`/api/v1/admin/{groups,apps,profiles,devices,
 * enrolment-tokens}`). Request bodies and queries are strict (an unknown field is a 400 naming
 * it) and bounded; responses are plain objects with times as epoch milliseconds.
 */

const EpochMsSchema = z.number().int().min(0).max(8.64e15);

/** A short machine name (`work`, `office`): a VM's name on a PC, an app's mount name. */
export const ShortNameSchema = z
  .string()
  .min(1)
  .max(63)
  .regex(/^[a-z][a-z0-9-]*$/, 'lower-case letters, digits and -, starting with a letter');

/** A name people read (groups): printable, no leading or trailing space. */
const LabelSchema = name({ min: 1, max: 100 }).regex(/^\S(.*\S)?$/, 'no leading or trailing space');

const DescriptionSchema = text({ max: 2000 });

/** An id Center made (UUIDv7, lower-case). */
export const FleetIdSchema = z
  .string()
  .regex(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'an id');

// Groups

export const DeviceGroupSchema = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string(),
  /** Devices in the group (any state). */
  devices: z.number().int(),
  createdAt: EpochMsSchema,
  updatedAt: EpochMsSchema,
});
export type DeviceGroup = z.infer<typeof DeviceGroupSchema>;
export const DeviceGroupListSchema = z.object({ groups: z.array(DeviceGroupSchema) });

export const CreateDeviceGroupRequestSchema = z.strictObject({
  name: LabelSchema,
  description: DescriptionSchema.default(''),
});
export type CreateDeviceGroupRequest = z.infer<typeof CreateDeviceGroupRequestSchema>;

export const UpdateDeviceGroupRequestSchema = z
  .strictObject({ name: LabelSchema.optional(), description: DescriptionSchema.optional() })
  .refine((b) => Object.keys(b).length > 0, { message: 'give at least one field to change' });
export type UpdateDeviceGroupRequest = z.infer<typeof UpdateDeviceGroupRequestSchema>;

// Apps

export const AppSchema = z.object({
  id: z.string(),
  name: z.string(),
  displayName: z.string(),
  description: z.string(),
  imageId: z.string(),
  createdAt: EpochMsSchema,
  updatedAt: EpochMsSchema,
});
export type App = z.infer<typeof AppSchema>;
export const AppListSchema = z.object({ apps: z.array(AppSchema) });

export const CreateAppRequestSchema = z.strictObject({
  name: ShortNameSchema,
  displayName: LabelSchema,
  description: DescriptionSchema.default(''),
  /** An image of kind `app`. */
  imageId: FleetIdSchema,
});
export type CreateAppRequest = z.infer<typeof CreateAppRequestSchema>;

export const UpdateAppRequestSchema = z
  .strictObject({
    displayName: LabelSchema.optional(),
    description: DescriptionSchema.optional(),
    imageId: FleetIdSchema.optional(),
  })
  .refine((b) => Object.keys(b).length > 0, { message: 'give at least one field to change' });
export type UpdateAppRequest = z.infer<typeof UpdateAppRequestSchema>;

// Profiles

export const ProfileAppSchema = z.strictObject({
  appId: FleetIdSchema,
  /** `default`: every device with the profile gets it; `optional`: chosen per device. */
  mode: z.enum(['default', 'optional']),
});
export type ProfileApp = z.infer<typeof ProfileAppSchema>;

const LeaseDaysSchema = z.number().int().min(1).max(365);

/**
 * `work`: managed by Center (system and apps, escrowed key, restricted network as its policy
 * says); `personal`: the user's own VM, its system image chosen on the PC among the images the
 * profile allows (or a disk the user brings), no apps, a nat network, a data key the user's
 * alone that Center never sees.
 */
export const ProfileKindSchema = z.enum(['work', 'personal']);
export type ProfileKindName = z.infer<typeof ProfileKindSchema>;

/** The system images a personal profile offers: its user picks one on the PC. */
const PersonalImageIdsSchema = z
  .array(FleetIdSchema)
  .max(32)
  .refine((ids) => new Set(ids).size === ids.length, { message: 'an image may appear once' });

export const ProfileSchema = z.object({
  id: z.string(),
  name: z.string(),
  description: z.string(),
  kind: ProfileKindSchema,
  /** For a personal profile, the default of its images. */
  systemImageId: z.string(),
  /** A personal profile's images the user may choose from (the default first); else empty. */
  personalImageIds: z.array(z.string()),
  apps: z.array(z.object({ appId: z.string(), mode: z.enum(['default', 'optional']) })),
  isolation: IsolationPolicySchema,
  healthCheck: HealthCheckSchema,
  leaseDays: z.number().int(),
  cpus: z.number().int(),
  memoryMib: z.number().int(),
  resetPolicy: ResetPolicySchema,
  /** Firmware, Secure Boot, TPM and the guest OS hint. */
  machine: VmMachineSchema,
  /**
   * Whether a device's user may choose the profile's optional apps too (through Engine's local
   * API); administrators always may.
   */
  userChoosesApps: z.boolean(),
  /** Devices holding the profile. */
  devices: z.number().int(),
  createdAt: EpochMsSchema,
  updatedAt: EpochMsSchema,
});
export type Profile = z.infer<typeof ProfileSchema>;
export const ProfileListSchema = z.object({ profiles: z.array(ProfileSchema) });

const ProfileAppsSchema = z
  .array(ProfileAppSchema)
  .max(64)
  .refine((apps) => new Set(apps.map((a) => a.appId)).size === apps.length, {
    message: 'an app may appear once',
  });

export const CreateProfileRequestSchema = z
  .strictObject({
    name: ShortNameSchema,
    description: DescriptionSchema.default(''),
    /** An image of kind `system`. */
    systemImageId: FleetIdSchema,
    apps: ProfileAppsSchema.default([]),
    isolation: IsolationPolicySchema.default(IsolationPolicySchema.parse({})),
    healthCheck: HealthCheckSchema.default(HealthCheckSchema.parse({})),
    leaseDays: LeaseDaysSchema.default(30),
    cpus: VmResourcesSchema.shape.cpus.default(2),
    memoryMib: VmResourcesSchema.shape.memoryMib.default(4096),
    resetPolicy: ResetPolicySchema.default('on-update'),
    machine: VmMachineSchema.default(DEFAULT_VM_MACHINE),
    kind: ProfileKindSchema.default('work'),
    /** Only for `personal`: more images its user may choose (systemImageId is always one). */
    personalImageIds: PersonalImageIdsSchema.default([]),
    userChoosesApps: z.boolean().default(false),
  })
  .superRefine((b, ctx) => {
    if (b.kind === 'work') {
      if (b.personalImageIds.length > 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['personalImageIds'],
          message: 'only a personal profile offers images to choose from: add kind personal',
        });
      }
      return;
    }
    for (const issue of personalIssues(b)) ctx.addIssue({ code: 'custom', ...issue });
  });
export type CreateProfileRequest = z.infer<typeof CreateProfileRequestSchema>;

export const UpdateProfileRequestSchema = z
  .strictObject({
    name: ShortNameSchema.optional(),
    description: DescriptionSchema.optional(),
    systemImageId: FleetIdSchema.optional(),
    apps: ProfileAppsSchema.optional(),
    isolation: IsolationPolicySchema.optional(),
    healthCheck: HealthCheckSchema.optional(),
    leaseDays: LeaseDaysSchema.optional(),
    cpus: VmResourcesSchema.shape.cpus.optional(),
    memoryMib: VmResourcesSchema.shape.memoryMib.optional(),
    resetPolicy: ResetPolicySchema.optional(),
    /** Replaces the whole machine (fields left out take their defaults). */
    machine: VmMachineSchema.optional(),
    userChoosesApps: z.boolean().optional(),
    /** A personal profile's images besides systemImageId (replaces the list). */
    personalImageIds: PersonalImageIdsSchema.optional(),
  })
  .refine((b) => Object.keys(b).length > 0, { message: 'give at least one field to change' });
export type UpdateProfileRequest = z.infer<typeof UpdateProfileRequestSchema>;

/**
 * What a personal profile may not have, as issues naming the field: apps, a network other
 * than nat, an escrowed data key (encryptData: its key is the user's, made on the PC).
 */
export function personalIssues(b: {
  apps?: readonly unknown[] | undefined;
  isolation?: { network: string; encryptData: boolean } | undefined;
}): { path: string[]; message: string }[] {
  const issues: { path: string[]; message: string }[] = [];
  if (b.apps !== undefined && b.apps.length > 0) {
    issues.push({ path: ['apps'], message: 'a personal profile has no apps' });
  }
  if (b.isolation !== undefined && b.isolation.network !== 'nat') {
    issues.push({
      path: ['isolation', 'network'],
      message: 'a personal profile has a nat network (isolated from the host and the work VM)',
    });
  }
  if (b.isolation?.encryptData) {
    issues.push({
      path: ['isolation', 'encryptData'],
      message: "a personal VM's data key is the user's, never escrowed at Center: leave it off",
    });
  }
  return issues;
}

// Devices

export const DEVICE_STATE_NAMES = ['active', 'locked', 'killed', 'retired'] as const;
export const DeviceStateSchema = z.enum(DEVICE_STATE_NAMES);
export type DeviceStateName = z.infer<typeof DeviceStateSchema>;

/** A device in a list: what a fleet table shows. */
export const DeviceSummarySchema = z.object({
  id: z.string(),
  name: z.string(),
  groupId: z.string(),
  state: DeviceStateSchema,
  enrolledAt: EpochMsSchema,
  lastContactAt: EpochMsSchema,
  updatedAt: EpochMsSchema,
});
export type DeviceSummary = z.infer<typeof DeviceSummarySchema>;

/**
 * One word for where a device stands, as the console shows it. From its state first
 * (`killed`, `retired`, `locked`); else `failed` when its newest update outcome is a failure or
 * rollback not yet followed by a healthy report; else `updating` while an update is downloaded,
 * staged or switched with no outcome yet; else `online` when its last contact is within Center's
 * online window (a device token's lifetime, 15 minutes, plus three poll intervals: a device in
 * contact renews its token before it expires), else `offline`.
 */
export const DEVICE_STATUS_NAMES = [
  'online',
  'offline',
  'updating',
  'failed',
  'locked',
  'killed',
  'retired',
] as const;
export const DeviceStatusSchema = z.enum(DEVICE_STATUS_NAMES);
export type DeviceStatusName = z.infer<typeof DeviceStatusSchema>;

/** Orders of the device list: by name, newest contact first, or oldest enrolment first. */
export const DeviceSortSchema = z.enum(['name', 'lastContact', 'enrolled']);
export type DeviceSortName = z.infer<typeof DeviceSortSchema>;

export const DeviceListQuerySchema = z.strictObject({
  limit: z.coerce.number().int().min(1).max(500).default(100),
  /** `name` (then id) by default; a cursor belongs to the order it was made in. */
  sort: DeviceSortSchema.default('name'),
  status: DeviceStatusSchema.optional(),
  /** The `next` of the previous page. */
  cursor: text({ max: 200 }).optional(),
  groupId: FleetIdSchema.optional(),
  state: DeviceStateSchema.optional(),
  /** Devices holding this profile. */
  profileId: FleetIdSchema.optional(),
  /** Name prefix, case-insensitive. */
  q: text({ min: 1, max: 200 }).optional(),
  /** Devices whose last contact is before this time (epoch ms): the ones gone quiet. */
  lastContactBefore: z.coerce.number().int().min(0).max(8.64e15).optional(),
});
export type DeviceListQuery = z.infer<typeof DeviceListQuerySchema>;

/** An image version by name, as people read it (`image@version`), with its ids. */
export const VersionNameSchema = z.object({
  /** The version's id. */
  id: z.string(),
  imageId: z.string(),
  image: z.string(),
  version: z.string(),
});
export type VersionName = z.infer<typeof VersionNameSchema>;

/** The volumes of one VM: its system version and its app layers' versions. */
export const VmVersionsSchema = z.object({
  /** Null when none is known (never reported healthy) or none resolves (no released one). */
  system: VersionNameSchema.nullable(),
  apps: z.array(VersionNameSchema),
});
export type VmVersions = z.infer<typeof VmVersionsSchema>;

/** A device in a list, with the names a table shows. */
/** What the console shows of a device's standing beside its summary. */
const DeviceStandingShape = {
  status: DeviceStatusSchema,
  /**
   * When the lease Center last sent the device runs out (its earliest VM's): past it without
   * contact its work VM does not start. Null before its first desired state, without VMs, and
   * for a killed or retired device.
   */
  leaseExpiresAt: EpochMsSchema.nullable(),
};

export const DeviceListItemSchema = DeviceSummarySchema.extend({
  ...DeviceStandingShape,
  group: z.object({ id: z.string(), name: z.string() }),
  /** Its profiles by name, each with the system version it last reported healthy (or null). */
  profiles: z.array(
    z.object({ id: z.string(), name: z.string(), current: VersionNameSchema.nullable() }),
  ),
});
export type DeviceListItem = z.infer<typeof DeviceListItemSchema>;

export const DevicePageSchema = z.object({
  /** In the order `sort` asked for (ties by id). */
  devices: z.array(DeviceListItemSchema),
  /** Pass as `cursor` for the next page; null at the end. */
  next: z.string().nullable(),
  /** Devices matching the filter, on every page (counted exactly). */
  total: z.number().int(),
});
export type DevicePage = z.infer<typeof DevicePageSchema>;

export const CommandStateSchema = z.enum(['pending', 'delivered', 'done', 'failed', 'cancelled']);

export const CommandSchema = z.object({
  id: z.string(),
  deviceId: z.string(),
  kind: CommandKindSchema,
  profileId: z.string().nullable(),
  /** `pending` until the device reports the outcome (`done`/`failed`); `cancelled` by Center. */
  state: CommandStateSchema,
  /** The device's report: `{ ok, message? }`; null until it reports. */
  result: z.unknown().nullable(),
  createdBy: z.string().nullable(),
  createdAt: EpochMsSchema,
  updatedAt: EpochMsSchema,
});
export type Command = z.infer<typeof CommandSchema>;
export const CommandListSchema = z.object({ commands: z.array(CommandSchema) });

export const CreateCommandRequestSchema = z
  .strictObject({
    kind: CommandKindSchema,
    /** The VM to restart; required for `restart-vm`, refused otherwise. */
    profileId: FleetIdSchema.optional(),
  })
  .refine((b) => (b.kind === 'restart-vm') === (b.profileId !== undefined), {
    message: 'profileId is required for restart-vm and only for it',
    path: ['profileId'],
  });
export type CreateCommandRequest = z.infer<typeof CreateCommandRequestSchema>;

export const DeviceEventSummarySchema = z.object({
  id: z.string(),
  type: z.string(),
  data: z.unknown(),
  occurredAt: EpochMsSchema,
  receivedAt: EpochMsSchema,
  /** The name of the profile (VM) the event is about, when it names one that exists. */
  vm: z.string().nullable(),
});

/** One profile (VM) of a device: what it runs and what it should run. */
export const DeviceProfileSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** What the VM last reported healthy on; null before its first healthy report. */
  current: VmVersionsSchema.nullable(),
  /** What Center's desired state gives it now (rollouts, else released versions). */
  target: VmVersionsSchema,
  /**
   * Its offline lease: `days` without contact, and the time it runs out at the latest if the
   * device stays away (its last contact plus `days`); null for a killed or retired device.
   */
  lease: z.object({ days: z.number().int(), expiresAt: EpochMsSchema }).nullable(),
});
export type DeviceProfile = z.infer<typeof DeviceProfileSchema>;

/** A device's hardware as it reported it at enrolment; a field it did not report is absent. */
export const DeviceHardwareSchema = z.object({
  hostname: z.string().optional(),
  cpu: z.object({ model: z.string(), cores: z.number().int() }).optional(),
  memoryBytes: z.number().int().optional(),
  disks: z
    .array(z.object({ name: z.string(), model: z.string().optional(), sizeBytes: z.number() }))
    .optional(),
  firmware: z.object({ vendor: z.string(), version: z.string() }).optional(),
  vendor: z.string().optional(),
  model: z.string().optional(),
  serial: z.string().optional(),
  hypervisor: z.string().optional(),
  /** The version of the Engine that enrolled. */
  engineVersion: z.string().optional(),
});
export type DeviceHardware = z.infer<typeof DeviceHardwareSchema>;

/** One device in full. */
export const DeviceDetailSchema = DeviceSummarySchema.extend({
  ...DeviceStandingShape,
  /** The inventory as stored (see `hardware` for its typed reading). */
  inventory: z.unknown(),
  hardware: DeviceHardwareSchema,
  group: z.object({ id: z.string(), name: z.string() }),
  profiles: z.array(DeviceProfileSchema),
  /** The optional apps chosen per profile. */
  apps: z.array(z.object({ profileId: z.string(), appId: z.string(), name: z.string() })),
  /** What the device last said it runs. */
  currentVersions: z.unknown(),
  /** The 20 newest events, newest first. */
  recentEvents: z.array(DeviceEventSummarySchema),
  /** Commands not yet acknowledged, oldest first. */
  pendingCommands: z.array(CommandSchema),
  /**
   * `image@version` of every image version id the recent events name (`versionId`,
   * `fromVersionId`, `runningVersionId`, their volumes'), so a reader needs no other request.
   */
  versionNames: z.record(z.string(), z.string()),
});
export type DeviceDetail = z.infer<typeof DeviceDetailSchema>;

// The fleet at a glance

const DeviceRefSchema = z.object({ id: z.string(), name: z.string() });

export const FleetSummarySchema = z.object({
  generatedAt: EpochMsSchema,
  /** Devices by status (see `DEVICE_STATUS_NAMES`); the words partition `total`. */
  devices: z.object({
    total: z.number().int(),
    online: z.number().int(),
    offline: z.number().int(),
    updating: z.number().int(),
    failed: z.number().int(),
    locked: z.number().int(),
    killed: z.number().int(),
    retired: z.number().int(),
  }),
  /**
   * Per profile (by name), the system versions its VMs last reported healthy on, most devices
   * first; `version` null for VMs with no healthy report yet. Killed and retired devices are not
   * counted.
   */
  versionsByProfile: z.array(
    z.object({
      profile: DeviceRefSchema,
      versions: z.array(z.object({ version: VersionNameSchema.nullable(), devices: z.number() })),
    }),
  ),
  /**
   * The 50 active devices whose lease runs out soonest, within three days (those already run
   * out first).
   */
  leasesExpiringSoon: z.array(z.object({ device: DeviceRefSchema, expiresAt: EpochMsSchema })),
  /** The 20 newest failed or rolled-back updates, newest first. */
  recentFailures: z.array(
    z.object({
      device: DeviceRefSchema,
      at: EpochMsSchema,
      /** `failed` or `rolled-back`. */
      type: z.string(),
      reason: z.string().nullable(),
      /** The release it was about, as `image@version`. */
      version: z.string().nullable(),
    }),
  ),
});
export type FleetSummary = z.infer<typeof FleetSummarySchema>;

export const FleetHistoryQuerySchema = z.strictObject({
  days: z.coerce.number().int().min(1).max(90).default(30),
});
export type FleetHistoryQuery = z.infer<typeof FleetHistoryQuerySchema>;

export const FleetHistorySchema = z.object({
  /**
   * One point a day, oldest first, the last one now: devices per system version
   * (`image@version`) as Center's hourly snapshot nearest before the point counted them (VMs
   * of devices not killed or retired, one per VM). Empty before the first snapshot.
   */
  points: z.array(
    z.object({
      at: EpochMsSchema,
      versions: z.array(z.object({ version: z.string(), devices: z.number().int() })),
    }),
  ),
});
export type FleetHistory = z.infer<typeof FleetHistorySchema>;

export const UpdateDeviceRequestSchema = z
  .strictObject({
    name: name({ min: 1, max: 200 }).optional(),
    groupId: FleetIdSchema.optional(),
    /** The profiles (VMs) the device runs: replaces the set. */
    profiles: z
      .array(FleetIdSchema)
      .max(16)
      .refine((ids) => new Set(ids).size === ids.length, { message: 'a profile may appear once' })
      .optional(),
    /** The optional apps chosen, each of a profile the device holds: replaces the set. */
    apps: z
      .array(z.strictObject({ profileId: FleetIdSchema, appId: FleetIdSchema }))
      .max(256)
      .optional(),
  })
  .refine((b) => Object.keys(b).length > 0, { message: 'give at least one field to change' });
export type UpdateDeviceRequest = z.infer<typeof UpdateDeviceRequestSchema>;

// Enrolment tokens

export const CreateEnrolmentTokenRequestSchema = z.strictObject({
  groupId: FleetIdSchema,
  uses: z.number().int().min(1).max(10_000).default(1),
  expiresInHours: z.number().int().min(1).max(720).default(24),
  note: text({ max: 500 }).default(''),
});
export type CreateEnrolmentTokenRequest = z.infer<typeof CreateEnrolmentTokenRequestSchema>;

export const EnrolmentTokenSchema = z.object({
  id: z.string(),
  groupId: z.string(),
  usesLeft: z.number().int(),
  expiresAt: EpochMsSchema,
  /** The administrator who created it; null if that account is gone. */
  createdBy: z.string().nullable(),
  note: z.string(),
  createdAt: EpochMsSchema,
});
export type EnrolmentToken = z.infer<typeof EnrolmentTokenSchema>;
export const EnrolmentTokenListSchema = z.object({ tokens: z.array(EnrolmentTokenSchema) });

export const CreateEnrolmentTokenResponseSchema = EnrolmentTokenSchema.extend({
  /** The secret a device enrols with, shown only here; never log it. */
  token: z.string(),
});

/** Path parameter of the fleet routes: `:id` must be an id Center made. */
export const FleetIdParamsSchema = z.strictObject({ id: FleetIdSchema });
