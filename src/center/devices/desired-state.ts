import { hash, hkdfSync, type KeyObject } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';
import { machineOfRow, type Database, type DeviceState, type Row } from '../db/index.ts';
import {
  signPayload,
  canonicalJson,
  parseEncryptionPublicKey,
  wrapDataKey,
  wrappedKeyDigest,
} from '../../signing/index.ts';
import {
  DEFAULT_VM_MACHINE,
  HealthCheckSchema,
  IsolationPolicySchema,
  type AppVolumeRef,
  type DesiredState,
  type DesiredVm,
  type PublicKeyRef,
  type SignedDesiredState,
  type VmMachineHint,
} from '../../protocol/index.ts';
import { resolveVersions } from '../rollouts/resolve.ts';
import { DOMAINS } from './credentials.ts';

/*
 * The desired-state hot path. Devices poll it with If-None-Match, so the 304 must be cheap:
 * it costs one statement on the devices primary key with two sub-selects on the commands
 * (device_id, state) index and one over the device's profiles' images (primary keys), and
 * builds nothing.
 *
 * Revision. The document changes when the device row changes (`devices.updated_at`, which
 * does not move on contact) or any of its commands does (`commands.updated_at`, set on every
 * state change), so `revision` is the later of the two, and the pending-command count joins
 * the ETag for two changes within one millisecond. No new column: whoever writes a device or
 * a command already sets those times. Whatever changes what a device should run marks it
 * changed (`markChanged`, src/center/changes), which moves `updated_at` of the devices
 * concerned: a rollout phase (its newly included devices), an abort, a profile, app or device
 * change, a command issued or settled, a new released version (every device holding a profile
 * on the image), a change of publisher keys (every device). The revision also takes the
 * latest `updated_at` of the images the device's profiles use (system images and the images
 * of the apps they offer), so that an image row written without marking its devices still
 * moves it: a few primary-key probes per poll. Those images cannot be deleted while in use,
 * so that maximum never goes back.
 *
 * Freshness. The document carries `generatedAt` and `expiresAt` so a device can refuse an old
 * one replayed at it (rollback) and notices when it stops getting new ones (freeze). To keep
 * the document, and so its ETag, stable while nothing changes, `generatedAt` is the start of
 * the current hour (or the revision, if later) and the document is valid for a day after it.
 * The ETag is a hash of (device, revision, pending-command count, generatedAt, signing key id),
 * computed without building the document. Ed25519 signatures are deterministic, so while
 * Center's configuration stays the same those determine the bytes and the ETag is a strong
 * validator. That covers the whole envelope, wrapped keys included: a wrapping is derived from
 * the signing key, the device, the profile and the device's encryption key, so the same inputs
 * give the same text, and its digest is inside the signed body. Two inputs of the document are
 * not in it: the mirror list and the poll interval
 * come from Center's configuration, so a change to either reaches a device that holds a current
 * ETag only with the next change of its revision or at the next hourly window.
 */

export const DESIRED_STATE_WINDOW_MS = 60 * 60_000;

/** Start of the window `nowMs` falls in; a document's `generatedAt` is never before it. */
export function desiredStateWindow(nowMs: number): number {
  return nowMs - (nowMs % DESIRED_STATE_WINDOW_MS);
}
export const DESIRED_STATE_VALIDITY_MS = 24 * 60 * 60_000;

/** What the hot path reads about a device. */
export interface DesiredStateHead {
  deviceId: string;
  state: DeviceState;
  /** The device's group (rollouts target groups). */
  groupId: string;
  revision: number;
  pendingCommands: number;
  generatedAt: number;
  etag: string;
  /** The device's X25519 encryption key (raw, base64), null when it enrolled without one. */
  encryptionKey: string | null;
}

