import {
  DEVICE_STATUS_NAMES,
  fleetEndpoints,
  type DeviceStatusName,
  type FleetHistory,
  type FleetSummary,
  type VersionName,
} from '../../../../src/protocol/index.ts';
import type { RouteContext } from '../page-context.ts';
import { Badge, count, dateTime, Empty, ErrorText, Page, relative } from '../components.tsx';
import { Link, withQuery } from '../router.tsx';
import { useQuery } from '../api.ts';

/*
 * The fleet at a glance: devices by status (each a link to the device list filtered by it), the
 * versions each profile's VMs run, leases about to run out, the newest failures and rollbacks
 * with their reasons, and the versions across the fleet over the last 30 days. The summary is
 * polled with its ETag, so the page follows the fleet without reloading.
 */

/** How each status reads on a card, and what it means for a person who hovers or reads on. */
const STATUS_WORDS: Record<DeviceStatusName, string> = {
  online: 'Online',
  offline: 'Offline',
  updating: 'Updating',
  failed: 'Failed',
  locked: 'Locked',
  killed: 'Killed',
  retired: 'Retired',
};

const HISTORY_DAYS = 30;

export function Dashboard({ client }: RouteContext) {
  const summary = useQuery(client, fleetEndpoints.fleetSummary, {}, { pollMs: 3000 });
  // Daily points: a new one a day, so a minute between polls is plenty.
  const history = useQuery(
    client,
    fleetEndpoints.fleetHistory,
    { query: { days: HISTORY_DAYS } },
    { pollMs: 60_000 },
  );
  const data = summary.data;
  return (
    <Page title="Dashboard" busy={summary.loading || history.loading}>
      <ErrorText error={summary.error} />
      {data && (
        <>
          <StatusCards devices={data.devices} />
          {data.devices.total === 0 ? (
            <Empty>
              <p>No PC has enrolled yet.</p>
              <p>
                Create an enrolment token on the <Link to="/tokens">Enrolment</Link> page, then run{' '}
                <code>bulkhead engine enroll --center {location.origin} --token TOKEN</code> on the
                PC.
              </p>
            </Empty>
          ) : null}
          <div className="grid">
            <VersionsByProfile rows={data.versionsByProfile} />
            <LeasesSoon rows={data.leasesExpiringSoon} now={data.generatedAt} />
          </div>
          <RecentFailures rows={data.recentFailures} />
        </>
      )}
      <section className="card" aria-labelledby="history-title">
        <h2 id="history-title">Versions across the fleet, last {HISTORY_DAYS} days</h2>
        <ErrorText error={history.error} />
        {history.data && <HistoryChart history={history.data} />}
      </section>
    </Page>
  );
}

function StatusCards({ devices }: { devices: FleetSummary['devices'] }) {
  return (
    <section aria-labelledby="status-title">
      <h2 id="status-title">
        Devices by status <span className="muted">({devices.total.toLocaleString()} in all)</span>
      </h2>
      <ul className="stats" aria-label="Devices by status">
        {DEVICE_STATUS_NAMES.map((status) => (
          <li key={status}>
            <Link
              className={`stat stat-${status}`}
              to={withQuery('/devices', { status })}
              aria-label={`${STATUS_WORDS[status]}: ${count(devices[status], 'device')}`}
            >
              <strong>{devices[status].toLocaleString()}</strong>
              {STATUS_WORDS[status]}
            </Link>
          </li>
        ))}
      </ul>
    </section>
  );
}

const versionName = (v: VersionName | null) => (v ? `${v.image}@${v.version}` : 'not reported');

function VersionsByProfile({ rows }: { rows: FleetSummary['versionsByProfile'] }) {
  return (
    <section className="card" aria-labelledby="versions-title">
      <h2 id="versions-title">Versions per profile</h2>
      {rows.length === 0 ? (
        <p className="muted">
          No profile is held by a device yet. Create a profile on the{' '}
          <Link to="/profiles">Profiles</Link> page and give it to devices.
        </p>
      ) : (
        rows.map((row) => {
          const total = row.versions.reduce((n, v) => n + v.devices, 0);
          return (
            <div className="profile-versions" key={row.profile.id}>
              <h3>
                {row.profile.name} <span className="muted">({total.toLocaleString()} VMs)</span>
              </h3>
              <div className="bar bar-tall" aria-hidden="true">
                {row.versions.map((v, i) => (
                  <span
                    key={v.version?.id ?? 'none'}
                    className={v.version ? `series-${i % PALETTE_SIZE}` : 'series-none'}
                    style={{ width: `${total === 0 ? 0 : (100 * v.devices) / total}%` }}
                  />
                ))}
              </div>
              <ul className="legend">
                {row.versions.map((v, i) => (
                  <li key={v.version?.id ?? 'none'}>
                    <span
                      className={`swatch ${v.version ? `series-${i % PALETTE_SIZE}` : 'series-none'}`}
                    />
                    {versionName(v.version)}: {v.devices.toLocaleString()}
                  </li>
                ))}
              </ul>
            </div>
          );
        })
      )}
    </section>
  );
}

