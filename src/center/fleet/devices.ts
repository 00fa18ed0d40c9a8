import { sql, type Kysely, type Transaction } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type DeviceDetail,
  type DeviceListQuery,
  type DevicePage,
  type DeviceSummary,
  type UpdateDeviceRequest,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { markChanged, runCommand } from '../changes/index.ts';
import { hasRow, type Database, type Row } from '../db/index.ts';
import { cancelOpenCommands, presentCommand } from './commands.ts';
import { badReference, notFound, parseJson, type FleetDeps } from './common.ts';

type SummaryRow = Pick<
  Row<'devices'>,
  'id' | 'name' | 'group_id' | 'state' | 'enrolled_at' | 'last_contact_at' | 'updated_at'
>;

const SUMMARY_COLUMNS = [
  'id',
  'name',
  'group_id',
  'state',
  'enrolled_at',
  'last_contact_at',
  'updated_at',
] as const;

function presentSummary(row: SummaryRow): DeviceSummary {
  return {
    id: row.id,
    name: row.name,
    groupId: row.group_id,
    state: row.state,
    enrolledAt: Number(row.enrolled_at),
    lastContactAt: Number(row.last_contact_at),
    updatedAt: Number(row.updated_at),
  };
}

/** The opaque cursor of a page: the sort key of its last row. */
function encodeCursor(row: SummaryRow): string {
  return Buffer.from(JSON.stringify([Number(row.enrolled_at), row.id])).toString('base64url');
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
    !/^[0-9a-f-]{36}$/.test(key[1])
  ) {
    throw invalid();
  }
  return [key[0] as number, key[1]];
}