/** The device's revision and ETag now, or undefined for an unknown device. */
export async function readDesiredStateHead(
  db: Kysely<Database>,
  deviceId: string,
  now: Date,
  keyid: string,
): Promise<DesiredStateHead | undefined> {
  const row = await db
    .selectFrom('devices as d')
    .select((eb) => [
      'd.state',
      'd.group_id',
      'd.updated_at',
      'd.encryption_key',
      eb
        .selectFrom('commands as c')
        .select((c) => c.fn.max('c.updated_at').as('m'))
        .whereRef('c.device_id', '=', 'd.id')
        .as('commands_at'),
      eb
        .selectFrom('commands as c')
        .select(sql<number>`count(*)`.as('n'))
        .whereRef('c.device_id', '=', 'd.id')
        .where('c.state', '=', 'pending')
        .as('pending'),
      sql<number | null>`(select max(t.at) from (
        select i.updated_at as at from device_profiles dp
          join profiles p on p.id = dp.profile_id
          join images i on i.id = p.system_image_id
          where dp.device_id = d.id
        union all
        select i.updated_at as at from device_profiles dp
          join profile_apps pa on pa.profile_id = dp.profile_id
          join apps a on a.id = pa.app_id
          join images i on i.id = a.image_id
          where dp.device_id = d.id) t)`.as('images_at'),
    ])
    .where('d.id', '=', deviceId)
    .executeTakeFirst();
  if (row === undefined) return undefined;
  const revision = Math.max(
    Number(row.updated_at),
    Number(row.commands_at ?? 0),
    Number(row.images_at ?? 0),
  );
  const nowMs = now.getTime();
  const generatedAt = Math.max(desiredStateWindow(nowMs), Math.min(revision, nowMs));
  const pendingCommands = Number(row.pending ?? 0);
  const etag = `"${hash(
    'sha256',
    canonicalJson({ deviceId, revision, pendingCommands, generatedAt, keyid }),
  ).slice(0, 40)}"`;
  return {
    deviceId,
    state: row.state,
    groupId: row.group_id,
    revision,
    pendingCommands,
    generatedAt,
    etag,
    encryptionKey: row.encryption_key,
  };
}

/**
 * Logs a warning about a VM left out of desired states once per key (profile and image), not
 * on every poll of every device. Remembers at most `limit` keys.
 */
export type VmWarning = (key: string, fields: Record<string, unknown>, message: string) => void;

export function warnOnce(log: Logger, limit = 10_000): VmWarning {
  const seen = new Set<string>();
  return (key, fields, message) => {
    if (seen.has(key) || seen.size >= limit) return;
    seen.add(key);
    log.warn(fields, message);
  };
}

/**
 * The key of a work VM's encrypted data volume, escrowed at Center: HKDF-SHA256 of Center's
 * signing private key (PKCS#8 DER) with info `bulkhead data-key v1:<device>:<profile>`, 32
 * bytes, base64. Deterministic, so Center stores no key and every replica derives the same one;
 * distinct per device and profile. It travels only inside the device-authenticated desired
 * state, which is never logged; whoever holds Center's signing key can derive every data key.
 */
export function deriveDataKey(signingKey: KeyObject, deviceId: string, profileId: string): string {
  const ikm = signingKey.export({ type: 'pkcs8', format: 'der' });
  const info = `bulkhead data-key v1:${deviceId}:${profileId}`;
  return Buffer.from(hkdfSync('sha256', ikm, Buffer.alloc(0), info, 32)).toString('base64');
}

const DAY_MS = 86_400_000;

/**
 * The data key of one VM as its desired state carries it: wrapped to the device's encryption
 * key, or, for a device enrolled before it had one, no key and the reason. The wrapping's
 * ephemeral key and nonce are derived (HKDF of Center's signing key over device, profile and
 * the device's key), so the same key wraps to the same text: documents, and so ETags and
 * caches, stay stable. Equal texts reveal only that the key did not change, which the profile
 * id says already.
 */