function LeasesSoon({ rows, now }: { rows: FleetSummary['leasesExpiringSoon']; now: number }) {
  return (
    <section className="card" aria-labelledby="leases-title">
      <h2 id="leases-title">Leases running out</h2>
      {rows.length === 0 ? (
        <p className="muted">No lease runs out within three days.</p>
      ) : (
        <table>
          <thead>
            <tr>
              <th scope="col">Device</th>
              <th scope="col">Lease</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((row) => (
              <tr key={row.device.id}>
                <td>
                  <Link to={`/devices/${row.device.id}`}>{row.device.name}</Link>
                </td>
                <td title={dateTime(row.expiresAt)}>
                  {row.expiresAt <= now ? 'ran out ' : 'runs out '}
                  {relative(row.expiresAt, now)}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function RecentFailures({ rows }: { rows: FleetSummary['recentFailures'] }) {
  return (
    <section className="card" aria-labelledby="failures-title">
      <h2 id="failures-title">Recent failures and rollbacks</h2>
      {rows.length === 0 ? (
        <p className="muted">No update has failed or rolled back.</p>
      ) : (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Device</th>
                <th scope="col">What</th>
                <th scope="col">Version</th>
                <th scope="col">Reason</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((row, i) => (
                <tr key={`${row.device.id}-${row.at}-${i}`}>
                  <td title={dateTime(row.at)}>{relative(row.at)}</td>
                  <td>
                    <Link to={`/devices/${row.device.id}`}>{row.device.name}</Link>
                  </td>
                  <td>
                    <Badge value={row.type} />
                  </td>
                  <td>{row.version ?? '—'}</td>
                  <td>{row.reason ?? <span className="muted">no reason given</span>}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

/** Colours of the chart's series (styles.css `.series-N`); the legend names each one. */
const PALETTE_SIZE = 8;

const CHART = { width: 900, height: 240, left: 48, right: 12, top: 10, bottom: 28 };

/** Devices per version over time as stacked areas, in plain SVG (no chart library). */
export function HistoryChart({ history }: { history: FleetHistory }) {
  const points = history.points;
  if (points.length === 0) {
    return (
      <p className="muted">
        Center counts the fleet's versions every hour; the chart fills in after the first count.
      </p>
    );
  }
  // Series ordered by their devices now, most first, so the largest sits at the bottom; a
  // version gone from the fleet keeps its band in the past.
  const last = points[points.length - 1]!;
  const totals = new Map<string, number>();
  for (const p of points) {
    for (const v of p.versions) if (!totals.has(v.version)) totals.set(v.version, 0);
  }
  for (const v of last.versions) totals.set(v.version, v.devices);
  const series = [...totals.keys()].sort((a, b) => (totals.get(b) ?? 0) - (totals.get(a) ?? 0));
  const stacks = points.map((p) => {
    const by = new Map(p.versions.map((v) => [v.version, v.devices]));
    let sum = 0;
    return series.map((s) => {
      const low = sum;
      sum += by.get(s) ?? 0;
      return [low, sum] as const;
    });
  });
  const max = Math.max(1, ...stacks.map((s) => s[s.length - 1]?.[1] ?? 0));
  const { width, height, left, right, top, bottom } = CHART;
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const x = (i: number) => left + (points.length === 1 ? plotW : (plotW * i) / (points.length - 1));
  const y = (n: number) => top + plotH - (plotH * n) / max;
  const areas = series.map((s, k) => {
    const upper = stacks.map((st, i) => `${x(i)},${y(st[k]![1])}`);
    const lower = stacks.map((st, i) => `${x(i)},${y(st[k]![0])}`).reverse();
    return { s, d: `M${upper.join('L')}L${lower.join('L')}Z` };
  });
  const ticks = [0, Math.round(max / 2), max];
  const first = points[0]!;
  const label =
    `Devices per system version, ${dateTime(first.at)} to ${dateTime(last.at)}; now: ` +
    (last.versions.map((v) => `${v.version} ${v.devices}`).join(', ') || 'none');
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={label}>
        {ticks.map((t) => (
          <g key={t}>
            <line className="gridline" x1={left} x2={width - right} y1={y(t)} y2={y(t)} />
            <text className="tick" x={left - 6} y={y(t) + 4} textAnchor="end">
              {t.toLocaleString()}
            </text>
          </g>
        ))}
        {areas.map((a, k) => (
          <path key={a.s} d={a.d} className={`area series-${k % PALETTE_SIZE}`}>
            <title>{a.s}</title>
          </path>
        ))}
        <text className="tick" x={left} y={height - 8}>
          {new Date(first.at).toLocaleDateString()}
        </text>
        <text className="tick" x={width - right} y={height - 8} textAnchor="end">
          {new Date(last.at).toLocaleDateString()}
        </text>
      </svg>
      <figcaption>
        <ul className="legend">
          {series.map((s, k) => (
            <li key={s}>
              <span className={`swatch series-${k % PALETTE_SIZE}`} />
              {s}: {(totals.get(s) ?? 0).toLocaleString()} now
            </li>
          ))}
        </ul>
      </figcaption>
    </figure>
  );
}
