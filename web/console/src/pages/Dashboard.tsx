import { fleetEndpoints, type DeviceStatusName } from '../../../../src/protocol/index.ts';
import { useQuery } from '../api.ts';
import { Badge, count, dateTime, Empty, ErrorText, Page, relative } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link, withQuery } from '../router.tsx';
import { VersionsChart } from './VersionsChart.tsx';

const STATUSES: { key: DeviceStatusName; label: string; hint: string }[] = [
  { key: 'online', label: 'Online', hint: 'in contact with Center' },
  { key: 'offline', label: 'Offline', hint: 'not heard from lately' },
  { key: 'updating', label: 'Updating', hint: 'an update under way' },
  { key: 'failed', label: 'Failed', hint: 'last update failed or rolled back' },
  { key: 'locked', label: 'Locked', hint: 'work VM stopped by an administrator' },
  { key: 'killed', label: 'Killed', hint: 'work data crypto-erased' },
];

/** The fleet at a glance: devices by status, versions per profile, leases, failures, history. */
export function Dashboard({ client }: RouteContext) {
  const summary = useQuery(client, fleetEndpoints.fleetSummary, {}, { pollMs: 5000 });
  const history = useQuery(
    client,
    fleetEndpoints.fleetHistory,
    { query: { days: 30 } },
    {
      pollMs: 60_000,
    },
  );
  const s = summary.data;
  return (
    <Page title="Dashboard" busy={summary.loading}>
      <ErrorText error={summary.error} />
      {s && s.devices.total === 0 && (
        <Empty>
          No devices yet. Create an enrolment token under <Link to="/tokens">Enrolment</Link> and
          run <code>bulkhead engine enroll</code> with it on a PC; the PC appears here.
        </Empty>
      )}
      {s && s.devices.total > 0 && (
        <>
          <section aria-label="Devices by status" className="stats">
            <Link className="stat" to="/devices">
              <strong>{s.devices.total.toLocaleString()}</strong> devices
            </Link>
            {STATUSES.map((st) => (
              <Link
                key={st.key}
                className="stat"
                to={withQuery('/devices', { status: st.key })}
                title={st.hint}
              >
                <strong>{s.devices[st.key].toLocaleString()}</strong> {st.label.toLowerCase()}
              </Link>
            ))}
          </section>
          <div className="grid">
            <section className="card" aria-labelledby="versions-title">
              <h2 id="versions-title">Versions per profile</h2>
              {s.versionsByProfile.length === 0 && (
                <p className="muted">No device holds a profile yet.</p>
              )}
              {s.versionsByProfile.map((p) => {
                const total = p.versions.reduce((a, v) => a + v.devices, 0) || 1;
                return (
                  <div key={p.profile.id} className="profile-versions">
                    <h3>{p.profile.name}</h3>
                    <ul className="bars">
                      {p.versions.map((v) => {
                        const label = v.version
                          ? `${v.version.image}@${v.version.version}`
                          : 'not yet healthy';
                        return (
                          <li key={label}>
                            <span className="bar-label">{label}</span>
                            <span className="bar" aria-hidden="true">
                              <span
                                className="fill"
                                style={{ width: `${(100 * v.devices) / total}%` }}
                              />
                            </span>
                            <span>{count(v.devices, 'device')}</span>
                          </li>
                        );
                      })}
                    </ul>
                  </div>
                );
              })}
            </section>
            <section className="card" aria-labelledby="leases-title">
              <h2 id="leases-title">Leases running out</h2>
              {s.leasesExpiringSoon.length === 0 ? (
                <p className="muted">No lease runs out within three days.</p>
              ) : (
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Device</th>
                      <th scope="col">Lease ends</th>
                    </tr>
                  </thead>
                  <tbody>
                    {s.leasesExpiringSoon.slice(0, 10).map((l) => (
                      <tr key={l.device.id}>
                        <td>
                          <Link to={`/devices/${l.device.id}`}>{l.device.name}</Link>
                        </td>
                        <td title={dateTime(l.expiresAt)}>
                          {l.expiresAt < s.generatedAt ? (
                            <Badge value="expired" />
                          ) : (
                            relative(l.expiresAt, s.generatedAt)
                          )}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )}
            </section>
          </div>
          <section className="card" aria-labelledby="failures-title">
            <h2 id="failures-title">Recent failures and rollbacks</h2>
            {s.recentFailures.length === 0 ? (
              <p className="muted">No update has failed or rolled back.</p>
            ) : (
              <table>
                <thead>
                  <tr>
                    <th scope="col">When</th>
                    <th scope="col">Device</th>
                    <th scope="col">Outcome</th>
                    <th scope="col">Version</th>
                    <th scope="col">Reason</th>
                  </tr>
                </thead>
                <tbody>
                  {s.recentFailures.map((f, i) => (
                    <tr key={`${f.device.id}-${f.at}-${i}`}>
                      <td title={dateTime(f.at)}>{relative(f.at, s.generatedAt)}</td>
                      <td>
                        <Link to={`/devices/${f.device.id}`}>{f.device.name}</Link>
                      </td>
                      <td>
                        <Badge value={f.type} />
                      </td>
                      <td>{f.version ?? '—'}</td>
                      <td>{f.reason ?? '—'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
          <section className="card" aria-labelledby="history-title">
            <h2 id="history-title">Versions across the fleet, last 30 days</h2>
            <ErrorText error={history.error} />
            {history.data && <VersionsChart points={history.data.points} />}
          </section>
        </>
      )}
    </Page>
  );
}
