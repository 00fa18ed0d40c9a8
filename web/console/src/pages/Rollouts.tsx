import { useEffect, useState, type FormEvent, type ReactNode } from 'react';
import {
  BulkheadError,
  ErrorCodes,
  fleetEndpoints,
  imageEndpoints,
  MAX_ROLLOUT_PHASES,
  ROLLOUT_STATE_NAMES,
  rolloutEndpoints,
  type Rollout,
  type RolloutAction,
  type RolloutCounts,
  type RolloutDetail,
  type RolloutPhase,
} from '../../../../src/protocol/index.ts';
import { can, fieldOf, useMutation, useQuery } from '../api.ts';
import {
  Badge,
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
import { Field, FieldError, Pager, useUserNames } from '../parts.tsx';

/** Rollouts still moving, whose numbers change while one looks. */
const LIVE = new Set(['pending', 'running', 'paused']);
/** States in which a rollout has a current phase. */
const MOVING = new Set(['running', 'paused', 'halted']);

function target(r: Rollout): string {
  if (r.group && r.profile) return `${r.group} · ${r.profile}`;
  return r.group ?? r.profile ?? '—';
}

function phaseText(r: Rollout): string {
  if (r.state === 'pending') return `not started (${r.phases.length} phases)`;
  return `${r.currentPhase + 1} of ${r.phases.length} (${r.phases[r.currentPhase] ?? 100}%)`;
}

/** The rollouts list, newest first, filtered by state in the URL and paged on the server. */
export function Rollouts({ client, session, route }: RouteContext) {
  const state = route.query.get('state') ?? undefined;
  const cursor = route.query.get('cursor') ?? undefined;
  const validState = ROLLOUT_STATE_NAMES.find((s) => s === state);
  const rollouts = useQuery(client, rolloutEndpoints.listRollouts, {
    query: { state: validState, cursor, limit: 25 },
  });
  const mayAct = can(session.role, 'operator');
  const list = rollouts.data?.rollouts ?? [];
  return (
    <Page
      title="Rollouts"
      busy={rollouts.loading}
      actions={
        mayAct && (
          <Link to="/rollouts/new" className="button primary-link">
            New rollout
          </Link>
        )
      }
    >
      <div className="filters">
        <p className="field">
          <label htmlFor="rollout-state">State</label>
          <select
            id="rollout-state"
            value={validState ?? ''}
            onChange={(e) => navigate(withQuery('/rollouts', { state: e.target.value }))}
          >
            <option value="">Any</option>
            {ROLLOUT_STATE_NAMES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </p>
      </div>
      <ErrorText error={rollouts.error} />
      {rollouts.data && list.length === 0 && (
        <Empty>
          {validState
            ? `No ${validState} rollouts.`
            : 'No rollouts yet. A rollout gives a published version to a group or profile in phases and halts itself when too many PCs fail.'}{' '}
          {mayAct && !validState && <Link to="/rollouts/new">Create the first one.</Link>}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Version</th>
                <th scope="col">Target</th>
                <th scope="col">State</th>
                <th scope="col">Phase</th>
                <th scope="col">Devices</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {list.map((r) => (
                <tr key={r.id}>
                  <th scope="row">
                    <Link to={`/rollouts/${r.id}`}>
                      {r.image}@{r.version}
                    </Link>
                  </th>
                  <td>{target(r)}</td>
                  <td>
                    <Badge value={r.state} />
                  </td>
                  <td>{phaseText(r)}</td>
                  <td>
                    <RowCounts client={client} rollout={r} />
                  </td>
                  <td title={dateTime(r.createdAt)}>{relative(r.createdAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager path="/rollouts" query={route.query} next={rollouts.data?.next} />
    </Page>
  );
}

/** One row's device counts: the list does not carry them, so each row asks (live ones again). */
function RowCounts({ client, rollout }: { client: RouteContext['client']; rollout: Rollout }) {
  const detail = useQuery(
    client,
    rolloutEndpoints.getRollout,
    { params: { id: rollout.id } },
    { pollMs: LIVE.has(rollout.state) ? 5000 : 0 },
  );
  const t = detail.data?.totals;
  if (!t) return <span className="muted">…</span>;
  return <span>{countsText(t)}</span>;
}

function countsText(t: RolloutCounts): string {
  const parts = [`${t.healthy} healthy`];
  if (t.failed) parts.push(`${t.failed} failed`);
  if (t.rolledBack) parts.push(`${t.rolledBack} rolled back`);
  if (t.inProgress) parts.push(`${t.inProgress} updating`);
  if (t.pending) parts.push(`${t.pending} pending`);
  return `${parts.join(', ')} of ${t.targeted}`;
}

interface VersionChoice {
  id: string;
  label: string;
  image: string;
}

/** Published, unretired versions of every image, newest first within each image. */
function usePublishedVersions(client: RouteContext['client']) {
  const images = useQuery(client, imageEndpoints.listImages, { query: {} }, { pollMs: 0 });
  const [versions, setVersions] = useState<{ choices: VersionChoice[]; error: unknown } | null>(
    null,
  );
  useEffect(() => {
    if (!images.data) return;
    let stopped = false;
    Promise.all(
      images.data.images.map((i) =>
        client.call(imageEndpoints.listVersions, { params: { id: i.id } }).then((v) =>
          v.versions
            .filter((x) => x.state === 'published')
            .sort((a, b) => b.createdAt - a.createdAt)
            .map((x) => ({
              id: x.id,
              image: i.name,
              label: `${i.name}@${x.version}${x.released ? ' (released)' : ''}`,
            })),
        ),
      ),
    ).then(
      (lists) => !stopped && setVersions({ choices: lists.flat(), error: null }),
      (error: unknown) => !stopped && setVersions({ choices: [], error }),
    );
    return () => {
      stopped = true;
    };
  }, [client, images.data]);
  return { versions, error: images.error ?? versions?.error ?? null, loading: versions === null };
}

/** `1, 10, 50, 100` → [1, 10, 50, 100]; null when it is not a list of numbers. */
export function parsePhases(text: string): number[] | null {
  const parts = text
    .split(/[,\s]+/)
    .map((p) => p.replace(/%$/, ''))
    .filter(Boolean);
  if (parts.length === 0) return null;
  const numbers = parts.map(Number);
  return numbers.every((n) => Number.isFinite(n)) ? numbers : null;
}

/** The form of a new rollout: version, target, phases, threshold and soak. */
export function NewRollout({ client, session, route }: RouteContext) {
  const { versions, error: loadError, loading } = usePublishedVersions(client);
  const groups = useQuery(client, fleetEndpoints.listGroups, {}, { pollMs: 0 });
  const profiles = useQuery(client, fleetEndpoints.listProfiles, {}, { pollMs: 0 });
  const [versionId, setVersionId] = useState(route.query.get('version') ?? '');
  const [groupId, setGroupId] = useState('');
  const [profileId, setProfileId] = useState('');
  const [phases, setPhases] = useState('1, 10, 50, 100');
  const [threshold, setThreshold] = useState('10');
  const [soak, setSoak] = useState('60');
  const [minReports, setMinReports] = useState('1');
  const [start, setStart] = useState(true);
  const create = useMutation(async () => {
    const phaseList = parsePhases(phases);
    if (phaseList === null) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        'phases: write percentages separated by commas, e.g. 1, 10, 50, 100',
      );
    }
    return client.call(rolloutEndpoints.createRollout, {
      body: {
        imageVersionId: versionId,
        ...(groupId ? { groupId } : {}),
        ...(profileId ? { profileId } : {}),
        phases: phaseList,
        failureThreshold: Number(threshold) / 100,
        soakMinutes: Number(soak),
        minReports: Number(minReports),
        start,
      },
    });
  });
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const created = await create.mutate();
    if (created) navigate(`/rollouts/${created.id}`);
  };
  // A field's own error goes beside it; any other under the form.
  const field = fieldOf(create.error);
  const errorAt = (name: string | string[]): ReactNode =>
    field !== null && [name].flat().includes(field) ? <FieldError error={create.error} /> : null;
  const known = [
    'imageVersionId',
    'groupId',
    'profileId',
    'phases',
    'failureThreshold',
    'soakMinutes',
    'minReports',
  ];
  const busy = loading || groups.loading || profiles.loading;

  if (!can(session.role, 'operator')) {
    return (
      <Page title="New rollout" busy={false}>
        <p>Only an operator or an admin may start a rollout.</p>
      </Page>
    );
  }
  return (
    <Page title="New rollout" busy={busy}>
      <p>
        <Link to="/rollouts">← All rollouts</Link>
      </p>
      <ErrorText error={loadError} />
      {versions && versions.choices.length === 0 && !loadError && (
        <Empty>
          No published version to roll out. Push one with <code>bulkhead image push</code>, then
          publish it on its image&apos;s page.
        </Empty>
      )}
      {versions && versions.choices.length > 0 && (
        <form className="card" onSubmit={(e) => void submit(e)}>
          <Field label="Image version" hint="Only published versions can go out">
            {(id) => (
              <select
                id={id}
                value={versionId}
                required
                onChange={(e) => setVersionId(e.target.value)}
              >
                <option value="">Choose a version…</option>
                {[...new Set(versions.choices.map((c) => c.image))].map((image) => (
                  <optgroup key={image} label={image}>
                    {versions.choices
                      .filter((c) => c.image === image)
                      .map((c) => (
                        <option key={c.id} value={c.id}>
                          {c.label}
                        </option>
                      ))}
                  </optgroup>
                ))}
              </select>
            )}
          </Field>
          {errorAt('imageVersionId')}
          <fieldset>
            <legend>Target: the devices of a group, of a profile, or of both</legend>
            <div className="form-row">
              <Field label="Target group">
                {(id) => (
                  <select id={id} value={groupId} onChange={(e) => setGroupId(e.target.value)}>
                    <option value="">Any group</option>
                    {(groups.data?.groups ?? []).map((g) => (
                      <option key={g.id} value={g.id}>
                        {g.name} ({count(g.devices, 'device')})
                      </option>
                    ))}
                  </select>
                )}
              </Field>
              <Field label="Target profile">
                {(id) => (
                  <select id={id} value={profileId} onChange={(e) => setProfileId(e.target.value)}>
                    <option value="">Any profile</option>
                    {(profiles.data?.profiles ?? []).map((p) => (
                      <option key={p.id} value={p.id}>
                        {p.name} ({count(p.devices, 'device')})
                      </option>
                    ))}
                  </select>
                )}
              </Field>
            </div>
            {errorAt(['groupId', 'profileId'])}
          </fieldset>
          <div className="form-row">
            <Field
              label="Phases (%)"
              hint={`Cumulative shares of the target, e.g. 1, 10, 50, 100 (at most ${MAX_ROLLOUT_PHASES})`}
            >
              {(id) => (
                <input
                  id={id}
                  value={phases}
                  required
                  onChange={(e) => setPhases(e.target.value)}
                />
              )}
            </Field>
            <Field label="Failure threshold (%)" hint="Halts when more of the reports fail">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={0}
                  max={100}
                  step="any"
                  required
                  value={threshold}
                  onChange={(e) => setThreshold(e.target.value)}
                />
              )}
            </Field>
            <Field label="Soak (minutes)" hint="Each phase runs at least this long">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={0}
                  required
                  value={soak}
                  onChange={(e) => setSoak(e.target.value)}
                />
              )}
            </Field>
            <Field label="Minimum reports" hint="Outcomes a phase needs before the next">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={1}
                  required
                  value={minReports}
                  onChange={(e) => setMinReports(e.target.value)}
                />
              )}
            </Field>
          </div>
          {errorAt(['phases', 'failureThreshold', 'soakMinutes', 'minReports'])}
          <p className="check">
            <input
              id="rollout-start"
              type="checkbox"
              checked={start}
              onChange={(e) => setStart(e.target.checked)}
            />
            <label htmlFor="rollout-start">Start now</label>
          </p>
          {(field === null || !known.includes(field)) && <ErrorText error={create.error} />}
          <button type="submit" className="primary" disabled={create.busy}>
            Create rollout
          </button>
        </form>
      )}
    </Page>
  );
}

