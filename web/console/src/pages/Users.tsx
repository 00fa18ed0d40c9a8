import { useState, type FormEvent } from 'react';
import {
  ADMIN_ROLE_NAMES,
  adminEndpoints,
  type AdminRoleName,
  type AdminUser,
} from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import { Badge, ConfirmDialog, dateTime, Empty, ErrorText, Page } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Field, Secret } from '../parts.tsx';

const ROLE_MEANING: Record<AdminRoleName, string> = {
  viewer: 'sees everything and changes nothing',
  operator: 'publishes images, runs rollouts, creates enrolment tokens, locks and kills devices',
  admin: 'also manages profiles, groups, apps, keys and people',
};

type Change =
  | { kind: 'role'; user: AdminUser; role: AdminRoleName }
  | { kind: 'disable' | 'enable'; user: AdminUser };

/** The people who administer the fleet: their roles, and their accounts switched off or on. */
export function Users({ client, session }: RouteContext) {
  const users = useQuery(client, adminEndpoints.listUsers, {});
  const isAdmin = can(session.role, 'admin');
  const [change, setChange] = useState<Change | null>(null);
  const apply = useMutation((c: Change) =>
    client.call(adminEndpoints.updateUser, {
      params: { id: c.user.id },
      body: c.kind === 'role' ? { role: c.role } : { disabled: c.kind === 'disable' },
    }),
  );
  const list = users.data?.users ?? [];
  return (
    <Page title="People" busy={users.loading}>
      <ErrorText error={users.error} />
      {users.data && list.length === 0 && <Empty>No administrators.</Empty>}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Username</th>
                <th scope="col">Role</th>
                <th scope="col">State</th>
                <th scope="col">Last sign-in</th>
                <th scope="col">Created</th>
                {isAdmin && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {list.map((u) => (
                <tr key={u.id}>
                  <th scope="row">
                    {u.username}
                    {u.username === session.username && <span className="muted"> (you)</span>}
                  </th>
                  <td>
                    {isAdmin ? (
                      <>
                        <label className="visually-hidden" htmlFor={`role-${u.id}`}>
                          Role of {u.username}
                        </label>
                        <select
                          id={`role-${u.id}`}
                          value={u.role}
                          onChange={(e) =>
                            setChange({
                              kind: 'role',
                              user: u,
                              role: e.target.value as AdminRoleName,
                            })
                          }
                        >
                          {ADMIN_ROLE_NAMES.map((r) => (
                            <option key={r} value={r}>
                              {r}
                            </option>
                          ))}
                        </select>
                      </>
                    ) : (
                      u.role
                    )}
                  </td>
                  <td>
                    <Badge value={u.disabledAt === null ? 'active' : 'disabled'} />
                  </td>
                  <td>{dateTime(u.lastLoginAt)}</td>
                  <td>{dateTime(u.createdAt)}</td>
                  {isAdmin && (
                    <td className="actions">
                      {u.disabledAt === null ? (
                        <button
                          type="button"
                          aria-label={`Disable ${u.username}`}
                          onClick={() => setChange({ kind: 'disable', user: u })}
                        >
                          Disable
                        </button>
                      ) : (
                        <button
                          type="button"
                          aria-label={`Enable ${u.username}`}
                          onClick={() => setChange({ kind: 'enable', user: u })}
                        >
                          Enable
                        </button>
                      )}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {isAdmin && <CreateUserForm client={client} onDone={users.reload} />}
      {change && (
        <ConfirmDialog
          title={
            change.kind === 'role'
              ? `Make ${change.user.username} ${change.role === 'admin' || change.role === 'operator' ? 'an' : 'a'} ${change.role}?`
              : `${change.kind === 'disable' ? 'Disable' : 'Enable'} ${change.user.username}?`
          }
          confirmLabel={
            change.kind === 'role'
              ? 'Change role'
              : change.kind === 'disable'
                ? 'Disable account'
                : 'Enable account'
          }
          danger={change.kind === 'disable'}
          busy={apply.busy}
          error={apply.error}
          onCancel={() => {
            apply.clearError();
            setChange(null);
          }}
          onConfirm={() =>
            void apply.mutate(change).then((done) => {
              if (!done) return;
              setChange(null);
              users.reload();
            })
          }
        >
          <p>
            {change.kind === 'role'
              ? `A ${change.role} ${ROLE_MEANING[change.role]}. The change applies to ${change.user.username}'s next request.`
              : change.kind === 'disable'
                ? `${change.user.username} can no longer sign in; their sessions end at once and their API tokens are refused until the account is enabled again.`
                : `${change.user.username} can sign in again, and their API tokens work again.`}
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function CreateUserForm(props: { client: RouteContext['client']; onDone: () => void }) {
  const [username, setUsername] = useState('');
  const [role, setRole] = useState<AdminRoleName>('viewer');
  const [created, setCreated] = useState<{ username: string; password: string } | null>(null);
  const create = useMutation(() =>
    props.client.call(adminEndpoints.createUser, { body: { username, role } }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const answer = await create.mutate();
    if (!answer) return;
    setCreated({ username: answer.user.username, password: answer.password ?? '' });
    setUsername('');
    props.onDone();
  };
  return (
    <section className="card" aria-labelledby="create-user">
      <h2 id="create-user">Add a person</h2>
      <form onSubmit={(e) => void submit(e)}>
        <div className="form-row">
          <Field label="Username">
            {(id) => (
              <input
                id={id}
                value={username}
                autoComplete="off"
                required
                onChange={(e) => setUsername(e.target.value)}
              />
            )}
          </Field>
          <Field label="Role">
            {(id) => (
              <select
                id={id}
                value={role}
                onChange={(e) => setRole(e.target.value as AdminRoleName)}
              >
                {ADMIN_ROLE_NAMES.map((r) => (
                  <option key={r} value={r}>
                    {r}
                  </option>
                ))}
              </select>
            )}
          </Field>
        </div>
        <p className="muted">
          A {role} {ROLE_MEANING[role]}.
        </p>
        <ErrorText error={create.error} />
        <button type="submit" className="primary" disabled={create.busy}>
          Add person
        </button>
      </form>
      {created && (
        <div role="region" aria-label="New account">
          <p>
            <strong>{created.username}&apos;s password, shown only now:</strong> give it to them;
            they choose their own with <code>bulkhead passwd</code>.
          </p>
          <Secret label="Generated password" value={created.password} />
          <button type="button" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      )}
    </section>
  );
}
