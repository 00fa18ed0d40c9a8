import { useState, type FormEvent } from 'react';
import {
  adminEndpoints,
  fleetEndpoints,
  imageEndpoints,
  type AuditEntry,
} from '../../../../src/protocol/index.ts';
import { useQuery } from '../api.ts';
import { dateTime, Empty, ErrorText, Page, relative } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link, navigate, withQuery } from '../router.tsx';
import { Field, Pager } from '../parts.tsx';

const FILTERS = ['actor', 'action', 'targetType', 'targetId'] as const;
type Filters = Record<(typeof FILTERS)[number], string>;

/**
 * What an entry is about, as a person names it (as `bulkhead audit` does): `rollout os@2`,
 * `group lab`, `user alice`; only a target with no name of its own shows (the start of) its id.
 */
function subject(e: AuditEntry, names: ReadonlyMap<string, string>): string {
  const state = (e.after ?? e.before ?? {}) as Record<string, unknown>;
  const str = (k: string) => (typeof state[k] === 'string' ? (state[k] as string) : undefined);
  const type = e.targetType.replace(/_/g, ' ');
  const image = str('image') ?? names.get(str('imageId') ?? '');
  const version = str('version');
  if (image !== undefined && version !== undefined) return `${type} ${image}@${version}`;
  const name = str('name') ?? str('username');
  if (name !== undefined) return `${type} ${name}`;
  const group = names.get(str('groupId') ?? '');
  const id = e.targetId === null ? '' : ` ${e.targetId.slice(0, 8)}…`;
  return group !== undefined ? `${type}${id} (group ${group})` : `${type}${id}`;
}

/** The audit trail, newest first: filtered on the server by what the URL says, paged by cursor. */
export function Audit({ client, route }: RouteContext) {
  const current = Object.fromEntries(FILTERS.map((k) => [k, route.query.get(k) ?? ''])) as Filters;
  const cursor = route.query.get('cursor') ?? undefined;
  const query = {
    limit: 50,
    cursor,
    ...Object.fromEntries(FILTERS.filter((k) => current[k]).map((k) => [k, current[k]])),
  };
  const audit = useQuery(
    client,
    adminEndpoints.listAudit,
    { query },
    { pollMs: cursor ? 0 : 5000 },
  );
  const images = useQuery(client, imageEndpoints.listImages, { query: {} }, { pollMs: 0 });
  const groups = useQuery(client, fleetEndpoints.listGroups, {}, { pollMs: 0 });
  const names = new Map(
    [...(images.data?.images ?? []), ...(groups.data?.groups ?? [])].map((x) => [x.id, x.name]),
  );
  const entries = audit.data?.entries ?? [];
  const types = [...new Set(entries.map((e) => e.targetType))].sort();
  const filtered = FILTERS.some((k) => current[k]);
  const only = (patch: Partial<Filters>) => withQuery('/audit', { ...current, ...patch });
  return (
    <Page title="Audit log" busy={audit.loading}>
      <AuditFilters
        key={FILTERS.map((k) => current[k]).join('\n')}
        current={current}
        types={types}
      />
      {current.targetId && (
        <p>
          Only entries about the target <code>{current.targetId}</code>.{' '}
          <Link to={only({ targetId: '' })}>Any target</Link>
        </p>
      )}
      <ErrorText error={audit.error} />
      {audit.data && entries.length === 0 && (
        <Empty>
          {filtered
            ? 'No entry matches these filters.'
            : 'Nothing recorded yet: every change an administrator or a device makes appears here.'}
        </Empty>
      )}
      {entries.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">When</th>
                <th scope="col">Actor</th>
                <th scope="col">Action</th>
                <th scope="col">About</th>
              </tr>
            </thead>
            <tbody>
              {entries.map((e) => (
                <tr key={e.id}>
                  <td title={relative(e.at)}>{dateTime(e.at)}</td>
                  <td>
                    <Link to={only({ actor: e.actor })}>{e.actor}</Link>
                  </td>
                  <td>
                    <code>{e.action}</code>
                  </td>
                  <td>
                    {e.targetId ? (
                      <Link
                        to={only({ targetType: e.targetType, targetId: e.targetId })}
                        title="Only this target's entries"
                      >
                        {subject(e, names)}
                      </Link>
                    ) : (
                      subject(e, names)
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <Pager path="/audit" query={route.query} next={audit.data?.next} />
    </Page>
  );
}

/** The filter form, made afresh whenever the URL's filters change (back, a link in the table). */
function AuditFilters(props: { current: Filters; types: string[] }) {
  const [draft, setDraft] = useState<Filters>(props.current);
  const apply = (e: FormEvent) => {
    e.preventDefault();
    navigate(withQuery('/audit', { ...draft }));
  };
  return (
    <form className="filters audit-filters" onSubmit={apply} aria-label="Filter the audit log">
      <Field label="Actor" hint="user:alice, system">
        {(id) => (
          <input
            id={id}
            value={draft.actor}
            onChange={(e) => setDraft({ ...draft, actor: e.target.value.trim() })}
          />
        )}
      </Field>
      <Field label="Action" hint="group.create, or group for all">
        {(id) => (
          <input
            id={id}
            value={draft.action}
            onChange={(e) => setDraft({ ...draft, action: e.target.value.trim() })}
          />
        )}
      </Field>
      <Field label="Target type" hint="group, rollout, image_version…">
        {(id) => (
          <input
            id={id}
            value={draft.targetType}
            onChange={(e) => setDraft({ ...draft, targetType: e.target.value.trim() })}
          />
        )}
      </Field>
      <datalist id="audit-target-types">
        {props.types.map((t) => (
          <option key={t} value={t} />
        ))}
      </datalist>
      <p className="field field-button">
        <button type="submit" className="primary">
          Filter
        </button>{' '}
        {FILTERS.some((k) => props.current[k]) && <Link to="/audit">Show all</Link>}
      </p>
    </form>
  );
}