const ACTION_LABELS: Record<RolloutAction, string> = {
  pause: 'Pause',
  resume: 'Resume',
  abort: 'Abort',
  promote: 'Promote',
};

/** Which actions the rollout's state allows (Center refuses the others with 409). */
function actionsFor(state: Rollout['state']): RolloutAction[] {
  switch (state) {
    case 'pending':
      return ['resume', 'abort'];
    case 'running':
      return ['pause', 'promote', 'abort'];
    case 'paused':
      return ['resume', 'abort'];
    case 'halted':
      return ['abort'];
    default:
      return [];
  }
}

/** One rollout, live: per-phase progress, the halt reason, actions and its devices. */
export function RolloutPage({ client, session, route, id }: RouteContext & { id: string }) {
  const rollout = useQuery(
    client,
    rolloutEndpoints.getRollout,
    { params: { id } },
    { pollMs: 2000 },
  );
  const [confirming, setConfirming] = useState<RolloutAction | null>(null);
  const [reason, setReason] = useState('');
  const act = useMutation((action: RolloutAction, why?: string) =>
    client.call(rolloutEndpoints.actOnRollout, {
      params: { id, action },
      body: why ? { reason: why } : {},
    }),
  );
  const r = rollout.data;
  const userNames = useUserNames(client);
  const mayAct = can(session.role, 'operator');
  const run = async (action: RolloutAction, why?: string) => {
    const done = await act.mutate(action, why);
    if (!done) return;
    setConfirming(null);
    setReason('');
    rollout.reload();
  };
  return (
    <Page
      title={r ? `Rollout of ${r.image}@${r.version}` : 'Rollout'}
      busy={rollout.loading}
      actions={
        r &&
        mayAct &&
        actionsFor(r.state).map((a) => (
          <button
            key={a}
            type="button"
            className={a === 'abort' ? 'danger' : undefined}
            disabled={act.busy}
            onClick={() => (a === 'abort' || a === 'promote' ? setConfirming(a) : void run(a))}
          >
            {ACTION_LABELS[a]}
          </button>
        ))
      }
    >
      <p>
        <Link to="/rollouts">← All rollouts</Link>
      </p>
      <ErrorText error={rollout.error} />
      {confirming === null && <ErrorText error={act.error} />}
      {r && (
        <>
          {r.state === 'halted' && (
            <div className="halt" role="alert">
              <strong>Halted by Center:</strong>{' '}
              {r.stateReason ?? 'the failure threshold was crossed'}. Devices keep what they have;
              no more are added.{' '}
              {mayAct && 'Abort it to send its devices back to the released version.'}
            </div>
          )}
          <RolloutFacts r={r} userNames={userNames} />
          <section className="card" aria-labelledby="phases">
            <h2 id="phases">Phases</h2>
            <Legend />
            <ol className="phases">
              {r.phaseCounts.map((p) => (
                <PhaseRow
                  key={p.index}
                  phase={p}
                  current={MOVING.has(r.state) && p.index === r.currentPhase}
                />
              ))}
            </ol>
            <p>
              <strong>All phases:</strong> {countsText(r.totals)}
            </p>
          </section>
          <RolloutDevices client={client} id={id} route={route} />
        </>
      )}
      {confirming && r && (
        <ConfirmDialog
          title={`${ACTION_LABELS[confirming]} the rollout of ${r.image}@${r.version}?`}
          confirmLabel={confirming === 'abort' ? 'Abort rollout' : 'Promote'}
          danger={confirming === 'abort'}
          busy={act.busy}
          error={act.error}
          onCancel={() => {
            act.clearError();
            setConfirming(null);
          }}
          onConfirm={() => void run(confirming, confirming === 'abort' ? reason.trim() : undefined)}
        >
          {confirming === 'abort' ? (
            <>
              <p>
                It stops for good: its {count(r.totals.included, 'device')} fall back to{' '}
                {r.imageRelease
                  ? `${r.image}@${r.imageRelease.version}, the released version`
                  : `the released version of ${r.image}`}
                . This cannot be undone; a new rollout can start again.
              </p>
              <p className="field">
                <label htmlFor="abort-reason">Reason</label>
                <input
                  id="abort-reason"
                  value={reason}
                  maxLength={500}
                  onChange={(e) => setReason(e.target.value)}
                />
                <span className="hint">Recorded with the rollout and in the audit trail</span>
              </p>
            </>
          ) : (
            <p>
              The next phase starts now, without waiting for the soak:{' '}
              {r.currentPhase + 1 < r.phases.length
                ? `${r.phases[r.currentPhase + 1]}% of the target gets ${r.version}.`
                : 'this is the last phase, so the rollout completes.'}
            </p>
          )}
        </ConfirmDialog>
      )}
    </Page>
  );
}