/** `%`, `_` and the escape itself taken literally in a LIKE pattern. */
function likePrefix(text: string): string {
  return `${text.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

/**
 * The statement of one page of the device list: oldest enrolment first, by keyset on
 * (enrolled_at, id). Migration 0004 gives each filter shape (none, group, state, group and
 * state) an index in this order, so the database walks the index from the cursor and stops
 * after `limit + 1` matching rows; profile, name and last-contact filters are checked on the
 * rows walked. Exported so tests can check the plan.
 */
export function deviceListQuery(db: Kysely<Database>, query: DeviceListQuery) {
  let q = db
    .selectFrom('devices')
    .select(SUMMARY_COLUMNS)
    .orderBy('enrolled_at')
    .orderBy('id')
    .limit(query.limit + 1);
  if (query.groupId !== undefined) q = q.where('group_id', '=', query.groupId);
  if (query.state !== undefined) q = q.where('state', '=', query.state);
  if (query.lastContactBefore !== undefined) {
    q = q.where('last_contact_at', '<', query.lastContactBefore);
  }
  if (query.q !== undefined) {
    q = q.where(sql<boolean>`lower(name) like ${likePrefix(query.q)} escape '\\'`);
  }
  if (query.profileId !== undefined) {
    const profileId = query.profileId;
    q = q.where(({ exists, selectFrom }) =>
      exists(
        selectFrom('device_profiles as dp')
          .select('dp.device_id')
          .whereRef('dp.device_id', '=', 'devices.id')
          .where('dp.profile_id', '=', profileId),
      ),
    );
  }
  if (query.cursor !== undefined) {
    const [enrolledAt, id] = decodeCursor(query.cursor);
    q = q.where((eb) => eb(eb.refTuple('enrolled_at', 'id'), '>', eb.tuple(enrolledAt, id)));
  }
  return q;
}

export async function listDevices(
  db: Kysely<Database>,
  query: DeviceListQuery,
): Promise<DevicePage> {
  const rows = await deviceListQuery(db, query).execute();
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    devices: page.map(presentSummary),
    next: rows.length > query.limit && last ? encodeCursor(last) : null,
  };
}

async function findDevice(db: Kysely<Database>, id: string): Promise<Row<'devices'>> {
  const row = await db.selectFrom('devices').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw notFound('device', id);
  return row;
}

/** Everything about one device an administrator looks at. @throws `ERR_NOT_FOUND`. */
export async function getDevice(db: Kysely<Database>, id: string): Promise<DeviceDetail> {
  const row = await findDevice(db, id);
  const group = await db
    .selectFrom('device_groups')
    .select(['id', 'name'])
    .where('id', '=', row.group_id)
    .executeTakeFirstOrThrow();
  const profiles = await db
    .selectFrom('device_profiles as dp')
    .innerJoin('profiles as p', 'p.id', 'dp.profile_id')
    .select(['p.id', 'p.name'])
    .where('dp.device_id', '=', id)
    .orderBy('p.name')
    .execute();
  const apps = await db
    .selectFrom('device_apps as da')
    .innerJoin('apps as a', 'a.id', 'da.app_id')
    .select(['da.profile_id', 'da.app_id', 'a.name'])
    .where('da.device_id', '=', id)
    .orderBy('da.profile_id')
    .orderBy('a.name')
    .execute();
  const events = await db
    .selectFrom('device_events')
    .selectAll()
    .where('device_id', '=', id)
    .orderBy('occurred_at', 'desc')
    .limit(20)
    .execute();
  const commands = await db
    .selectFrom('commands')
    .selectAll()
    .where('device_id', '=', id)
    .where('state', 'in', ['pending', 'delivered'])
    .orderBy('created_at')
    .orderBy('id')
    .execute();
  return {
    ...presentSummary(row),
    inventory: parseJson(row.inventory),
    group,
    profiles,
    apps: apps.map((a) => ({ profileId: a.profile_id, appId: a.app_id, name: a.name })),
    currentVersions: parseJson(row.current_versions),
    recentEvents: events.map((e) => ({
      id: e.event_id,
      type: e.type,
      data: parseJson(e.payload),
      occurredAt: Number(e.occurred_at),
      receivedAt: Number(e.received_at),
    })),
    pendingCommands: commands.map(presentCommand),
  };
}

/** What the audit trail records of a device's assignment. */
async function assignment(trx: Transaction<Database>, id: string) {
  const row = await findDevice(trx, id);
  const profiles = await trx
    .selectFrom('device_profiles')
    .select('profile_id')
    .where('device_id', '=', id)
    .orderBy('profile_id')
    .execute();
  const apps = await trx
    .selectFrom('device_apps')
    .select(['profile_id', 'app_id'])
    .where('device_id', '=', id)
    .orderBy('profile_id')
    .orderBy('app_id')
    .execute();
  return {
    row,
    audit: {
      name: row.name,
      groupId: row.group_id,
      state: row.state,
      profiles: profiles.map((p) => p.profile_id),
      apps: apps.map((a) => ({ profileId: a.profile_id, appId: a.app_id })),
    },
  };
}

/**
 * Renames a device, moves it to another group, replaces its profiles and/or its chosen apps,
 * in one transaction; then marks its desired state changed and tells it. Profiles it keeps keep their app choices unless
 * `apps` replaces them.
 *
 * @throws BulkheadError `ERR_NOT_FOUND`; `ERR_VALIDATION` naming the field for a missing group
 *   or profile, or an app that is not an optional app of a profile the device holds.
 */
export async function updateDevice(
  deps: FleetDeps,
  actor: Actor,
  id: string,
  input: UpdateDeviceRequest,
): Promise<DeviceDetail> {
  await runCommand(deps, actor, DEVICE('update', id), async (trx, at) => {
    const before = await assignment(trx, id);
    if (input.groupId !== undefined && !(await hasRow(trx, 'device_groups', input.groupId))) {
      throw badReference('body.groupId', `no device group ${input.groupId}`);
    }
    if (input.name !== undefined || input.groupId !== undefined) {
      await trx
        .updateTable('devices')
        .set({
          name: input.name ?? before.row.name,
          group_id: input.groupId ?? before.row.group_id,
        })
        .where('id', '=', id)
        .execute();
    }
    const held = new Set(input.profiles ?? before.audit.profiles);
    if (input.profiles !== undefined) {
      const wanted = input.profiles;
      if (wanted.length > 0) {
        const found = await trx
          .selectFrom('profiles')
          .select('id')
          .where('id', 'in', wanted)
          .execute();
        const known = new Set(found.map((r) => r.id));
        const missing = wanted.findIndex((p) => !known.has(p));
        if (missing >= 0) {
          throw badReference(`body.profiles.${missing}`, `no profile ${wanted[missing]}`);
        }
      }
      const dropped = before.audit.profiles.filter((p) => !held.has(p));
      if (dropped.length > 0) {
        // Cascades to the app choices within the dropped profiles.
        await trx
          .deleteFrom('device_profiles')
          .where('device_id', '=', id)
          .where('profile_id', 'in', dropped)
          .execute();
      }
      const added = wanted.filter((p) => !before.audit.profiles.includes(p));
      if (added.length > 0) {
        await trx
          .insertInto('device_profiles')
          .values(added.map((p) => ({ device_id: id, profile_id: p })))
          .execute();
      }
    }
    if (input.apps !== undefined) {
      const apps = input.apps;
      const optional =
        apps.length === 0
          ? []
          : await trx
              .selectFrom('profile_apps')
              .select(['profile_id', 'app_id'])
              .where('mode', '=', 'optional')
              .where(
                'profile_id',
                'in',
                apps.map((a) => a.profileId),
              )
              .execute();
      const offered = new Set(optional.map((o) => `${o.profile_id}/${o.app_id}`));
      apps.forEach((a, i) => {
        if (!held.has(a.profileId)) {
          throw badReference(`body.apps.${i}.profileId`, 'the device does not hold this profile');
        }
        if (!offered.has(`${a.profileId}/${a.appId}`)) {
          throw badReference(`body.apps.${i}.appId`, 'not an optional app of this profile');
        }
      });
      await trx.deleteFrom('device_apps').where('device_id', '=', id).execute();
      const unique = [...new Map(apps.map((a) => [`${a.profileId}/${a.appId}`, a])).values()];
      if (unique.length > 0) {
        await trx
          .insertInto('device_apps')
          .values(unique.map((a) => ({ device_id: id, profile_id: a.profileId, app_id: a.appId })))
          .execute();
      }
    }
    await markChanged(trx, { devices: [id] }, at);
    const after = await assignment(trx, id);
    return { result: undefined, before: before.audit, after: after.audit };
  });
  return getDevice(deps.db, id);
}

/**
 * Retires a device: it is refused from then on and its unacknowledged commands are cancelled.
 * Retiring a retired device changes nothing.
 * @throws BulkheadError `ERR_NOT_FOUND`.
 */
export async function retireDevice(deps: FleetDeps, actor: Actor, id: string): Promise<void> {
  await runCommand(deps, actor, DEVICE('retire', id), async (trx, at) => {
    const before = await findDevice(trx, id);
    if (before.state === 'retired') return { result: undefined, unchanged: true };
    await trx.updateTable('devices').set({ state: 'retired' }).where('id', '=', id).execute();
    await cancelOpenCommands(trx, id, at);
    await markChanged(trx, { devices: [id] }, at);
    const after = { ...presentSummary(before), state: 'retired' };
    return { result: undefined, before: presentSummary(before), after };
  });
}

const DEVICE = (verb: string, id: string) => ({ action: `device.${verb}`, target: 'device', id });
