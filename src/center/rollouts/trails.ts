import { sql, type Kysely } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  MAX_TRAIL_EVENTS,
  type DeviceEventPage,
  type DeviceEventsQuery,
  type RolloutDevice,
  type RolloutDevicePage,
  type RolloutDevicesQuery,
  type TrailEvent,
} from '../../protocol/index.ts';
import type { Database, Row } from '../db/index.ts';
import { describeEvent } from './sentences.ts';

/*
 * Outcome trails (DESIGN §3: every device outcome is in an audit trail): what each device
 * reported about a version, read per rollout and per device. The events are `device_events`
 * rows; an event is about a version when its payload names the version's id (the release's
 * `versionId`, a volume's, the version a VM runs), matched in the JSON text, which needs no
 * index of its own: both reads walk one device's events at a time, through the (device_id,
 * occurred_at, event_id) index, so a read costs O(events of the devices on the page), bounded by the
 * page size, and never the whole table.
 */

type EventRow = Pick<
  Row<'device_events'>,
  'device_id' | 'event_id' | 'type' | 'payload' | 'occurred_at' | 'received_at'
>;

function parsePayload(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
}

function reasonOf(data: unknown): string | null {
  const reason = (data as Record<string, unknown> | null)?.['reason'];
  return typeof reason === 'string' ? reason : null;
}

function presentEvent(row: EventRow): TrailEvent {
  const data = parsePayload(row.payload);
  return {
    id: row.event_id,
    type: row.type,
    occurredAt: Number(row.occurred_at),
    receivedAt: Number(row.received_at),
    reason: reasonOf(data),
    data,
  };
}

/**
 * A LIKE pattern matching the JSON text of a payload that names `versionId` as the value of a
 * `versionId`, `fromVersionId` or `runningVersionId` key (JSON.stringify writes no spaces; the
 * pattern leaves out the key's first letter, whose case differs, as PostgreSQL's LIKE minds).
 */
function namesVersion(versionId: string): string {
  const literal = JSON.stringify(versionId).replace(/[\\%_]/g, (c) => `\\${c}`);
  return `%ersionId":${literal}%`;
}

/** A keyset cursor: base64url of a JSON array of a number and a string. */
function encodeCursor(n: number, id: string): string {
  return Buffer.from(JSON.stringify([n, id])).toString('base64url');
}

function decodeCursor(cursor: string): [number, string] {
  const invalid = () =>
    new BulkheadError(ErrorCodes.VALIDATION, 'querystring.cursor: not a cursor from this API');
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (
    !Array.isArray(key) ||
    key.length !== 2 ||
    !Number.isSafeInteger(key[0]) ||
    typeof key[1] !== 'string' ||
    key[1].length > 128
  ) {
    throw invalid();
  }
  return [key[0] as number, key[1]];
}