function RolloutFacts({
  r,
  userNames,
}: {
  r: RolloutDetail;
  userNames: ReadonlyMap<string, string>;
}) {
  return (
    <section className="card" aria-labelledby="rollout-facts">
      <h2 id="rollout-facts">
        <Badge value={r.state} /> {r.state === 'pending' ? 'Not started' : `Phase ${phaseText(r)}`}
      </h2>
      <dl className="facts">
        <dt>Version</dt>
        <dd>
          <Link to={`/images/${encodeURIComponent(r.image)}`}>{r.image}</Link>@{r.version}
          {r.imageRelease && ` (released now: ${r.imageRelease.version})`}
        </dd>
        <dt>Target</dt>
        <dd>
          {r.group ? `group ${r.group}` : 'every group'}
          {r.profile ? `, profile ${r.profile}` : ''}
        </dd>
        <dt>Phases</dt>
        <dd>{r.phases.map((p) => `${p}%`).join(' → ')}</dd>
        <dt>Halts when</dt>
        <dd>
          more than {Math.round(r.failureThreshold * 10000) / 100}% of the outcomes are failures or
          rollbacks
        </dd>
        <dt>Each phase</dt>
        <dd>
          soaks {count(r.soakMinutes, 'minute')} and needs {count(r.minReports, 'report')}
        </dd>
        {r.phaseStartedAt !== null && (
          <>
            <dt>Phase started</dt>
            <dd title={dateTime(r.phaseStartedAt)}>{relative(r.phaseStartedAt)}</dd>
          </>
        )}
        {r.stateReason && r.state !== 'halted' && (
          <>
            <dt>Reason</dt>
            <dd>{r.stateReason}</dd>
          </>
        )}
        <dt>Created</dt>
        <dd>
          {dateTime(r.createdAt)}
          {r.createdBy && ` by ${userNames.get(r.createdBy) ?? 'an administrator'}`}
        </dd>
      </dl>
    </section>
  );
}

