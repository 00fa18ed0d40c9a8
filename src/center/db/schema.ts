import type { ColumnType, Generated, Insertable, Selectable, Updateable } from 'kysely';
import type { COMMAND_KINDS } from '../../protocol/index.ts';
import { ROLLOUT_STATE_NAMES } from '../../protocol/index.ts';

/*
 * Center's tables as Kysely sees them. One schema serves SQLite and PostgreSQL, so every
 * column uses a type both store and return the same way:
 *
 * - Ids are text: UUIDv7 from `newId()`, except where a row is named by its content or by the
 *   device that sent it (a manifest digest, a device's event id).
 * - Times are integers: milliseconds since the Unix epoch, UTC (`bigint` in PostgreSQL,
 *   INTEGER in SQLite), read back as JS numbers on both. Integers compare and index the same
 *   on both databases, need no time-zone or text-format rules, and keyset cursors carry them
 *   as plain numbers. The caller's clock sets them, never the database's, so tests control time.
 * - Counts and byte sizes are integers too (`bigint` where they may pass 2^31). Both drivers
 *   return them as JS numbers, which is exact below 2^53 (9 PB, or the year 287,396).
 * - JSON is stored as text (`JsonText`), parsed and validated with the zod schemas of the layer
 *   above; the database only keeps it. Each column's comment names its shape.
 * - Closed sets (states, roles, kinds) are text guarded by CHECK constraints.
 * - No booleans: SQLite has none, and a state or a nullable time says more.
 * - No column defaults: every insert names every column. In a multi-row insert where one row
 *   leaves a column out, Kysely sends DEFAULT on PostgreSQL but NULL on SQLite (whose VALUES
 *   has no DEFAULT), so a default would behave differently on the two databases.
 * - Names are snake_case in SQL and here alike, so raw `sql` fragments and the types agree.
 */

/** Milliseconds since the Unix epoch, UTC. */
export type EpochMs = number;

/** JSON text. The database stores it unparsed; the layer above validates its shape. */
export type JsonText = string;

export const IMAGE_KINDS = ['system', 'app'] as const;
/** What an image holds: a VM's system volume, or an app volume attached read-only. */
export type ImageKind = (typeof IMAGE_KINDS)[number];

export const IMAGE_VERSION_STATES = ['draft', 'published', 'retired'] as const;
/** `draft`: uploaded, not offered; `published`: may be rolled out; `retired`: no new installs. */
export type ImageVersionState = (typeof IMAGE_VERSION_STATES)[number];

export const RESET_POLICIES = ['on-update', 'on-boot'] as const;
/** When a VM's system-volume overlay is thrown away: at each update, or at every boot too. */
export type ResetPolicy = (typeof RESET_POLICIES)[number];

export const PROFILE_APP_MODES = ['default', 'optional'] as const;
/** `default`: every device with the profile gets the app; `optional`: the user may choose it. */
export type ProfileAppMode = (typeof PROFILE_APP_MODES)[number];

export const PROFILE_KINDS = ['work', 'personal'] as const;
/** `work`: managed by Center; `personal`: the user's own VM (see `ProfilesTable.kind`). */
export type ProfileKind = (typeof PROFILE_KINDS)[number];

export const DEVICE_STATES = ['active', 'locked', 'killed', 'retired'] as const;
/**
 * `active`: managed normally; `locked`: its VMs may not start until unlocked; `killed`: its key
 * material was destroyed (crypto-erase), it gets nothing more; `retired`: decommissioned.
 */
export type DeviceState = (typeof DEVICE_STATES)[number];

/** The wire's names are the column's values. */
export const ROLLOUT_STATES = ROLLOUT_STATE_NAMES;
/** `halted` is the scheduler's own stop (failure threshold crossed); `paused` is an admin's. */
export type RolloutState = (typeof ROLLOUT_STATES)[number];

export const ROLLOUT_COMPLETIONS = ['release', 'keep'] as const;
/**
 * What completing a rollout does to its image's released version: `release` makes the rollout's
 * version the released one, `keep` leaves it as it is.
 */
