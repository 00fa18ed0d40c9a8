import { useState, type FormEvent } from 'react';
import { fleetEndpoints, type DeviceGroup } from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import { ConfirmDialog, count, Empty, ErrorText, Page } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link, withQuery } from '../router.tsx';
import { Field } from '../parts.tsx';

/** Device groups: where devices enrol, and what rollouts target. */
export function Groups({ client, session }: RouteContext) {
  const groups = useQuery(client, fleetEndpoints.listGroups, {});
  const isAdmin = can(session.role, 'admin');
  const [deleting, setDeleting] = useState<DeviceGroup | null>(null);
  const [renaming, setRenaming] = useState<string | null>(null);
  const remove = useMutation((id: string) =>
    client.call(fleetEndpoints.deleteGroup, { params: { id } }),
  );
  const list = groups.data?.groups ?? [];
  return (
    <Page title="Groups" busy={groups.loading}>
      <ErrorText error={groups.error} />
      {groups.data && list.length === 0 && (
        <Empty>
          No groups yet. Devices enrol into a group{isAdmin ? ': create the first one below.' : '.'}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Description</th>
                <th scope="col">Devices</th>
                {isAdmin && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {list.map((g) =>
                renaming === g.id ? (
                  <RenameRow
                    key={g.id}
                    group={g}
                    client={client}
                    onDone={() => {
                      setRenaming(null);
                      groups.reload();
                    }}
                    onCancel={() => setRenaming(null)}
                  />
                ) : (
                  <tr key={g.id}>
                    <th scope="row">{g.name}</th>
                    <td className="muted">{g.description}</td>
                    <td>
                      <Link to={withQuery('/devices', { groupId: g.id })}>
                        {count(g.devices, 'device')}
                      </Link>
                    </td>
                    {isAdmin && (
                      <td className="actions">
                        <button
                          type="button"
                          aria-label={`Rename ${g.name}`}
                          onClick={() => setRenaming(g.id)}
                        >
                          Rename
                        </button>
                        <button
                          type="button"
                          aria-label={`Delete ${g.name}`}
                          onClick={() => setDeleting(g)}
                        >
                          Delete
                        </button>
                      </td>
                    )}
                  </tr>
                ),
              )}
            </tbody>
          </table>
        </div>
      )}
      {isAdmin && <CreateGroupForm client={client} onDone={groups.reload} />}
      {deleting && (
        <ConfirmDialog
          title={`Delete the group ${deleting.name}?`}
          confirmLabel="Delete group"
          danger
          busy={remove.busy}
          error={remove.error}
          onCancel={() => {
            remove.clearError();
            setDeleting(null);
          }}
          onConfirm={() =>
            void remove.mutate(deleting.id).then((done) => {
              if (done === undefined) return;
              setDeleting(null);
              groups.reload();
            })
          }
        >
          <p>
            Its enrolment tokens are deleted with it, so no PC can enrol into it any more.
            {deleting.devices > 0 &&
              ` It still holds ${count(deleting.devices, 'device')}: move them to another group first.`}
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function RenameRow(props: {
  group: DeviceGroup;
  client: RouteContext['client'];
  onDone: () => void;
  onCancel: () => void;
}) {
  const [name, setName] = useState(props.group.name);
  const [description, setDescription] = useState(props.group.description);
  const save = useMutation(() =>
    props.client.call(fleetEndpoints.updateGroup, {
      params: { id: props.group.id },
      body: { name, description },
    }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (await save.mutate()) props.onDone();
  };
  return (
    <tr>
      <td colSpan={4}>
        <form onSubmit={(e) => void submit(e)} aria-label={`Rename ${props.group.name}`}>
          <div className="form-row">
            <Field label="New name">
              {(id) => (
                <input
                  id={id}
                  value={name}
                  required
                  autoFocus
                  onChange={(e) => setName(e.target.value)}
                />
              )}
            </Field>
            <Field label="Description">
              {(id) => (
                <input
                  id={id}
                  value={description}
                  onChange={(e) => setDescription(e.target.value)}
                />
              )}
            </Field>
            <p className="field">
              <button type="submit" className="primary" disabled={save.busy}>
                Save
              </button>{' '}
              <button type="button" onClick={props.onCancel}>
                Cancel
              </button>
            </p>
          </div>
          <ErrorText error={save.error} />
        </form>
      </td>
    </tr>
  );
}

function CreateGroupForm(props: { client: RouteContext['client']; onDone: () => void }) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const create = useMutation(() =>
    props.client.call(fleetEndpoints.createGroup, { body: { name, description } }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!(await create.mutate())) return;
    setName('');
    setDescription('');
    props.onDone();
  };
  return (
    <section className="card" aria-labelledby="create-group">
      <h2 id="create-group">Create a group</h2>
      <form onSubmit={(e) => void submit(e)}>
        <div className="form-row">
          <Field label="Name">
            {(id) => (
              <input id={id} value={name} required onChange={(e) => setName(e.target.value)} />
            )}
          </Field>
          <Field label="Description">
            {(id) => (
              <input id={id} value={description} onChange={(e) => setDescription(e.target.value)} />
            )}
          </Field>
        </div>
        <ErrorText error={create.error} />
        <button type="submit" className="primary" disabled={create.busy}>
          Create group
        </button>
      </form>
    </section>
  );
}
