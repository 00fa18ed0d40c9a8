import { hash, type KeyObject } from 'node:crypto';
import { sql, type Kysely } from 'kysely';
import type { Database, DeviceState } from '../db/index.ts';
import { signPayload } from '../../image/keys.ts';
import { canonicalJson, type DesiredState, type SignedDesiredState } from '../../protocol/index.ts';
import { DOMAINS } from './credentials.ts';

/*
 * The desired-state hot path. Devices poll it with If-None-Match, so the 304 must be cheap:
 * it costs one statement on the devices primary key with two sub-selects on the commands
 * (device_id, state) index, and builds nothing.
 *
 * Revision. The document changes when the device row changes (`devices.updated_at`, which
 * does not move on contact) or any of its commands does (`commands.updated_at`, set on every
 * state change), so `revision` is the later of the two, and the pending-command count joins
 * the ETag for two changes within one millisecond. No new column: whoever writes a device or
 * a command already sets those times.
 *
 * Freshness. The document carries `generatedAt` and `expiresAt` so a device can refuse an old
 * one replayed at it (rollback) and notices when it stops getting new ones (freeze). To keep
 * the document, and so its ETag, stable while nothing changes, `generatedAt` is the start of
 * the current hour (or the revision, if later) and the document is valid for a day after it.
 * Ed25519 signatures are deterministic, so the bytes are a pure function of (device, revision,
 * pending count, generatedAt, signing key): the ETag is a hash of exactly those, a strong
 * validator computed without building the document.
 */

export const DESIRED_STATE_WINDOW_MS = 60 * 60_000;
export const DESIRED_STATE_VALIDITY_MS = 24 * 60 * 60_000;

/** What the hot path reads about a device. */
export interface DesiredStateHead {
  deviceId: string;
  state: DeviceState;
  revision: number;
  pendingCommands: number;
  generatedAt: number;
  etag: string;
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
      'd.updated_at',
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
    ])
    .where('d.id', '=', deviceId)
    .executeTakeFirst();
  if (row === undefined) return undefined;
  const revision = Math.max(Number(row.updated_at), Number(row.commands_at ?? 0));
  const nowMs = now.getTime();
  const generatedAt = Math.max(
    nowMs - (nowMs % DESIRED_STATE_WINDOW_MS),
    Math.min(revision, nowMs),
  );
  const pendingCommands = Number(row.pending ?? 0);
  const etag = `"${hash(
    'sha256',
    canonicalJson({ deviceId, revision, pendingCommands, generatedAt, keyid }),
  ).slice(0, 40)}"`;
  return { deviceId, state: row.state, revision, pendingCommands, generatedAt, etag };
}

/** Builds and signs the document `head` describes. */
export async function buildDesiredState(
  db: Kysely<Database>,
  head: DesiredStateHead,
  signer: { key: KeyObject; keyid: string },
  mirrors: readonly string[],
): Promise<SignedDesiredState> {
  const commands = await db
    .selectFrom('commands')
    .select(['id', 'kind', 'profile_id', 'created_at'])
    .where('device_id', '=', head.deviceId)
    .where('state', '=', 'pending')
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  const publishers = await db
    .selectFrom('publisher_keys')
    .select(['keyid', 'public_key'])
    .where('revoked_at', 'is', null)
    .orderBy('keyid')
    .execute();
  const state: DesiredState = {
    deviceId: head.deviceId,
    revision: head.revision,
    generatedAt: head.generatedAt,
    expiresAt: head.generatedAt + DESIRED_STATE_VALIDITY_MS,
    device: { state: head.state },
    mirrors: [...mirrors],
    publishers: publishers.map((p) => ({ keyid: p.keyid, publicKey: p.public_key })),
    // TODO(issue 3): VMs from the device's profiles and rollouts.
    vms: [],
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
  };
}

/** Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 asks). */
export function matchesEtag(ifNoneMatch: string | undefined, etag: string): boolean {
  if (ifNoneMatch === undefined) return false;
  if (ifNoneMatch.trim() === '*') return true;
  return ifNoneMatch.split(',').some((t) => t.trim().replace(/^W\//, '') === etag);
}