export type RolloutCompletion = (typeof ROLLOUT_COMPLETIONS)[number];

export const ROLLOUT_DEVICE_STATUSES = [
  'pending',
  'downloading',
  'staged',
  'switched',
  'healthy',
  'failed',
  'rolled-back',
] as const;
/** How far one device got with a rollout's version; `failed` and `rolled-back` count as failures. */
export type RolloutDeviceStatus = (typeof ROLLOUT_DEVICE_STATUSES)[number];

/** An urgent order to one device, delivered over the push channel or with the next poll. */
export type CommandKind = (typeof COMMAND_KINDS)[number];

export const COMMAND_STATES = ['pending', 'delivered', 'done', 'failed', 'cancelled'] as const;
/** `delivered`: the device fetched it; `done`/`failed`: the device reported the outcome. */
export type CommandState = (typeof COMMAND_STATES)[number];

export const ADMIN_ROLES = ['admin', 'operator', 'viewer'] as const;
/** `admin`: everything; `operator`: day-to-day changes, no users; `viewer`: read only. */
export type AdminRole = (typeof ADMIN_ROLES)[number];

/** A named disk image whose versions Center distributes (`images`). */
export interface ImagesTable {
  /** UUIDv7. */
  id: string;
  /** The image's name in the chunk store (`ImageNameSchema`); unique. */
  name: string;
  /** Whether its versions are system volumes or app volumes. */
  kind: ImageKind;
  /** Free text for administrators; may be empty. */
  description: string;
  /**
   * The released version (`image_versions.id`, of this image, published): what a VM on this
   * image runs when no rollout gives it another. Null until a version is released.
   */
  release_version_id: string | null;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

/** One version of an image: a signed manifest in the chunk store (`image_versions`). */
export interface ImageVersionsTable {
  /** UUIDv7. */
  id: string;
  /** The image; an image with versions cannot be deleted. */
  image_id: string;
  /** The version label (`ImageVersionSchema`); unique per image. */
  version: string;
  /** SHA-256 of the manifest's canonical body (hex); unique: the content address. */
  manifest_id: string;
  /**
   * The manifest's signatures that verified with a trusted publisher key at upload, as JSON:
   * `[{ keyid, sig }]` (`SignatureSchema[]`). Versions uploaded before this rule may list others.
   */
  signatures: JsonText;
  /** Bytes of the raw image. */
  size: number;
  /** SHA-256 of the whole raw image (hex). */
  sha256: string;
  /** The version this one was built to follow, if any (delta packs may exist from it). */
  parent_version: string | null;
  /** Lifecycle state; uploads start as `draft`. */
  state: ImageVersionState;
  /** When it was uploaded. */
  created_at: EpochMs;
  /** When it was first published; null while a draft. */
  published_at: EpochMs | null;
  /** When it was retired; null unless retired. */
  retired_at: EpochMs | null;
  /**
   * Distinct stored chunks of the version (holes are not chunks); counted at push. Null for a
   * version pushed before migration 0014 until Center first lists it.
   */
  chunks: ColumnType<number | null, number | null | undefined, number | null>;
  /** Chunks of this version its parent version does not have (all of them without a parent). */
  added_chunks: ColumnType<number | null, number | null | undefined, number | null>;
  /** Stored (compressed) bytes of those chunks: what a PC on the parent version downloads. */
  added_bytes: ColumnType<number | null, number | null | undefined, number | null>;
}

/** An app catalog entry: an app volume image that profiles offer (`apps`). */
export interface AppsTable {
  /** UUIDv7. */
  id: string;
  /** Short unique name used by the CLI and API (`office`, `cad`). */
  name: string;
  /** Name shown to people. */
  display_name: string;
  /** Free text; may be empty. */
  description: string;
  /** The app volume image (`kind = 'app'` by convention; the layer above checks it). */
  image_id: string;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

/** A VM profile such as `work` or `personal`: what one VM on a device runs (`profiles`). */
export interface ProfilesTable {
  /** UUIDv7. */
  id: string;
  /** Unique name; also the VM's name on the device. */
  name: string;
  /** Free text; may be empty. */
  description: string;
  /** The system image track: the profile's VMs run versions of this image, as rolled out. */
  system_image_id: string;
  /** Isolation policy as JSON (network, clipboard, USB assignment); `{}` means the defaults. */
  isolation_policy: JsonText;
  /** Health check as JSON: `{ timeoutSeconds, command? }`. */
  health_check: JsonText;
  /** Days a device may run this VM without contacting Center (the offline lease). */
  lease_days: number;
  /** Virtual CPUs. */
  cpus: number;
  /** Memory in MiB. */
  memory_mib: number;
  /** When the system volume's overlay is discarded. */
  reset_policy: ResetPolicy;
  /** The VM's firmware. */
  firmware: 'bios' | 'uefi';
  /** Secure Boot (only with `uefi`). */
  secure_boot: 'on' | 'off';
  /** A TPM 2.0 for the VM. */
  tpm: 'on' | 'off';
  /** The guest OS hint. */
  guest_os: 'linux' | 'windows';
  /**
   * `work`: managed (system and apps from Center); `personal`: the user's own VM, its system
   * image chosen on the PC among `profile_images` (or a disk the user brings), no apps, its
   * data key the user's alone. Defaults to `work` on insert (what every profile was before).
   */
  kind: ColumnType<ProfileKind, ProfileKind | undefined, ProfileKind>;
  /** Paravirtual (`virtio`) or emulated (`compat`) disks, NIC and tablet. */
  guest_devices: 'virtio' | 'compat';
  /**
   * Whether the device's user may choose its optional apps too (`userChoosesApps`); `off`
   * unless given.
   */
  user_apps: Generated<'on' | 'off'>;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

/** The system images a personal profile's user may choose from (`profile_images`). */
export interface ProfileImagesTable {
  /** The profile; deleting it removes these rows. */
  profile_id: string;
  /** A system image; one a profile offers cannot be deleted. */
  image_id: string;
}

/** The apps a profile installs by default or offers as options (`profile_apps`). */
export interface ProfileAppsTable {
  /** The profile; deleting it removes these rows. */
  profile_id: string;
  /** The app; an app a profile offers cannot be deleted. */
  app_id: string;
  /** Installed on every device, or chosen per device. */
  mode: ProfileAppMode;
}

/** A set of devices that rollouts and enrolment tokens target (`device_groups`). */
export interface DeviceGroupsTable {
  /** UUIDv7. */
  id: string;
  /** Unique name. */
  name: string;
  /** Free text; may be empty. */
  description: string;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

export const DEVICE_UPDATE_STATUSES = ['idle', 'updating', 'failed'] as const;
/**
 * Where a device's updates stand, from the update events it reported, in order: `failed` after
 * a failure or rollback until a VM next reports healthy; else `updating` after download, staging
 * or a switch until an outcome; else `idle` (migration 0014).
 */
export type DeviceUpdateStatus = (typeof DEVICE_UPDATE_STATUSES)[number];

/** An enrolled PC (`devices`). */
export interface DevicesTable {
  /** UUIDv7, handed to the device at enrolment. */
  id: string;
  /** Host name or label shown to administrators; not unique. */
  name: string;
  /** The device's Ed25519 public key (base64 of the raw 32 bytes); unique. */
  public_key: string;
  /**
   * The device's X25519 encryption key (base64 of the raw 32 bytes) that data keys are wrapped
   * to; null for a device enrolled before migration 0011 (it gets no key until it re-enrols).
   */
  encryption_key: string | null;
  /** Hardware inventory as JSON, as the device last reported it. */
  inventory: JsonText;
  /** The device's group; a group with devices cannot be deleted. */
  group_id: string;
  /**
   * What the device runs, as its `healthy` reports tell, as JSON (`CurrentVersionsSchema`): per
   * profile id, `{ system: versionId, apps: { [appImageId]: versionId } }`.
   */
  current_versions: JsonText;
  /** Management state; devices enrol `active`. */
  state: DeviceState;
  /** When it enrolled. */
  enrolled_at: EpochMs;
  /** When it last called Center; set at enrolment, so never null (keyset cursors rely on it). */
  last_contact_at: EpochMs;
  /** When a field of this row other than `last_contact_at` last changed. */
  updated_at: EpochMs;
  /**
   * Where its updates stand, kept by report ingestion (src/center/devices/update-status.ts);
   * `idle` on insert unless given. Not part of the desired state: `updated_at` does not move.
   */
  update_status: ColumnType<DeviceUpdateStatus, DeviceUpdateStatus | undefined, DeviceUpdateStatus>;
  /**
   * The earliest VM lease expiry of the last desired state Center sent the device (a 200, not
   * a 304); null before its first document, or when that document had no VM.
   */
  lease_expires_at: ColumnType<EpochMs | null, EpochMs | null | undefined, EpochMs | null>;
}

/** The profiles (VMs) assigned to a device (`device_profiles`). */
export interface DeviceProfilesTable {
  /** The device; deleting it removes these rows. */
  device_id: string;
  /** The profile; a profile assigned to a device cannot be deleted. */
  profile_id: string;
  /**
   * The system version (`image_versions.id`) the VM last reported healthy on, as
   * `devices.current_versions` has it; null before its first healthy report.
   */
  system_version_id: ColumnType<string | null, string | null | undefined, string | null>;
}

/**
 * The optional apps a device's user chose, per profile (`device_apps`). Foreign keys keep it
 * honest: the device must have the profile, and the profile must offer the app; withdrawing
 * either removes the choice.
 */
export interface DeviceAppsTable {
  /** The device. */
  device_id: string;
  /** The profile (VM) the app goes into. */
  profile_id: string;
  /** The chosen app. */
  app_id: string;
}

/** A secret a new device presents once to enrol into a group (`enrolment_tokens`). */
export interface EnrolmentTokensTable {
  /** UUIDv7. */
  id: string;
  /**
   * SHA-256 (hex) of the token; unique. The token itself is shown once at creation and never
   * stored, so a copy of the database cannot enrol devices.
   */
  token_hash: string;
  /** The group a device enrolled with this token joins. */
  group_id: string;
  /** Enrolments still allowed; never negative. One-time tokens start at 1. */
  uses_left: number;
  /** After this time the token is refused. */
  expires_at: EpochMs;
  /** The admin user who created it; null if that user was deleted. */
  created_by: string | null;
  /** Free text (what the token is for); may be empty. */
  note: string;
  /** When it was created. */
  created_at: EpochMs;
}

/** A phased rollout of one image version to a group or profile (`rollouts`). */
export interface RolloutsTable {
  /** UUIDv7. */
  id: string;
  /** The version being rolled out; a version with rollouts cannot be deleted. */
  image_version_id: string;
  /** The target group; at least one of `group_id` and `profile_id` is set. */
  group_id: string | null;
  /** The target profile; at least one of `group_id` and `profile_id` is set. */
  profile_id: string | null;
  /** Phases as JSON: ascending percentages of the target, e.g. `[1, 10, 50, 100]`. */
  phases: JsonText;
  /** Index into `phases` of the phase in progress (0 at first). */
  current_phase: number;
  /** When the current phase started; null before the rollout starts. */
  phase_started_at: EpochMs | null;
  /** Minimum time a phase runs before the next may start, in milliseconds. */
  soak_ms: number;
  /** Share (0..1) of reporting devices that failed or rolled back at which the rollout halts. */
  failure_threshold: number;
  /**
   * Outcomes (healthy, failed, rolled back) a phase needs before the next may start, and before
   * the failure share is judged (migration 0005).
   */
  min_reports: number;
  /** Lifecycle state; rollouts start `pending`. */
  state: RolloutState;
  /**
   * Why it halted or was aborted; for a completed rollout that was to release its version but
   * did not, why not. Null otherwise.
   */
  state_reason: string | null;
  /** What completing it does to the image's released version (migration 0009). */
  on_completion: RolloutCompletion;
  /** When completing it made its version the image's released version; null otherwise. */
  released_at: EpochMs | null;
  /** The admin user who created it; null if that user was deleted. */
  created_by: string | null;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

/** One device's progress in one rollout (`rollout_devices`). */
export interface RolloutDevicesTable {
  /** The rollout; deleting it removes these rows. */
  rollout_id: string;
  /** The device; deleting it removes these rows. */
  device_id: string;
  /** Index of the phase that included the device. */
  phase: number;
  /** Latest status reported; `pending` until the device reports. */
  status: RolloutDeviceStatus;
  /** The device's reason for `failed` or `rolled-back`; null otherwise. */
  reason: string | null;
  /** When `status` last changed. */
  updated_at: EpochMs;
}

/**
 * An event a device reported (`device_events`). The primary key is (device, the device's own
 * event id), so a device replaying its offline queue cannot insert an event twice: ingest with
 * `onConflict((oc) => oc.columns(['device_id', 'event_id']).doNothing())`.
 */
export interface DeviceEventsTable {
  /** The device; deleting it removes its events. */
  device_id: string;
  /** The id the device gave the event; unique per device. */
  event_id: string;
  /** Event type (`staged`, `healthy`, `rolled-back`, …; see the report schema). */
  type: string;
  /** The event's body as JSON. */
  payload: JsonText;
  /** When it happened, by the device's clock. */
  occurred_at: EpochMs;
  /** When Center received it. */
  received_at: EpochMs;
}

/** An order to one device (`commands`). */
export interface CommandsTable {
  /** UUIDv7. */
  id: string;
  /** The device; deleting it removes its commands. */
  device_id: string;
  /** What to do. */
  kind: CommandKind;
  /** The VM a `restart-vm` applies to; null for device-wide commands. */
  profile_id: string | null;
  /** Delivery state; `pending` until the device fetches it. */
  state: CommandState;
  /** The device's report of the outcome, as JSON; null until it reports. */
  result: JsonText | null;
  /** The admin user who issued it; null if that user was deleted. */
  created_by: string | null;
  /** When it was issued. */
  created_at: EpochMs;
  /** When `state` last changed. */
  updated_at: EpochMs;
}

/**
 * A key whose signatures Center accepts on uploaded manifests (`publisher_keys`). Revoked keys
 * stay, so the trail of who signed what outlives them.
 */
export interface PublisherKeysTable {
  /** The key id as the image format computes it (`keyIdOf`: SHA-256 of the raw key): its content address. */
  keyid: string;
  /** Unique label (`build-server`, `alice-laptop`). */
  name: string;
  /** The Ed25519 public key, SPKI PEM. */
  public_key: string;
  /** The admin user who added it; null if that user was deleted. */
  created_by: string | null;
  /** When it was added. */
  created_at: EpochMs;
  /** When it was revoked; null while trusted. */
  revoked_at: EpochMs | null;
}

/** A person who administers Center (`admin_users`). */
export interface AdminUsersTable {
  /** UUIDv7. */
  id: string;
  /** Login name; unique. */
  username: string;
  /** Password hash in a self-describing format (e.g. `scrypt$…`); never the password. */
  password_hash: string;
  /** What the user may do. */
  role: AdminRole;
  /** When the user last logged in; null if never. */
  last_login_at: EpochMs | null;
  /** When the account was disabled (no login, credentials refused); null while active. */
  disabled_at: EpochMs | null;
  /** When it was created. */
  created_at: EpochMs;
  /** When a field of this row last changed. */
  updated_at: EpochMs;
}

/** A bearer token for scripts, acting as its user (`api_tokens`). */
export interface ApiTokensTable {
  /** UUIDv7. */
  id: string;
  /** The user the token acts as; deleting the user revokes its tokens. */
  user_id: string;
  /** Label to tell tokens apart. */
  name: string;
  /** SHA-256 (hex) of the token; unique. The token is shown once and never stored. */
  token_hash: string;
  /** After this time the token is refused; null for no expiry. */
  expires_at: EpochMs | null;
  /** When it was last used; null if never. */
  last_used_at: EpochMs | null;
  /** When it was created. */
  created_at: EpochMs;
}

/**
 * One administrative action or device outcome (`audit_log`). Append-only. Actors and targets
 * are recorded as text, not foreign keys, so the trail outlives what it mentions.
 */
export interface AuditLogTable {
  /** UUIDv7, so ids follow time. */
  id: string;
  /** Who: `user:<username>`, `token:<id>`, `device:<id>` or `system`. */
  actor: string;
  /** What, as a verb phrase (`device.lock`, `rollout.create`). */
  action: string;
  /** The kind of thing acted on (`device`, `rollout`, …). */
  target_type: string;
  /** Its id; null for actions on no single thing. */
  target_id: string | null;
  /** The target before the action, as JSON; null for creations. */
  before: JsonText | null;
  /** The target after the action, as JSON; null for deletions. */
  after: JsonText | null;
  /** When it happened. */
  at: EpochMs;
}

/**
 * Login attempts per (username, source address), for exponential backoff
 * (src/center/admin/login-throttle.ts). One row per pair that has failed recently.
 */
export interface LoginThrottleTable {
  /** The username tried, in lower case (known or not). */
  username: string;
  /** The client address (an IPv6 address as its /64). */
  source: string;
  /** Attempts counted since the last success or since the row was forgotten. */
  failures: number;
  /** No attempt of this pair is checked before this; 0 when it may try now. */
  blocked_until: EpochMs;
  /** The last counted attempt; rows are forgotten a day after it. */
  last_attempt_at: EpochMs;
}

/**
 * Requests per (route, client key, window) of the per-address rate limits, as the replicas
 * on PostgreSQL have flushed them (src/center/http/rate-limit-store.ts). Unused on SQLite.
 */
export interface RateLimitWindowTable {
  /** The rate-limited route, as `METHOD /path`. */
  route: string;
  /** The client's key: its address (an IPv6 address as its /64). */
  source: string;
  /** When the fixed window began: a multiple of its length. */
  window_start: EpochMs;
  /** When it ends; the row is pruned after. */
  window_end: EpochMs;
  /** Requests every replica has flushed for this window so far. */
  count: number;
}

/**
 * How many devices ran each system version, at most once an hour (`fleet_version_snapshots`):
 * the console's chart of versions over time (src/center/fleet/history.ts).
 */
export interface FleetVersionSnapshotsTable {
  /** The start of the hour the snapshot was taken in. */
  at: EpochMs;
  /** The system version (`image_versions.id`; no foreign key: history outlives versions). */
  version_id: string;
  /** Devices (not killed or retired) whose VMs last reported healthy on it, one per VM. */
  devices: number;
}

/** Every table of Center's database, for `Kysely<Database>`. */
export interface Database {
  images: ImagesTable;
  image_versions: ImageVersionsTable;
  apps: AppsTable;
  profiles: ProfilesTable;
  profile_apps: ProfileAppsTable;
  profile_images: ProfileImagesTable;
  device_groups: DeviceGroupsTable;
  devices: DevicesTable;
  device_profiles: DeviceProfilesTable;
  device_apps: DeviceAppsTable;
  enrolment_tokens: EnrolmentTokensTable;
  rollouts: RolloutsTable;
  rollout_devices: RolloutDevicesTable;
  device_events: DeviceEventsTable;
  commands: CommandsTable;
  admin_users: AdminUsersTable;
  api_tokens: ApiTokensTable;
  audit_log: AuditLogTable;
  publisher_keys: PublisherKeysTable;
  login_throttle: LoginThrottleTable;
  rate_limit_windows: RateLimitWindowTable;
  fleet_version_snapshots: FleetVersionSnapshotsTable;
}

/** A row as read: `Row<'devices'>`. */
export type Row<T extends keyof Database> = Selectable<Database[T]>;

/** A row as inserted: `NewRow<'devices'>`. */
export type NewRow<T extends keyof Database> = Insertable<Database[T]>;

/** The columns an update may set: `RowUpdate<'devices'>`. */
export type RowUpdate<T extends keyof Database> = Updateable<Database[T]>;