function vmKey(
  signingKey: KeyObject,
  head: DesiredStateHead,
  profileId: string,
): { wrapped: string } | { keyUnavailable: string } {
  if (head.encryptionKey === null) {
    return {
      keyUnavailable:
        'this device enrolled before devices had encryption keys, so Center cannot send the VM its data key; enrol the device again (bulkhead engine enroll --force)',
    };
  }
  const ikm = signingKey.export({ type: 'pkcs8', format: 'der' });
  const seed = (label: string, n: number) =>
    Buffer.from(
      hkdfSync(
        'sha256',
        ikm,
        Buffer.alloc(0),
        `bulkhead wrap ${label} v1:${head.deviceId}:${profileId}:${head.encryptionKey}`,
        n,
      ),
    );
  return {
    wrapped: wrapDataKey(
      parseEncryptionPublicKey(head.encryptionKey),
      Buffer.from(deriveDataKey(signingKey, head.deviceId, profileId), 'base64'),
      { deviceId: head.deviceId, profileId },
      { ephemeralSeed: seed('ephemeral', 32), nonce: seed('nonce', 12) },
    ),
  };
}

/** A volume a profile resolves to for one device (a `VolumeRef`). */
type ResolvedVolume = Omit<AppVolumeRef, 'appId' | 'name'>;

/** One profile a device holds, with the versions the rollout model gives it. */
export interface ResolvedProfile {
  profile: Row<'profiles'>;
  /** Undefined when its system image has no released or rolled-out version. */
  system: ResolvedVolume | undefined;
  /** Its default apps and the optional ones the device chose, in name order. */
  apps: { appId: string; name: string; imageId: string; volume: ResolvedVolume | undefined }[];
  /** A personal profile's images (default first) that resolve to a version; else empty. */
  personalImages: ResolvedVolume[];
}

/**
 * The profiles a device holds, in name order, each with the system image version and the app
 * versions (the profile's default apps and the optional ones the device chose) resolved by the
 * rollout model: what its desired state gives it, as administrators see it too. Four
 * statements, whatever the number of profiles.
 */
export async function resolveDeviceProfiles(
  db: Kysely<Database>,
  device: { deviceId: string; groupId: string },
): Promise<ResolvedProfile[]> {
  const profiles = await db
    .selectFrom('device_profiles as dp')
    .innerJoin('profiles as p', 'p.id', 'dp.profile_id')
    .selectAll('p')
    .where('dp.device_id', '=', device.deviceId)
    .orderBy('p.name')
    .execute();
  if (profiles.length === 0) return [];
  const profileIds = profiles.map((p) => p.id);
  const apps = await db
    .selectFrom('profile_apps as pa')
    .innerJoin('apps as a', 'a.id', 'pa.app_id')
    .select(['pa.profile_id', 'a.id', 'a.name', 'a.image_id'])
    .where('pa.profile_id', 'in', profileIds)
    .where((eb) =>
      eb.or([
        eb('pa.mode', '=', 'default'),
        eb.exists(
          eb
            .selectFrom('device_apps as da')
            .select('da.app_id')
            .where('da.device_id', '=', device.deviceId)
            .whereRef('da.profile_id', '=', 'pa.profile_id')
            .whereRef('da.app_id', '=', 'pa.app_id'),
        ),
      ]),
    )
    .orderBy('a.name')
    .execute();
  const personal = profiles.filter((p) => p.kind === 'personal').map((p) => p.id);
  const offered =
    personal.length === 0
      ? []
      : await db
          .selectFrom('profile_images')
          .select(['profile_id', 'image_id'])
          .where('profile_id', 'in', personal)
          .execute();
  const imageIds = [
    ...new Set([
      ...profiles.map((p) => p.system_image_id),
      ...apps.map((a) => a.image_id),
      ...offered.map((o) => o.image_id),
    ]),
  ];
  const resolved = await resolveVersions(
    db,
    { id: device.deviceId, groupId: device.groupId, profileIds: new Set(profileIds) },
    imageIds,
  );
  const versionIds = [...new Set(resolved.values())];
  const versions =
    versionIds.length === 0
      ? []
      : await db
          .selectFrom('image_versions as v')
          .innerJoin('images as i', 'i.id', 'v.image_id')
          .select(['v.id', 'v.version', 'v.manifest_id', 'v.size', 'v.image_id', 'i.name'])
          .where('v.id', 'in', versionIds)
          .execute();
  const byId = new Map(versions.map((v) => [v.id, v]));
  const volumeOf = (imageId: string): ResolvedVolume | undefined => {
    const v = byId.get(resolved.get(imageId) ?? '');
    // A released version of another image is a broken row, not a version of this one.
    if (v === undefined || v.image_id !== imageId) return undefined;
    return {
      image: v.name,
      imageId,
      version: v.version,
      versionId: v.id,
      manifestId: v.manifest_id,
      size: Number(v.size),
    };
  };
  return profiles.map((profile) => ({
    profile,
    system: volumeOf(profile.system_image_id),
    personalImages:
      profile.kind === 'personal'
        ? [
            profile.system_image_id,
            ...offered
              .filter((o) => o.profile_id === profile.id && o.image_id !== profile.system_image_id)
              .map((o) => o.image_id)
              .sort(),
          ]
            .map(volumeOf)
            .filter((v) => v !== undefined)
        : [],
    apps: apps
      .filter((a) => a.profile_id === profile.id)
      .map((a) => ({
        appId: a.id,
        name: a.name,
        imageId: a.image_id,
        volume: volumeOf(a.image_id),
      })),
  }));
}

