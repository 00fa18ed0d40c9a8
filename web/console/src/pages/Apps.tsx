import { useState, type FormEvent } from 'react';
import { fleetEndpoints, imageEndpoints } from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import { dateTime, Empty, ErrorText, Page } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link } from '../router.tsx';
import { Field } from '../parts.tsx';

/** The app catalog: app layers profiles offer, each an app image. */
export function Apps({ client, session }: RouteContext) {
  const apps = useQuery(client, fleetEndpoints.listApps, {});
  const images = useQuery(client, imageEndpoints.listImages, { query: { kind: 'app' } });
  const isAdmin = can(session.role, 'admin');
  const imageNames = new Map((images.data?.images ?? []).map((i) => [i.id, i.name]));
  const list = apps.data?.apps ?? [];
  return (
    <Page title="Apps" busy={apps.loading}>
      <ErrorText error={apps.error} />
      {apps.data && list.length === 0 && (
        <Empty>
          No apps in the catalog yet. An app is an app image (push one with{' '}
          <code>bulkhead image push --kind app</code>) that profiles offer by default or as an
          option{isAdmin ? '; add it below.' : '.'}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Title</th>
                <th scope="col">Name</th>
                <th scope="col">Image</th>
                <th scope="col">Description</th>
                <th scope="col">Added</th>
              </tr>
            </thead>
            <tbody>
              {list.map((a) => {
                const image = imageNames.get(a.imageId);
                return (
                  <tr key={a.id}>
                    <th scope="row">{a.displayName}</th>
                    <td>
                      <code>{a.name}</code>
                    </td>
                    <td>
                      {image ? (
                        <Link to={`/images/${encodeURIComponent(image)}`}>{image}</Link>
                      ) : (
                        '…'
                      )}
                    </td>
                    <td className="muted">{a.description}</td>
                    <td>{dateTime(a.createdAt)}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {isAdmin && images.data && (
        <AddAppForm
          client={client}
          images={images.data.images.map((i) => ({ id: i.id, name: i.name }))}
          onDone={apps.reload}
        />
      )}
    </Page>
  );
}

function AddAppForm(props: {
  client: RouteContext['client'];
  images: { id: string; name: string }[];
  onDone: () => void;
}) {
  const [name, setName] = useState('');
  const [imageId, setImageId] = useState('');
  const [displayName, setDisplayName] = useState('');
  const add = useMutation(() =>
    props.client.call(fleetEndpoints.createApp, { body: { name, imageId, displayName } }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!(await add.mutate())) return;
    setName('');
    setDisplayName('');
    setImageId('');
    props.onDone();
  };
  return (
    <section className="card" aria-labelledby="add-app">
      <h2 id="add-app">Add an app</h2>
      {props.images.length === 0 ? (
        <p className="muted">
          There is no app image yet: push one with <code>bulkhead image push --kind app</code>{' '}
          first.
        </p>
      ) : (
        <form onSubmit={(e) => void submit(e)}>
          <div className="form-row">
            <Field label="Name" hint="Its mount name on the PC: lower-case, e.g. office">
              {(id) => (
                <input id={id} value={name} required onChange={(e) => setName(e.target.value)} />
              )}
            </Field>
            <Field label="Image">
              {(id) => (
                <select
                  id={id}
                  value={imageId}
                  required
                  onChange={(e) => setImageId(e.target.value)}
                >
                  <option value="">Choose an app image…</option>
                  {props.images.map((i) => (
                    <option key={i.id} value={i.id}>
                      {i.name}
                    </option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Title" hint="What people read, e.g. Office suite">
              {(id) => (
                <input
                  id={id}
                  value={displayName}
                  required
                  onChange={(e) => setDisplayName(e.target.value)}
                />
              )}
            </Field>
          </div>
          <ErrorText error={add.error} />
          <button type="submit" className="primary" disabled={add.busy}>
            Add app
          </button>
        </form>
      )}
    </section>
  );
}
