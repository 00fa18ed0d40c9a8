import { sql, type Kysely, type RawBuilder, type Transaction } from 'kysely';
import {
  BulkheadError,
  ErrorCodes,
  type DeviceDetail,
  type DeviceListQuery,
  type DeviceListItem,
  type DevicePage,
  type DeviceSortName,
  type DeviceSummary,
  type UpdateDeviceRequest,
  type VersionName,
  CurrentVersionsSchema,
  DeviceHardwareSchema,
  type CurrentVersions,
  type DeviceHardware,
} from '../../protocol/index.ts';
import type { Actor } from '../admin/audit.ts';
import { markChanged, runCommand } from '../changes/index.ts';
import { hasRow, type Database, type Row } from '../db/index.ts';
import { resolveDeviceProfiles } from '../devices/index.ts';
import { cancelOpenCommands, presentCommand } from './commands.ts';
import { badReference, notFound, parseJson, type FleetDeps } from './common.ts';
import { hasStatus, leaseOf, statusOf, type StatusClock } from './status.ts';

type SummaryRow = Pick<
  Row<'devices'>,
  | 'id'
  | 'name'
  | 'group_id'
  | 'state'
  | 'enrolled_at'
  | 'last_contact_at'
  | 'updated_at'
  | 'update_status'
  | 'lease_expires_at'
>;

