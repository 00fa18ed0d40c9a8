import { useState, type FormEvent } from 'react';
import {
  DEVICE_STATUS_NAMES,
  fleetEndpoints,
  rolloutEndpoints,
  type COMMAND_KINDS,
  type DeviceDetail,
} from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
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
import type { RouteContext } from '../page-context.ts';
import { Link, navigate, withQuery } from '../router.tsx';

type CommandKind = (typeof COMMAND_KINDS)[number];

const PAGE_SIZES = ['50', '100', '200'];
const SORTS = { name: 'Name', lastContact: 'Last contact' } as const;

/**
 * The fleet's devices, a page at a time from Center (never the whole list): search, filters,
 * order and the page's cursor are all in the address, so a view can be shared as a link.
 */
export function Devices({ client, route }: RouteContext) {
  const q = route.query;
  const view = {
    q: q.get('q') ?? '',
    status: q.get('status') ?? '',
    groupId: q.get('groupId') ?? '',
    profileId: q.get('profileId') ?? '',
    sort: q.get('sort') === 'lastContact' ? 'lastContact' : 'name',
    limit: PAGE_SIZES.includes(q.get('limit') ?? '') ? (q.get('limit') as string) : '50',
    cursor: q.get('cursor') ?? '',
  };
  const go = (change: Partial<typeof view>, keepCursor = false) =>
    navigate(withQuery('/devices', { ...view, cursor: keepCursor ? view.cursor : '', ...change }));
  const groups = useQuery(client, fleetEndpoints.listGroups, {}, { pollMs: 0 });
  const profiles = useQuery(client, fleetEndpoints.listProfiles, {}, { pollMs: 0 });
  const list = useQuery(client, fleetEndpoints.listDevices, {
    query: {
      limit: Number(view.limit),
      sort: view.sort as 'name' | 'lastContact',
      ...(view.q ? { q: view.q } : {}),
      ...(view.status ? { status: view.status as (typeof DEVICE_STATUS_NAMES)[number] } : {}),
      ...(view.groupId ? { groupId: view.groupId } : {}),
      ...(view.profileId ? { profileId: view.profileId } : {}),
      ...(view.cursor ? { cursor: view.cursor } : {}),
    },
  });
  const [search, setSearch] = useState(view.q);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    go({ q: search.trim() });
  };
  const page = list.data;
  const filtered = view.q || view.status || view.groupId || view.profileId;
  return (
    <Page title="Devices" busy={list.loading}>
      <form className="filters" role="search" onSubmit={submit}>
        <div>
          <label htmlFor="device-search">Search by name</label>
          <input
            id="device-search"
            type="search"
            placeholder="pc-0042"
            value={search}
            onChange={(e) => setSearch(e.target.value)}
          />
        </div>
        <button type="submit">Search</button>
        <div>
          <label htmlFor="filter-status">Status</label>
          <select
            id="filter-status"
            value={view.status}
            onChange={(e) => go({ status: e.target.value })}
          >
            <option value="">Any</option>
            {DEVICE_STATUS_NAMES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="filter-group">Group</label>
          <select
            id="filter-group"
            value={view.groupId}
            onChange={(e) => go({ groupId: e.target.value })}
          >
            <option value="">Any</option>
            {groups.data?.groups.map((g) => (
              <option key={g.id} value={g.id}>
                {g.name}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="filter-profile">Profile</label>
          <select
            id="filter-profile"
            value={view.profileId}
            onChange={(e) => go({ profileId: e.target.value })}
          >
            <option value="">Any</option>
            {profiles.data?.profiles.map((p) => (
              <option key={p.id} value={p.id}>
                {p.name}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="sort">Order by</label>
          <select id="sort" value={view.sort} onChange={(e) => go({ sort: e.target.value })}>
            {Object.entries(SORTS).map(([k, label]) => (
              <option key={k} value={k}>
                {label}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="page-size">Per page</label>
          <select id="page-size" value={view.limit} onChange={(e) => go({ limit: e.target.value })}>
            {PAGE_SIZES.map((n) => (
              <option key={n}>{n}</option>
            ))}
          </select>
        </div>
      </form>
      <ErrorText error={list.error} />
      {page && (
        <p className="muted" aria-live="polite">
          {filtered ? `${count(page.total, 'device')} match` : count(page.total, 'device')}
          {view.cursor ? ' (a later page)' : ''}
        </p>
      )}
      {page && page.devices.length === 0 && (
        <Empty>
          {filtered ? (
            <>
              No device matches. <Link to="/devices">Show all devices</Link>.
            </>
          ) : (
            <>
              No devices yet. Create an enrolment token under <Link to="/tokens">Enrolment</Link>{' '}
              and enrol a PC with it.
            </>
          )}
        </Empty>
      )}
      {page && page.devices.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Status</th>
                <th scope="col">Group</th>
                <th scope="col">VMs and versions</th>
                <th scope="col">Last contact</th>
                <th scope="col">Lease ends</th>
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
                    {d.profiles.length === 0
                      ? '—'
                      : d.profiles
                          .map(
                            (p) =>
                              `${p.name}: ${p.current ? `${p.current.image}@${p.current.version}` : 'not yet healthy'}`,
                          )
                          .join(', ')}
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
        {view.cursor && (
          <button type="button" onClick={() => go({ cursor: '' })}>
            First page
          </button>
        )}
        {page?.next && (
          <button type="button" onClick={() => go({ cursor: page.next ?? '' })}>
            Next page
          </button>
        )}
      </nav>
    </Page>
  );
}

/** What each command does, said before it is sent. */
const COMMANDS: Record<
  Exclude<CommandKind, 'restart-vm'>,
  { label: string; title: string; says: (d: DeviceDetail) => string; danger: boolean }
> = {
  lock: {
    label: 'Lock',
    title: 'Lock this device?',
    says: (d) =>
      `The work VM on ${d.name} shuts down and does not start again until you unlock it. A PC that is online gets this within a second; an offline one when it next reaches Center.`,
    danger: false,
  },
  unlock: {
    label: 'Unlock',
    title: 'Unlock this device?',
    says: (d) => `The work VM on ${d.name} may start again.`,
    danger: false,
  },
  kill: {
    label: 'Kill',
    title: 'Kill this device?',
    says: (d) =>
      `This crypto-erases the work VM on ${d.name}: its keys are destroyed, its encrypted data can never be read again, and the PC stops contacting Center for good. It cannot be undone. An offline PC is killed when it next reaches Center, or when its lease runs out at the latest.`,
    danger: true,
  },
};

/** One device: its VMs and versions, lease, hardware, timeline, and lock / unlock / kill. */
export function DevicePage({ client, session, id }: RouteContext & { id: string }) {
  const detail = useQuery(client, fleetEndpoints.getDevice, { params: { id } });
  const [cursor, setCursor] = useState<string | null>(null);
  const events = useQuery(client, rolloutEndpoints.listDeviceEvents, {
    params: { id },
    query: { limit: 25, ...(cursor ? { cursor } : {}) },
  });
  const [asking, setAsking] = useState<keyof typeof COMMANDS | null>(null);
  const command = useMutation(async (kind: CommandKind) =>
    client.call(fleetEndpoints.issueCommand, { params: { id }, body: { kind } }),
  );
  const d = detail.data;
  const mayCommand = can(session.role, 'operator');
  const alive = d && d.state !== 'killed' && d.state !== 'retired';
  const actions =
    d && mayCommand && alive ? (
      <>
        {d.state === 'locked' ? (
          <button type="button" onClick={() => setAsking('unlock')}>
            Unlock
          </button>
        ) : (
          <button type="button" onClick={() => setAsking('lock')}>
            Lock
          </button>
        )}
        <button type="button" className="danger" onClick={() => setAsking('kill')}>
          Kill
        </button>
      </>
    ) : undefined;
  return (
    <Page title={d ? d.name : 'Device'} busy={detail.loading} actions={actions}>
      <ErrorText error={detail.error} />
      {d && (
        <>
          <section className="card" aria-label="Summary">
            <dl className="facts">
              <dt>Status</dt>
              <dd>
                <Badge value={d.status} />
              </dd>
              <dt>Group</dt>
              <dd>{d.group.name}</dd>
              <dt>Last contact</dt>
              <dd title={dateTime(d.lastContactAt)}>{relative(d.lastContactAt)}</dd>
              <dt>Lease ends</dt>
              <dd>
                {d.leaseExpiresAt === null
                  ? '—'
                  : `${dateTime(d.leaseExpiresAt)} (${relative(d.leaseExpiresAt)}); without contact until then, its work VM shuts down`}
              </dd>
              <dt>Enrolled</dt>
              <dd>{dateTime(d.enrolledAt)}</dd>
            </dl>
          </section>
          {d.pendingCommands.length > 0 && (
            <section className="card" aria-labelledby="pending-title">
              <h2 id="pending-title">Waiting for the device</h2>
              <ul>
                {d.pendingCommands.map((c) => (
                  <li key={c.id}>
                    {c.kind} — sent {relative(c.createdAt)} by {c.createdBy ?? 'Center'} ({c.state})
                  </li>
                ))}
              </ul>
            </section>
          )}
          <div className="grid">
            <section className="card" aria-labelledby="vms-title">
              <h2 id="vms-title">VMs</h2>
              {d.profiles.length === 0 ? (
                <p className="muted">
                  No profile yet: assign one with <code>bulkhead devices assign {d.name}</code>.
                </p>
              ) : (
                <table>
                  <thead>
                    <tr>
                      <th scope="col">VM</th>
                      <th scope="col">Runs</th>
                      <th scope="col">Should run</th>
                      <th scope="col">Lease</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.profiles.map((p) => (
                      <tr key={p.id}>
                        <td>{p.name}</td>
                        <td>
                          {p.current?.system
                            ? `${p.current.system.image}@${p.current.system.version}`
                            : 'not yet healthy'}
                          {p.current?.apps.map((a) => (
                            <div key={a.id} className="muted">
                              + {a.image}@{a.version}
                            </div>
                          ))}
                        </td>
                        <td>
                          {p.target.system
                            ? `${p.target.system.image}@${p.target.system.version}`
                            : '—'}
                          {p.target.apps.map((a) => (
                            <div key={a.id} className="muted">
                              + {a.image}@{a.version}
                            </div>
                          ))}
                        </td>
                        <td>{p.lease ? `${p.lease.days} days offline` : '—'}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
            <section className="card" aria-labelledby="hardware-title">
              <h2 id="hardware-title">Hardware</h2>
              <Hardware hardware={d.hardware} />
            </section>
          </div>
          <section className="card" aria-labelledby="timeline-title">
            <h2 id="timeline-title">Timeline</h2>
            <ErrorText error={events.error} />
            {events.data && events.data.events.length === 0 && (
              <p className="muted">Nothing reported yet.</p>
            )}
            {events.data && events.data.events.length > 0 && (
              <ol className="timeline">
                {events.data.events.map((e) => (
                  <li key={e.id}>
                    <time dateTime={new Date(e.occurredAt).toISOString()}>
                      {dateTime(e.occurredAt)}
                    </time>{' '}
                    <Badge value={e.type} /> {e.summary}
                  </li>
                ))}
              </ol>
            )}
            <div className="pager">
              {cursor && (
                <button type="button" onClick={() => setCursor(null)}>
                  Newest events
                </button>
              )}
              {events.data?.next && (
                <button type="button" onClick={() => setCursor(events.data?.next ?? null)}>
                  Older events
                </button>
              )}
            </div>
          </section>
          {asking && (
            <ConfirmDialog
              title={COMMANDS[asking].title}
              confirmLabel={`${COMMANDS[asking].label} ${d.name}`}
              danger={COMMANDS[asking].danger}
              typeToConfirm={asking === 'kill' ? d.name : undefined}
              busy={command.busy}
              error={command.error}
              onCancel={() => {
                command.clearError();
                setAsking(null);
              }}
              onConfirm={() =>
                void command.mutate(asking).then((done) => {
                  if (done) {
                    setAsking(null);
                    detail.reload();
                  }
                })
              }
            >
              <p>{COMMANDS[asking].says(d)}</p>
            </ConfirmDialog>
          )}
        </>
      )}
    </Page>
  );
}

function Hardware({ hardware: h }: { hardware: DeviceDetail['hardware'] }) {
  const rows: [string, string][] = [];
  if (h.vendor || h.model) rows.push(['Model', [h.vendor, h.model].filter(Boolean).join(' ')]);
  if (h.serial) rows.push(['Serial', h.serial]);
  if (h.cpu) rows.push(['CPU', `${h.cpu.model}, ${h.cpu.cores} cores`]);
  if (h.memoryBytes) rows.push(['Memory', bytes(h.memoryBytes)]);
  for (const disk of h.disks ?? []) {
    rows.push([
      `Disk ${disk.name}`,
      `${bytes(disk.sizeBytes)}${disk.model ? `, ${disk.model}` : ''}`,
    ]);
  }
  if (h.firmware) rows.push(['Firmware', `${h.firmware.vendor} ${h.firmware.version}`]);
  if (h.hypervisor) rows.push(['Hypervisor', h.hypervisor]);
  if (h.engineVersion) rows.push(['Engine', h.engineVersion]);
  if (h.hostname) rows.push(['Host name', h.hostname]);
  if (rows.length === 0) return <p className="muted">The device reported no hardware.</p>;
  return (
    <dl className="facts">
      {rows.map(([k, v]) => (
        <div key={k} className="fact">
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}