/**
 * The VMs of a device: one per profile it holds, resolved by `resolveDeviceProfiles`. A profile
 * whose system image resolves to no version is left out, and so is an app that resolves to
 * none; `warn` hears of each once.
 */
async function buildVms(
  db: Kysely<Database>,
  head: DesiredStateHead,
  signingKey: KeyObject,
  warn: VmWarning,
): Promise<{ vms: DesiredVm[]; wrappedKeys: Record<string, string> }> {
  const resolved = await resolveDeviceProfiles(db, head);
  const vms: DesiredVm[] = [];
  const wrappedKeys: Record<string, string> = {};
  for (const { profile: p, system, apps, personalImages } of resolved) {
    if (system === undefined) {
      warn(
        `${p.id}:${p.system_image_id}`,
        { profileId: p.id, profile: p.name, imageId: p.system_image_id },
        'profile left out of desired states: its system image has no released or rolled-out version',
      );
      continue;
    }
    const policy = IsolationPolicySchema.safeParse(parseJson(p.isolation_policy));
    const healthCheck = HealthCheckSchema.safeParse(parseJson(p.health_check));
    if (!policy.success || !healthCheck.success) {
      warn(
        `${p.id}:policy:${Number(p.updated_at)}`,
        { profileId: p.id, profile: p.name },
        'profile left out of desired states: its isolation policy or health check is unreadable',
      );
      continue;
    }
    const appRefs: AppVolumeRef[] = [];
    for (const { volume, ...a } of apps) {
      if (volume === undefined) {
        warn(
          `${p.id}:${a.appId}:${a.imageId}`,
          { profileId: p.id, appId: a.appId, app: a.name, imageId: a.imageId },
          'app left out of desired states: its image has no released or rolled-out version',
        );
        continue;
      }
      appRefs.push({ ...volume, appId: a.appId, name: a.name });
    }
    const leaseDays = Number(p.lease_days);
    const machine = machineOfRow(p);
    // The TPM's state is encrypted with a key derived from the data key (Engine). The personal
    // VM's key is the user's, made on the PC: Center never has one to send.
    const key: ReturnType<typeof vmKey> | Record<string, never> =
      p.kind !== 'personal' && (policy.data.encryptData || machine.tpm)
        ? vmKey(signingKey, head, p.id)
        : {};
    // The wrapped key goes beside the signature, its digest inside the signed body.
    if ('wrapped' in key) wrappedKeys[p.id] = key.wrapped;
    vms.push({
      name: p.name,
      profileId: p.id,
      system,
      apps: appRefs,
      policy: policy.data,
      healthCheck: healthCheck.data,
      resources: { cpus: Number(p.cpus), memoryMib: Number(p.memory_mib) },
      resetPolicy: p.reset_policy,
      lease: { days: leaseDays, expiresAt: head.generatedAt + leaseDays * DAY_MS },
      // Only a machine other than the default is sent: documents of profiles that never chose
      // one stay as they were.
      ...(isDefaultMachine(machine) ? {} : { machine }),
      ...(p.kind === 'personal' ? { personal: { images: personalImages } } : {}),
      ...('wrapped' in key ? { wrappedDataKeyDigest: wrappedKeyDigest(key.wrapped) } : {}),
      ...('keyUnavailable' in key ? { keyUnavailable: key.keyUnavailable } : {}),
    });
  }
  return { vms, wrappedKeys };
}