const SUMMARY_COLUMNS = [
  'id',
  'name',
  'group_id',
  'state',
  'enrolled_at',
  'last_contact_at',
  'updated_at',
  'update_status',
  'lease_expires_at',
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

function presentStanding(row: SummaryRow, clock: StatusClock) {
  return { status: statusOf(row, clock), leaseExpiresAt: leaseOf(row) };
}

/**
 * The keyset of each order: its columns and direction. A cursor carries the order's tag and the
 * key of the page's last row, so a cursor made in one order is refused in another. The
 * enrolment order's cursors keep their first form (`[enrolledAt, id]`), which scripts may hold.
 */
const ORDERS = {
  enrolled: { key: sql<number>`enrolled_at`, direction: 'asc', tag: null, text: false },
  // Case ignored, as people read names; the database's lower() (SQLite's folds ASCII only)
  // makes the key, so the cursor carries the key as the index holds it.
  name: { key: sql<string>`lower(name)`, direction: 'asc', tag: 'n', text: true },
  lastContact: { key: sql<number>`last_contact_at`, direction: 'desc', tag: 'c', text: false },
} as const satisfies Record<
  DeviceSortName,
  {
    key: RawBuilder<number | string>;
    direction: 'asc' | 'desc';
    tag: string | null;
    text: boolean;
  }
>;

/** The opaque cursor of a page: the sort key of its last row. */
function encodeCursor(sort: DeviceSortName, row: SummaryRow & { sort_key: unknown }): string {
  const { tag, text } = ORDERS[sort];
  const value = text ? String(row.sort_key) : Number(row.sort_key);
  const key = tag === null ? [value, row.id] : [tag, value, row.id];
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

function decodeCursor(sort: DeviceSortName, cursor: string): [number | string, string] {
  const invalid = () =>
    new BulkheadError(
      ErrorCodes.VALIDATION,
      `querystring.cursor: not a cursor of this API for sort=${sort}`,
    );
  let key: unknown;
  try {
    key = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  const { text, tag } = ORDERS[sort];
  if (!Array.isArray(key)) throw invalid();
  if (tag !== null) {
    if (key[0] !== tag) throw invalid();
    key = key.slice(1);
  }
  const [value, id] = key as unknown[];
  const valueOk = text ? typeof value === 'string' : Number.isSafeInteger(value);
  if (
    (key as unknown[]).length !== 2 ||
    !valueOk ||
    typeof id !== 'string' ||
    !/^[0-9a-f-]{36}$/.test(id)
  ) {
    throw invalid();
  }
  return [value as number | string, id];
}

/** `%`, `_` and the escape itself taken literally in a LIKE pattern. */
function likePrefix(text: string): string {
  return `${text.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
}

/** The devices a list query's filters match, in no order (for the page and for its total). */
function filteredDevices(db: Kysely<Database>, query: DeviceListQuery, clock: StatusClock) {
  let q = db.selectFrom('devices');
  if (query.groupId !== undefined) q = q.where('group_id', '=', query.groupId);
  if (query.state !== undefined) q = q.where('state', '=', query.state);
  if (query.status !== undefined) q = q.where(hasStatus(query.status, clock));
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
  return q;
}

/**
 * The statement of one page of the device list, by keyset on (sort column, id) in the order
 * `sort` asks for. Migrations 0004 and 0014 give the common filter shapes an index in each
 * order (none, group, state and status by name; state and status by last contact; none, group,
 * state by enrolment), so the database walks the index from the cursor and stops after
 * `limit + 1` matching rows; the other filters are checked on the rows walked. Exported so
 * tests can check the plan.
 */
export function deviceListQuery(db: Kysely<Database>, query: DeviceListQuery, clock: StatusClock) {
  const { direction } = ORDERS[query.sort];
  const key: RawBuilder<number | string> = ORDERS[query.sort].key;
  let q = filteredDevices(db, query, clock)
    .select([...SUMMARY_COLUMNS, key.as('sort_key')])
    .orderBy(key, direction)
    .orderBy('id', direction)
    .limit(query.limit + 1);
  if (query.cursor !== undefined) {
    const [value, id] = decodeCursor(query.sort, query.cursor);
    const after = direction === 'asc' ? sql`>` : sql`<`;
    q = q.where(sql<boolean>`(${key}, id) ${after} (${value}, ${id})`);
  }
  return q;
}

/**
 * One page of the device list and the number of devices its filters match. The count walks the
 * same indexes as the page, the whole range rather than one page of it: exact, and a few tens of
 * milliseconds at 100,000 devices.
 */
export async function listDevices(
  db: Kysely<Database>,
  query: DeviceListQuery,
  clock: StatusClock,
): Promise<DevicePage> {
  const [rows, counted] = await Promise.all([
    deviceListQuery(db, query, clock).execute(),
    filteredDevices(db, query, clock)
      .select(sql<number>`count(*)`.as('n'))
      .executeTakeFirstOrThrow(),
  ]);
  const page = rows.slice(0, query.limit);
  const last = page.at(-1);
  return {
    devices: await nameListed(db, page, clock),
    next: rows.length > query.limit && last ? encodeCursor(query.sort, last) : null,
    total: Number(counted.n),
  };
}

/**
 * A page of devices with the names a table shows: group, profiles and the system version each
 * profile last reported healthy. Four statements per page, whatever its length.
 */
async function nameListed(
  db: Kysely<Database>,
  page: SummaryRow[],
  clock: StatusClock,
): Promise<DeviceListItem[]> {
  if (page.length === 0) return [];
  const ids = page.map((d) => d.id);
  const groups = await db
    .selectFrom('device_groups')
    .select(['id', 'name'])
    .where('id', 'in', [...new Set(page.map((d) => d.group_id))])
    .execute();
  const held = await db
    .selectFrom('device_profiles as dp')
    .innerJoin('profiles as p', 'p.id', 'dp.profile_id')
    .select(['dp.device_id', 'p.id', 'p.name'])
    .where('dp.device_id', 'in', ids)
    .orderBy('p.name')
    .execute();
  const currents = await db
    .selectFrom('devices')
    .select(['id', 'current_versions'])
    .where('id', 'in', ids)
    .execute();
  const currentOf = new Map(currents.map((c) => [c.id, readCurrentVersions(c.current_versions)]));
  const names = await versionNames(
    db,
    [...currentOf.values()].flatMap((c) =>
      Object.values(c).flatMap((v) => (v.system === undefined ? [] : [v.system])),
    ),
  );
  const groupOf = new Map(groups.map((g) => [g.id, g]));
  return page.map((d) => {
    const current = currentOf.get(d.id) ?? {};
    return {
      ...presentSummary(d),
      ...presentStanding(d, clock),
      group: groupOf.get(d.group_id) ?? { id: d.group_id, name: d.group_id },
      profiles: held
        .filter((p) => p.device_id === d.id)
        .map((p) => {
          const system = current[p.id]?.system;
          return {
            id: p.id,
            name: p.name,
            current: (system === undefined ? undefined : names.get(system)) ?? null,
          };
        }),
    };
  });
}

async function findDevice(db: Kysely<Database>, id: string): Promise<Row<'devices'>> {
  const row = await db.selectFrom('devices').selectAll().where('id', '=', id).executeTakeFirst();
  if (!row) throw notFound('device', id);
  return row;
}

/** `image@version` names of image versions by id; ids that name no version are left out. */
async function versionNames(
  db: Kysely<Database>,
  ids: Iterable<string>,
): Promise<Map<string, VersionName>> {
  const wanted = [...new Set(ids)];
  if (wanted.length === 0) return new Map();
  const rows = await db
    .selectFrom('image_versions as v')
    .innerJoin('images as i', 'i.id', 'v.image_id')
    .select(['v.id', 'v.version', 'v.image_id', 'i.name'])
    .where('v.id', 'in', wanted)
    .execute();
  return new Map(
    rows.map((r) => [r.id, { id: r.id, imageId: r.image_id, image: r.name, version: r.version }]),
  );
}

/** What a device last reported healthy, per profile id (`devices.current_versions`). */
function readCurrentVersions(text: string): CurrentVersions {
  try {
    const parsed = CurrentVersionsSchema.safeParse(JSON.parse(text));
    return parsed.success ? parsed.data : {};
  } catch {
    return {};
  }
}

/** Every image version id an event's payload names, whatever its type. */
function versionIdsOf(data: unknown): string[] {
  if (typeof data !== 'object' || data === null) return [];
  const d = data as Record<string, unknown>;
  const ids = [d['versionId'], d['fromVersionId'], d['runningVersionId']];
  if (Array.isArray(d['volumes'])) {
    for (const v of d['volumes'] as unknown[]) {
      if (typeof v === 'object' && v !== null)
        ids.push((v as Record<string, unknown>)['versionId']);
    }
  }
  return ids.filter((x): x is string => typeof x === 'string');
}

function profileIdOf(data: unknown): string | undefined {
  const id = (data as Record<string, unknown> | null)?.['profileId'];
  return typeof id === 'string' ? id : undefined;
}

const DAY_MS = 86_400_000;

/**
 * Everything about one device an administrator looks at, with the names of what it names (its
 * group, profiles, the versions it runs, should run and its events speak of), so a reader needs
 * no other request. @throws `ERR_NOT_FOUND`.
 */
export async function getDevice(
  db: Kysely<Database>,
  id: string,
  clock: StatusClock,
): Promise<DeviceDetail> {
  const row = await findDevice(db, id);
  const group = await db
    .selectFrom('device_groups')
    .select(['id', 'name'])
    .where('id', '=', row.group_id)
    .executeTakeFirstOrThrow();
  const resolved = await resolveDeviceProfiles(db, { deviceId: id, groupId: row.group_id });
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
  const current = readCurrentVersions(row.current_versions);
  const eventData = events.map((e) => parseJson(e.payload));
  const names = await versionNames(db, [
    ...Object.values(current).flatMap((c) => [
      ...(c.system === undefined ? [] : [c.system]),
      ...Object.values(c.apps),
    ]),
    ...eventData.flatMap(versionIdsOf),
  ]);
  const eventProfileIds = [
    ...new Set(eventData.map(profileIdOf).filter((x): x is string => x !== undefined)),
  ];
  const profileNames = new Map(
    eventProfileIds.length === 0
      ? []
      : (
          await db
            .selectFrom('profiles')
            .select(['id', 'name'])
            .where('id', 'in', eventProfileIds)
            .execute()
        ).map((p) => [p.id, p.name]),
  );
  const named = (versionId: string | undefined): VersionName | null =>
    (versionId === undefined ? undefined : names.get(versionId)) ?? null;
  const hasLease = row.state === 'active' || row.state === 'locked';
  const lastContactAt = Number(row.last_contact_at);
  const asName = (v: { versionId: string; imageId: string; image: string; version: string }) => ({
    id: v.versionId,
    imageId: v.imageId,
    image: v.image,
    version: v.version,
  });
  const versionIdsNamed = new Set(eventData.flatMap(versionIdsOf));
  const inventory = parseJson(row.inventory);
  return {
    ...presentSummary(row),
    ...presentStanding(row, clock),
    inventory,
    hardware: hardwareOf(inventory),
    group,
    profiles: resolved.map(({ profile, system, apps: profileApps }) => {
      const runs = current[profile.id];
      const days = Number(profile.lease_days);
      return {
        id: profile.id,
        name: profile.name,
        current:
          runs === undefined
            ? null
            : {
                system: named(runs.system),
                apps: Object.values(runs.apps)
                  .map((v) => names.get(v))
                  .filter((v): v is VersionName => v !== undefined),
              },
        target: {
          system: system === undefined ? null : asName(system),
          apps: profileApps.flatMap((a) => (a.volume === undefined ? [] : [asName(a.volume)])),
        },
        lease: hasLease ? { days, expiresAt: lastContactAt + days * DAY_MS } : null,
      };
    }),
    apps: apps.map((a) => ({ profileId: a.profile_id, appId: a.app_id, name: a.name })),
    currentVersions: parseJson(row.current_versions),
    recentEvents: events.map((e, i) => {
      const profileId = profileIdOf(eventData[i]);
      return {
        id: e.event_id,
        type: e.type,
        data: eventData[i],
        occurredAt: Number(e.occurred_at),
        receivedAt: Number(e.received_at),
        vm: (profileId === undefined ? undefined : profileNames.get(profileId)) ?? null,
      };
    }),
    pendingCommands: commands.map(presentCommand),
    versionNames: Object.fromEntries(
      [...names.values()]
        .filter((v) => versionIdsNamed.has(v.id))
        .map((v) => [v.id, `${v.image}@${v.version}`]),
    ),
  };
}

/**
 * The hardware a device's stored inventory describes: each field kept when it has the shape the
 * enrolment schema gives it, so an inventory stored by an older Engine still shows what it can.
 */
function hardwareOf(inventory: unknown): DeviceHardware {
  if (typeof inventory !== 'object' || inventory === null) return {};
  const fields = DeviceHardwareSchema.shape;
  const hardware: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(inventory)) {
    const schema = fields[key as keyof typeof fields];
    if (schema !== undefined && schema.safeParse(value).success) hardware[key] = value;
  }
  return hardware as DeviceHardware;
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
  clock: StatusClock,
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
  return getDevice(deps.db, id, clock);
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
