import { useEffect, useRef, useState } from 'react';
import {
  adminEndpoints,
  DEVICE_STATUS_NAMES,
  fleetEndpoints,
  rolloutEndpoints,
  type Command,
  type DeviceDetail,
  type DeviceEventPage,
  type DeviceSortName,
  type DeviceStatusName,
  type VersionName,
  type VmVersions,
} from '../../../../src/protocol/index.ts';
import type { RouteContext } from '../page-context.ts';
import {
  Badge,
  bytes,
  ConfirmDialog,
  count,
  dateTime,
  Empty,
  ErrorText,
  Page,
  relative,
} from '../components.tsx';
import { Link, navigate, withQuery } from '../router.tsx';
import { can, useMutation, useQuery } from '../api.ts';

/*
 * The devices: a table paged on the server (a cursor, never the whole fleet: it stays fast at
 * 100,000 devices), its search, filters, order and page in the address so a view can be shared;
 * and one device's page with its VMs, versions, lease, hardware, event timeline and pending
 * commands, where an operator locks, unlocks or kills it behind a confirmation that names it.
 */

const PAGE_SIZES = [50, 100] as const;
const SORTS: { value: DeviceSortName; label: string }[] = [
  { value: 'name', label: 'Name' },
  { value: 'lastContact', label: 'Last contact (newest first)' },
  { value: 'enrolled', label: 'Enrolment (oldest first)' },
];

const oneOf = <T extends string>(values: readonly T[], value: string | null): T | undefined =>
  value !== null && (values as readonly string[]).includes(value) ? (value as T) : undefined;

/**
 * The cursor each page was reached from, by the cursor of that page: Center's cursors only go
 * forward, so "Previous page" goes back along the way this tab came.
 */
const previousCursor = new Map<string, string | null>();