function isDefaultMachine(m: VmMachineHint): boolean {
  return (Object.keys(DEFAULT_VM_MACHINE) as (keyof VmMachineHint)[]).every(
    (k) => m[k] === DEFAULT_VM_MACHINE[k],
  );
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The publisher keys Center trusts now (not revoked), as desired states list them. */
export async function readPublishers(db: Kysely<Database>): Promise<PublicKeyRef[]> {
  const rows = await db
    .selectFrom('publisher_keys')
    .select(['keyid', 'public_key'])
    .where('revoked_at', 'is', null)
    .orderBy('keyid')
    .execute();
  return rows.map((p) => ({ keyid: p.keyid, publicKey: p.public_key }));
}

/**
 * Builds and signs the document `head` describes. The envelope carries the VMs' data keys,
 * wrapped to the device, beside the signature (`wrappedKeys`), and the signed body their
 * digests: it goes only to the device it names, and is never logged.
 */
export async function buildDesiredState(
  db: Kysely<Database>,
  head: DesiredStateHead,
  signer: { key: KeyObject; keyid: string },
  mirrors: readonly string[],
  options: {
    warn?: VmWarning;
    publishers?: () => Promise<PublicKeyRef[]>;
    pollIntervalSeconds?: number;
  } = {},
): Promise<SignedDesiredState> {
  // Independent reads: on PostgreSQL they go out on separate pooled connections at once.
  const [commands, publishers, { vms, wrappedKeys }] = await Promise.all([
    db
      .selectFrom('commands')
      .select(['id', 'kind', 'profile_id', 'created_at'])
      .where('device_id', '=', head.deviceId)
      .where('state', '=', 'pending')
      .orderBy('created_at')
      .orderBy('id')
      .execute(),
    options.publishers?.() ?? readPublishers(db),
    buildVms(db, head, signer.key, options.warn ?? (() => undefined)),
  ]);
  const state: DesiredState = {
    deviceId: head.deviceId,
    revision: head.revision,
    generatedAt: head.generatedAt,
    expiresAt: head.generatedAt + DESIRED_STATE_VALIDITY_MS,
    device: { state: head.state },
    ...(options.pollIntervalSeconds === undefined
      ? {}
      : { pollIntervalSeconds: options.pollIntervalSeconds }),
    mirrors: [...mirrors],
    publishers,
    vms,
    commands: commands.map((c) => ({
      id: c.id,
      kind: c.kind,
      profileId: c.profile_id,
      issuedAt: Number(c.created_at),
    })),
  };
  return {
    state,
    keyid: signer.keyid,
    signature: signPayload(DOMAINS.desiredState, canonicalJson(state), signer.key),
    ...(Object.keys(wrappedKeys).length > 0 ? { wrappedKeys } : {}),
  };
}

/**
 * When the lease of a document runs out for the device: its earliest VM's (past it, that VM
 * does not start without contact); null without a VM that has a lease.
 */
export function leaseExpiry(state: DesiredState): number | null {
  const ends = state.vms.flatMap((vm) => (vm.lease === undefined ? [] : [vm.lease.expiresAt]));
  return ends.length === 0 ? null : Math.min(...ends);
}

/** Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 asks). */
export function matchesEtag(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  if (ifNoneMatch.trim() === '*') return true;
  return ifNoneMatch.split(',').some((t) => t.trim().replace(/^W\//, '') === etag);
}