async function findRollout(db: Kysely<Database>, id: string) {
  const row = await db
    .selectFrom('rollouts as r')
    .innerJoin('image_versions as v', 'v.id', 'r.image_version_id')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .select(['r.id', 'r.image_version_id', 'r.created_at', 'v.version', 'i.name'])
    .where('r.id', '=', id)
    .executeTakeFirst();
  if (row === undefined) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no rollout ${id}`);
  return { ...row, created_at: Number(row.created_at) };
}

/**
 * One page of a rollout's devices, by (phase, device id), each with its outcome trail: the
 * events it sent about the rollout's version since the rollout was created, oldest first (the
 * newest MAX_TRAIL_EVENTS of them). @throws `ERR_NOT_FOUND`; `ERR_VALIDATION` for a bad cursor.
 */
export async function listRolloutDevices(
  db: Kysely<Database>,
  rolloutId: string,
  query: RolloutDevicesQuery,
): Promise<RolloutDevicePage> {
  const rollout = await findRollout(db, rolloutId);
  let q = db
    .selectFrom('rollout_devices as rd')
    .innerJoin('devices as d', 'd.id', 'rd.device_id')
    .select(['rd.device_id', 'd.name', 'rd.phase', 'rd.status', 'rd.reason', 'rd.updated_at'])
    .where('rd.rollout_id', '=', rolloutId)
    .orderBy('rd.phase')
    .orderBy('rd.device_id')
    .limit(query.limit + 1);
  if (query.status !== undefined) q = q.where('rd.status', '=', query.status);
  if (query.cursor !== undefined) {
    const [phase, id] = decodeCursor(query.cursor);
    q = q.where((eb) => eb(eb.refTuple('rd.phase', 'rd.device_id'), '>', eb.tuple(phase, id)));
  }
  const rows = await q.execute();
  const page = rows.slice(0, query.limit);
  const trails = new Map<string, EventRow[]>();
  if (page.length > 0) {
    // One statement for the page: each device's newest events about the version, numbered
    // per device so that only MAX_TRAIL_EVENTS + 1 of each come back.
    const ranked = db
      .selectFrom('device_events')
      .select([
        'device_id',
        'event_id',
        'type',
        'payload',
        'occurred_at',
        'received_at',
        sql<number>`row_number() over (partition by device_id order by occurred_at desc, event_id desc)`.as(
          'n',
        ),
      ])
      .where(
        'device_id',
        'in',
        page.map((r) => r.device_id),
      )
      .where('received_at', '>=', rollout.created_at)
      .where(sql<boolean>`payload like ${namesVersion(rollout.image_version_id)} escape '\\'`);
    const events = await db
      .selectFrom(ranked.as('e'))
      .selectAll()
      .where('n', '<=', MAX_TRAIL_EVENTS + 1)
      .orderBy('device_id')
      .orderBy('occurred_at')
      .orderBy('event_id')
      .execute();
    for (const e of events) {
      const list = trails.get(e.device_id) ?? [];
      list.push(e);
      trails.set(e.device_id, list);
    }
  }
  const last = page.at(-1);
  return {
    rolloutId: rollout.id,
    image: rollout.name,
    version: rollout.version,
    devices: page.map((r): RolloutDevice => {
      const trail = trails.get(r.device_id) ?? [];
      const truncated = trail.length > MAX_TRAIL_EVENTS;
      return {
        deviceId: r.device_id,
        device: r.name,
        phase: Number(r.phase),
        status: r.status,
        reason: r.reason,
        updatedAt: Number(r.updated_at),
        trail: (truncated ? trail.slice(1) : trail).map(presentEvent),
        trailTruncated: truncated,
      };
    }),
    next:
      rows.length > query.limit && last !== undefined
        ? encodeCursor(Number(last.phase), last.device_id)
        : null,
  };
}

/** Every image version id an event's payload names. */
function versionIdsOf(data: unknown): string[] {
  if (typeof data !== 'object' || data === null) return [];
  const d = data as Record<string, unknown>;
  const ids = [d['versionId'], d['fromVersionId'], d['runningVersionId']];
  if (Array.isArray(d['volumes'])) {
    for (const v of d['volumes'] as unknown[]) {
      if (typeof v === 'object' && v !== null) {
        ids.push((v as Record<string, unknown>)['versionId']);
      }
    }
  }
  return ids.filter((x): x is string => typeof x === 'string');
}

/**
 * One page of a device's events, newest first by keyset on (occurred_at, event_id), optionally
 * about one version or rollout, or of one type; with the `image@version` names and VM names
 * they speak of. @throws `ERR_NOT_FOUND` for the device or the rollout; `ERR_VALIDATION` for a
 * bad cursor.
 */
export async function listDeviceEvents(
  db: Kysely<Database>,
  deviceId: string,
  query: DeviceEventsQuery,
): Promise<DeviceEventPage> {
  const device = await db
    .selectFrom('devices')
    .select(['id', 'name'])
    .where('id', '=', deviceId)
    .executeTakeFirst();
  if (device === undefined) throw new BulkheadError(ErrorCodes.NOT_FOUND, `no device ${deviceId}`);
  let q = db
    .selectFrom('device_events')
    .select(['device_id', 'event_id', 'type', 'payload', 'occurred_at', 'received_at'])
    .where('device_id', '=', deviceId)
    .orderBy('occurred_at', 'desc')
    .orderBy('event_id', 'desc')
    .limit(query.limit + 1);
  if (query.rolloutId !== undefined) {
    const rollout = await findRollout(db, query.rolloutId);
    q = q
      .where('received_at', '>=', rollout.created_at)
      .where(sql<boolean>`payload like ${namesVersion(rollout.image_version_id)} escape '\\'`);
  }
  if (query.versionId !== undefined) {
    q = q.where(sql<boolean>`payload like ${namesVersion(query.versionId)} escape '\\'`);
  }
  if (query.type !== undefined) q = q.where('type', '=', query.type);
  if (query.cursor !== undefined) {
    const [at, id] = decodeCursor(query.cursor);
    q = q.where((eb) => eb(eb.refTuple('occurred_at', 'event_id'), '<', eb.tuple(at, id)));
  }
  const rows = await q.execute();
  const page = rows.slice(0, query.limit);
  const events = page.map(presentEvent);
  const versionIds = [...new Set(events.flatMap((e) => versionIdsOf(e.data)))];
  const profileIds = [
    ...new Set(
      events
        .map((e) => (e.data as Record<string, unknown> | null)?.['profileId'])
        .filter((x): x is string => typeof x === 'string'),
    ),
  ];
  const versions =
    versionIds.length === 0
      ? []
      : await db
          .selectFrom('image_versions as v')
          .innerJoin('images as i', 'i.id', 'v.image_id')
          .select(['v.id', 'v.version', 'i.name'])
          .where('v.id', 'in', versionIds)
          .execute();
  const profiles = new Map(
    profileIds.length === 0
      ? []
      : (
          await db
            .selectFrom('profiles')
            .select(['id', 'name'])
            .where('id', 'in', profileIds)
            .execute()
        ).map((p) => [p.id, p.name]),
  );
  const last = page.at(-1);
  const versionNames = Object.fromEntries(versions.map((v) => [v.id, `${v.name}@${v.version}`]));
  return {
    deviceId: device.id,
    device: device.name,
    events: events.map((e) => {
      const profileId = (e.data as Record<string, unknown> | null)?.['profileId'];
      const name = typeof profileId === 'string' ? profiles.get(profileId) : undefined;
      const profile =
        typeof profileId === 'string' && name !== undefined ? { id: profileId, name } : null;
      return {
        ...e,
        vm: name ?? null,
        profile,
        summary: describeEvent(e.type, e.data, name ?? null, versionNames),
      };
    }),
    versionNames,
    next:
      rows.length > query.limit && last !== undefined
        ? encodeCursor(Number(last.occurred_at), last.event_id)
        : null,
  };
}