export function Devices({ client, route }: RouteContext) {
  const q = route.query;
  const filters = {
    q: q.get('q') ?? '',
    groupId: q.get('groupId') ?? '',
    profileId: q.get('profileId') ?? '',
    status: oneOf<DeviceStatusName>(DEVICE_STATUS_NAMES, q.get('status')) ?? '',
    sort: oneOf<DeviceSortName>(
      SORTS.map((s) => s.value),
      q.get('sort'),
    ),
    limit: oneOf(PAGE_SIZES.map(String), q.get('limit')),
  };
  const status = oneOf<DeviceStatusName>(DEVICE_STATUS_NAMES, q.get('status'));
  const cursor = q.get('cursor');
  const pageNumber = Math.max(1, Number(q.get('page')) || 1);
  const limit = Number(filters.limit ?? 50);
  const request = {
    query: {
      limit,
      sort: filters.sort ?? 'name',
      ...(filters.q.trim() ? { q: filters.q.trim() } : {}),
      ...(filters.groupId ? { groupId: filters.groupId } : {}),
      ...(filters.profileId ? { profileId: filters.profileId } : {}),
      ...(status === undefined ? {} : { status }),
      ...(cursor ? { cursor } : {}),
    },
  };
  const devices = useQuery(client, fleetEndpoints.listDevices, request, { pollMs: 3000 });
  const groups = useQuery(client, fleetEndpoints.listGroups, {}, { pollMs: 30_000 });
  const profiles = useQuery(client, fleetEndpoints.listProfiles, {}, { pollMs: 30_000 });

  /** The address of this view with `changes` applied; a new filter starts at the first page. */
  const view = (changes: Record<string, string | null>, keepPage = false) =>
    withQuery('/devices', {
      q: filters.q || null,
      groupId: filters.groupId || null,
      profileId: filters.profileId || null,
      status: filters.status || null,
      sort: filters.sort ?? null,
      limit: filters.limit ?? null,
      ...(keepPage ? { cursor, page: String(pageNumber) } : {}),
      ...changes,
    });

  // The search box follows typing at once; the address (and so the query) after a pause.
  // A change of the address from elsewhere (Back, a link) replaces the text; the page's own
  // change, made while the person may type on, does not.
  const [search, setSearch] = useState(filters.q);
  const pushed = useRef(filters.q);
  useEffect(() => {
    if (filters.q !== pushed.current) setSearch(filters.q);
    pushed.current = filters.q;
  }, [filters.q]);
  const searchView = view({ q: search || null });
  useEffect(() => {
    if (search === pushed.current) return;
    const timer = setTimeout(() => {
      pushed.current = search;
      navigate(searchView, { replace: true });
    }, 300);
    return () => clearTimeout(timer);
  }, [search, searchView]);

  const page = devices.data;
  const filtered = Boolean(filters.q || filters.groupId || filters.profileId || filters.status);
  const first = (pageNumber - 1) * limit + 1;
  const back = cursor === null ? undefined : previousCursor.get(cursor);
  const next = page?.next ?? null;
  const goNext = () => {
    if (next === null) return;
    previousCursor.set(next, cursor);
    navigate(view({ cursor: next, page: String(pageNumber + 1) }));
  };

  return (
    <Page title="Devices" busy={devices.loading}>
      <form className="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <div>
          <label htmlFor="device-search">Search by name</label>
          <input
            id="device-search"
            type="search"
            placeholder="Name starts with…"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
          />
        </div>
        <div>
          <label htmlFor="device-group">Group</label>
          <select
            id="device-group"
            value={filters.groupId}
            onChange={(e) => navigate(view({ groupId: e.target.value || null }))}
          >
            <option value="">All groups</option>
            {groups.data?.groups.map((g) => (
              <option key={g.id} value={g.id}>
                {g.name}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="device-profile">Profile</label>
          <select
            id="device-profile"
            value={filters.profileId}
            onChange={(e) => navigate(view({ profileId: e.target.value || null }))}
          >
            <option value="">All profiles</option>
            {profiles.data?.profiles.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="device-status">Status</label>
          <select
            id="device-status"
            value={filters.status}
            onChange={(e) => navigate(view({ status: e.target.value || null }))}
          >
            <option value="">Any status</option>
            {DEVICE_STATUS_NAMES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="device-sort">Sort by</label>
          <select
            id="device-sort"
            value={filters.sort ?? 'name'}
            onChange={(e) =>
              navigate(view({ sort: e.target.value === 'name' ? null : e.target.value }))
            }
          >
            {SORTS.map((s) => (
              <option key={s.value} value={s.value}>
                {s.label}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="device-limit">Per page</label>
          <select
            id="device-limit"
            value={String(limit)}
            onChange={(e) =>
              navigate(view({ limit: e.target.value === '50' ? null : e.target.value }))
            }
          >
            {PAGE_SIZES.map((n) => (
              <option key={n} value={n}>
                {n}
              </option>
            ))}
          </select>
        </div>
        {filtered && (
          <button type="button" onClick={() => navigate('/devices')}>
            Clear filters
          </button>
        )}
      </form>
      <ErrorText error={devices.error ?? groups.error ?? profiles.error} />
      {page && (
        <>
          <p className="muted" role="status" id="device-count">
            {page.total === 0
              ? 'No devices'
              : `Showing ${first.toLocaleString()}–${(first + page.devices.length - 1).toLocaleString()} of ${count(page.total, 'device')}`}
            {filtered ? ' matching the filters' : ''}
          </p>
          {page.devices.length === 0 ? (
            filtered || cursor ? (
              <Empty>
                <p>No device matches these filters.</p>
                <p>
                  <Link to="/devices">Show all devices</Link>
                </p>
              </Empty>
            ) : (
              <Empty>
                <p>No PC has enrolled yet.</p>
                <p>
                  Create an enrolment token on the <Link to="/tokens">Enrolment</Link> page, then
                  run <code>bulkhead engine enroll --center {location.origin} --token TOKEN</code>{' '}
                  on the PC.
                </p>
              </Empty>
            )
          ) : (
            <div className="table-wrap">
              <table aria-describedby="device-count">
                <thead>
                  <tr>
                    <th scope="col">Name</th>
                    <th scope="col">Status</th>
                    <th scope="col">Group</th>
                    <th scope="col">VMs (running version)</th>
                    <th scope="col">Last contact</th>
                    <th scope="col">Lease runs out</th>
                  </tr>
                </thead>
                <tbody>
                  {page.devices.map((d) => (
                    <tr key={d.id}>
                      <td>
                        <Link to={`/devices/${d.id}`}>{d.name}</Link>
                      </td>
                      <td>
                        <Badge value={d.status} />
                      </td>
                      <td>{d.group.name}</td>
                      <td>
                        {d.profiles.length === 0 ? (
                          <span className="muted">none</span>
                        ) : (
                          d.profiles.map((p) => (
                            <div key={p.id}>
                              {p.name}: {versionName(p.current)}
                            </div>
                          ))
                        )}
                      </td>
                      <td title={dateTime(d.lastContactAt)}>{relative(d.lastContactAt)}</td>
                      <td title={dateTime(d.leaseExpiresAt)}>{relative(d.leaseExpiresAt)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
          <nav className="pager" aria-label="Pages">
            <button
              type="button"
              disabled={cursor === null}
              onClick={() => navigate(view({ cursor: null, page: null }))}
            >
              First page
            </button>
            <button
              type="button"
              disabled={back === undefined}
              onClick={() =>
                navigate(view({ cursor: back ?? null, page: back ? String(pageNumber - 1) : null }))
              }
            >
              Previous page
            </button>
            <span>Page {pageNumber.toLocaleString()}</span>
            <button type="button" disabled={next === null} onClick={goNext}>
              Next page
            </button>
          </nav>
        </>
      )}
    </Page>
  );
}

function versionName(v: VersionName | null): string {
  return v ? `${v.image}@${v.version}` : 'no healthy report yet';
}

function vmVersions(v: VmVersions | null): string {
  if (v === null) return 'no healthy report yet';
  const system = v.system ? `${v.system.image}@${v.system.version}` : 'none';
  return [system, ...v.apps.map((a) => `+${a.image}@${a.version}`)].join(' ');
}

type CommandKind = 'lock' | 'unlock' | 'kill';

/** What each command does, said in the confirmation that names the device. */
const COMMANDS: Record<
  CommandKind,
  { button: string; confirm: string; consequence: (name: string) => string }
> = {
  lock: {
    button: 'Lock',
    confirm: 'Lock device',
    consequence: (name) =>
      `Every VM on ${name} stops, and none starts again until you unlock it. An online PC ` +
      'gets the lock within a second; an offline one at its next contact, and the lock holds ' +
      'across its restarts.',
  },
  unlock: {
    button: 'Unlock',
    confirm: 'Unlock device',
    consequence: (name) =>
      `The VMs on ${name} may start again; the PC learns of it at its next contact.`,
  },
  kill: {
    button: 'Kill',
    confirm: 'Kill device',
    consequence: (name) =>
      `This crypto-erases the work VM's data on ${name}: its keys are destroyed, and it cannot ` +
      'be undone. Every VM on it stops for good, and the PC stops contacting Center: it is cut ' +
      'off from now on, online or not.',
  },
};

const EVENTS_PER_PAGE = 25;

export function DevicePage({ client, session, id }: RouteContext & { id: string }) {
  const device = useQuery(client, fleetEndpoints.getDevice, { params: { id } }, { pollMs: 3000 });
  // Commands name their sender by id; the administrators' names for them (any role may list).
  const users = useQuery(client, adminEndpoints.listUsers, {}, { pollMs: 60_000 });
  const usernames = new Map(users.data?.users.map((u) => [u.id, u.username]));
  const d = device.data;
  const [asking, setAsking] = useState<CommandKind | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const command = useMutation((kind: CommandKind) =>
    client.call(fleetEndpoints.issueCommand, { params: { id }, body: { kind } }),
  );
  const mayAct = can(session.role, 'operator');
  const issue = async (kind: CommandKind) => {
    const issued = await command.mutate(kind);
    if (issued === undefined) return;
    setAsking(null);
    setDone(
      kind === 'kill'
        ? `${d?.name ?? 'The device'} is killed: it is cut off, and its work VM's keys are erased when it hears of it.`
        : `${COMMANDS[kind].button} sent to ${d?.name ?? 'the device'}; it shows under pending commands until the PC reports it done.`,
    );
    device.reload();
  };
  const actions: CommandKind[] =
    d === undefined || !mayAct
      ? []
      : d.state === 'active'
        ? ['lock', 'kill']
        : d.state === 'locked'
          ? ['unlock', 'kill']
          : [];

  return (
    <Page
      title={d?.name ?? 'Device'}
      busy={device.loading}
      actions={
        actions.length > 0 && (
          <>
            {actions.map((kind) => (
              <button
                key={kind}
                type="button"
                className={kind === 'kill' ? 'danger' : undefined}
                onClick={() => {
                  command.clearError();
                  setDone(null);
                  setAsking(kind);
                }}
              >
                {COMMANDS[kind].button}
              </button>
            ))}
          </>
        )
      }
    >
      <p>
        <Link to="/devices">All devices</Link>
      </p>
      <ErrorText error={device.error} />
      {done && (
        <p className="notice" role="status">
          {done}
        </p>
      )}
      {d && (
        <>
          <Standing device={d} />
          <Vms device={d} />
          <div className="grid">
            <Hardware device={d} />
            <PendingCommands commands={d.pendingCommands} usernames={usernames} />
          </div>
          <Timeline client={client} id={id} />
        </>
      )}
      {d && asking && (
        <ConfirmDialog
          title={`${COMMANDS[asking].button} ${d.name}?`}
          confirmLabel={COMMANDS[asking].confirm}
          danger={asking === 'kill'}
          {...(asking === 'kill' ? { typeToConfirm: d.name } : {})}
          busy={command.busy}
          error={command.error}
          onConfirm={() => void issue(asking)}
          onCancel={() => setAsking(null)}
        >
          <p>{COMMANDS[asking].consequence(d.name)}</p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function Standing({ device: d }: { device: DeviceDetail }) {
  return (
    <section className="card" aria-labelledby="standing-title">
      <h2 id="standing-title">Status</h2>
      <dl className="facts">
        <dt>Status</dt>
        <dd>
          <Badge value={d.status} /> <StatusSentence device={d} />
        </dd>
        <dt>Group</dt>
        <dd>
          <Link to={withQuery('/devices', { groupId: d.group.id })}>{d.group.name}</Link>
        </dd>
        <dt>Last contact</dt>
        <dd>
          {relative(d.lastContactAt)} <span className="muted">({dateTime(d.lastContactAt)})</span>
        </dd>
        <dt>Lease runs out</dt>
        <dd>
          {d.leaseExpiresAt === null ? (
            <span className="muted">no lease</span>
          ) : (
            <>
              {relative(d.leaseExpiresAt)}{' '}
              <span className="muted">
                ({dateTime(d.leaseExpiresAt)}; past it without contact, the work VM does not start)
              </span>
            </>
          )}
        </dd>
        <dt>Enrolled</dt>
        <dd>{dateTime(d.enrolledAt)}</dd>
      </dl>
    </section>
  );
}

function StatusSentence({ device: d }: { device: DeviceDetail }) {
  const words: Record<DeviceStatusName, string> = {
    online: 'In contact with Center.',
    offline: 'Not heard from lately; it keeps working offline until its lease runs out.',
    updating: 'An update is downloading, staged or switching.',
    failed: 'Its last update failed or rolled back; see the timeline for the reason.',
    locked: 'Locked by an administrator: no VM runs until it is unlocked.',
    killed: 'Killed: cut off for good, its work VM crypto-erased.',
    retired: 'Retired: Center refuses it from now on.',
  };
  return <span>{words[d.status]}</span>;
}

function Vms({ device: d }: { device: DeviceDetail }) {
  return (
    <section className="card" aria-labelledby="vms-title">
      <h2 id="vms-title">VMs</h2>
      {d.profiles.length === 0 ? (
        <p className="muted">
          This device holds no profile, so it runs no VM. Give it one with{' '}
          <code>bulkhead devices assign {d.name} --profile NAME</code>.
        </p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">VM (profile)</th>
                <th scope="col">Runs</th>
                <th scope="col">Should run</th>
                <th scope="col">Optional apps chosen</th>
                <th scope="col">Lease</th>
              </tr>
            </thead>
            <tbody>
              {d.profiles.map((p) => {
                const apps = d.apps.filter((a) => a.profileId === p.id).map((a) => a.name);
                const behind = vmVersions(p.current) !== vmVersions(p.target);
                return (
                  <tr key={p.id}>
                    <td>{p.name}</td>
                    <td>{vmVersions(p.current)}</td>
                    <td>
                      {vmVersions(p.target)}
                      {behind && <span className="muted"> (not there yet)</span>}
                    </td>
                    <td>
                      {apps.length === 0 ? <span className="muted">none</span> : apps.join(', ')}
                    </td>
                    <td>
                      {p.lease === null
                        ? '—'
                        : `${count(p.lease.days, 'day')} offline; runs out ${relative(p.lease.expiresAt)}`}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

function Hardware({ device: d }: { device: DeviceDetail }) {
  const h = d.hardware;
  const rows: [string, string][] = [];
  if (h.hostname) rows.push(['Host name', h.hostname]);
  const make = [h.vendor, h.model].filter(Boolean).join(' ');
  if (make) rows.push(['Model', make]);
  if (h.serial) rows.push(['Serial number', h.serial]);
  if (h.cpu) rows.push(['Processor', `${h.cpu.model} (${count(h.cpu.cores, 'core')})`]);
  if (h.memoryBytes !== undefined) rows.push(['Memory', bytes(h.memoryBytes)]);
  for (const disk of h.disks ?? []) {
    rows.push([
      `Disk ${disk.name}`,
      `${bytes(disk.sizeBytes)}${disk.model ? ` (${disk.model})` : ''}`,
    ]);
  }
  if (h.firmware) rows.push(['Firmware', `${h.firmware.vendor} ${h.firmware.version}`]);
  if (h.hypervisor) rows.push(['Hypervisor', h.hypervisor]);
  if (h.engineVersion) rows.push(['Engine', h.engineVersion]);
  return (
    <section className="card" aria-labelledby="hardware-title">
      <h2 id="hardware-title">Hardware</h2>
      {rows.length === 0 ? (
        <p className="muted">The PC reported no hardware details when it enrolled.</p>
      ) : (
        <dl className="facts">
          {rows.map(([k, v]) => (
            <div className="fact" key={k}>
              <dt>{k}</dt>
              <dd>{v}</dd>
            </div>
          ))}
        </dl>
      )}
    </section>
  );
}

function PendingCommands(props: { commands: Command[]; usernames: Map<string, string> }) {
  const { commands, usernames } = props;
  return (
    <section className="card" aria-labelledby="commands-title">
      <h2 id="commands-title">Pending commands</h2>
      {commands.length === 0 ? (
        <p className="muted">None: every command sent to this PC has been answered.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">Command</th>
              <th scope="col">State</th>
              <th scope="col">By</th>
              <th scope="col">Sent</th>
            </tr>
          </thead>
          <tbody>
            {commands.map((c) => (
              <tr key={c.id}>
                <td>{c.kind}</td>
                <td>
                  <Badge value={c.state} />
                </td>
                <td>
                  {c.createdBy === null ? '—' : (usernames.get(c.createdBy) ?? 'an administrator')}
                </td>
                <td title={dateTime(c.createdAt)}>{relative(c.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

type TimelineEvent = DeviceEventPage['events'][number];

/**
 * The device's events, newest first: the first page stays live; older pages are fetched on
 * demand with the cursor and kept below it.
 */
function Timeline({ client, id }: { client: RouteContext['client']; id: string }) {
  const newest = useQuery(
    client,
    rolloutEndpoints.listDeviceEvents,
    { params: { id }, query: { limit: EVENTS_PER_PAGE } },
    { pollMs: 5000 },
  );
  const [older, setOlder] = useState<{ events: TimelineEvent[]; next: string | null } | null>(null);
  const more = useMutation(async (cursor: string) =>
    client.call(rolloutEndpoints.listDeviceEvents, {
      params: { id },
      query: { limit: EVENTS_PER_PAGE, cursor },
    }),
  );
  const next = older ? older.next : (newest.data?.next ?? null);
  const loadOlder = async () => {
    if (next === null) return;
    const page = await more.mutate(next);
    if (page) setOlder({ events: [...(older?.events ?? []), ...page.events], next: page.next });
  };
  const seen = new Set<string>();
  const events = [...(newest.data?.events ?? []), ...(older?.events ?? [])].filter((e) => {
    const key = `${e.id}|${e.type}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  return (
    <section className="card" aria-labelledby="timeline-title">
      <h2 id="timeline-title">Timeline</h2>
      <ErrorText error={newest.error} />
      {newest.data && events.length === 0 && (
        <p className="muted">This PC has reported nothing yet.</p>
      )}
      {events.length > 0 && (
        <ol className="timeline" aria-label="Events, newest first">
          {events.map((e) => (
            <li key={`${e.id}|${e.type}`}>
              <time dateTime={new Date(e.occurredAt).toISOString()} title={dateTime(e.occurredAt)}>
                {dateTime(e.occurredAt)}
              </time>{' '}
              <Badge value={e.type} /> {e.vm && <span className="muted">{e.vm}: </span>}
              {e.summary}
              {e.reason && !e.summary.includes(e.reason) && (
                <div className="reason">Reason: {e.reason}</div>
              )}
            </li>
          ))}
        </ol>
      )}
      <ErrorText error={more.error} />
      {next !== null && (
        <button type="button" disabled={more.busy} onClick={() => void loadOlder()}>
          {more.busy ? 'Loading…' : 'Older events'}
        </button>
      )}
    </section>
  );
}