const SEGMENTS: { key: keyof RolloutCounts; label: string; className: string }[] = [
  { key: 'healthy', label: 'healthy', className: 'seg-healthy' },
  { key: 'failed', label: 'failed', className: 'seg-failed' },
  { key: 'rolledBack', label: 'rolled back', className: 'seg-rolledback' },
  { key: 'inProgress', label: 'updating', className: 'seg-updating' },
  { key: 'pending', label: 'pending', className: 'seg-pending' },
];

function Legend() {
  return (
    <p className="legend muted" aria-hidden="true">
      {SEGMENTS.map((s) => (
        <span key={s.key}>
          <i className={s.className} /> {s.label}
        </span>
      ))}
    </p>
  );
}

function PhaseRow({ phase, current }: { phase: RolloutPhase; current: boolean }) {
  const whole = Math.max(phase.targeted, phase.included, 1);
  const text = SEGMENTS.map((s) => `${phase[s.key]} ${s.label}`).join(', ');
  return (
    <li className={current ? 'phase current' : 'phase'}>
      <div className="phase-head">
        <strong>
          Phase {phase.index + 1}: {phase.percent}%
        </strong>{' '}
        {current ? (
          <Badge value="current" />
        ) : (
          !phase.reached && <span className="muted">not reached</span>
        )}
        <span className="muted"> · {count(phase.targeted, 'device')} targeted</span>
      </div>
      <div
        className="bar"
        role="img"
        aria-label={`Phase ${phase.index + 1}: ${text} of ${phase.targeted} targeted`}
      >
        {SEGMENTS.map((s) =>
          phase[s.key] > 0 ? (
            <span
              key={s.key}
              className={s.className}
              style={{ width: `${(100 * phase[s.key]) / whole}%` }}
            />
          ) : null,
        )}
      </div>
      <p className="phase-counts">{text}</p>
    </li>
  );
}

const DEVICE_STATUSES = [
  'pending',
  'downloading',
  'staged',
  'switched',
  'healthy',
  'failed',
  'rolled-back',
] as const;

function RolloutDevices(props: {
  client: RouteContext['client'];
  id: string;
  route: RouteContext['route'];
}) {
  const { query } = props.route;
  const status = DEVICE_STATUSES.find((s) => s === query.get('status'));
  const cursor = query.get('cursor') ?? undefined;
  const devices = useQuery(
    props.client,
    rolloutEndpoints.listRolloutDevices,
    { params: { id: props.id }, query: { status, cursor, limit: 50 } },
    { pollMs: 5000 },
  );
  const path = `/rollouts/${props.id}`;
  const list = devices.data?.devices ?? [];
  return (
    <section aria-labelledby="rollout-devices">
      <h2 id="rollout-devices">Devices</h2>
      <div className="filters">
        <p className="field">
          <label htmlFor="device-status">Status</label>
          <select
            id="device-status"
            value={status ?? ''}
            onChange={(e) =>
              navigate(withQuery(path, { status: e.target.value }), { replace: true })
            }
          >
            <option value="">Any</option>
            {DEVICE_STATUSES.map((s) => (
              <option key={s} value={s}>
                {s}
              </option>
            ))}
          </select>
        </p>
      </div>
      <ErrorText error={devices.error} />
      {devices.data && list.length === 0 && (
        <Empty>
          {status
            ? `No device is ${status}.`
            : 'No device is in it yet: a phase includes devices when it starts.'}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Device</th>
                <th scope="col">Phase</th>
                <th scope="col">Status</th>
                <th scope="col">Reason</th>
                <th scope="col">Since</th>
              </tr>
            </thead>
            <tbody>
              {list.map((d) => (
                <tr key={d.deviceId}>
                  <th scope="row">
                    <Link to={`/devices/${d.deviceId}`}>{d.device}</Link>
                  </th>
                  <td>{d.phase + 1}</td>
                  <td>
                    <Badge value={d.status} />
                  </td>
                  <td>{d.reason ?? ''}</td>
                  <td title={dateTime(d.updatedAt)}>{relative(d.updatedAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager
        path={path}
        query={query}
        next={devices.data?.next}
        newerLabel="← Previous"
        olderLabel="Next →"
      />
    </section>
  );
}
