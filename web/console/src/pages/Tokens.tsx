import { useState, type FormEvent } from 'react';
import { fleetEndpoints, type EnrolmentToken } from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import {
  Badge,
  ConfirmDialog,
  dateTime,
  Empty,
  ErrorText,
  Page,
  relative,
} from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Field, Secret, useUserNames } from '../parts.tsx';

/** Enrolment tokens: the one-time secrets a PC enrols into a group with. */
export function Tokens({ client, session }: RouteContext) {
  const tokens = useQuery(client, fleetEndpoints.listEnrolmentTokens, {});
  const groups = useQuery(client, fleetEndpoints.listGroups, {}, { pollMs: 0 });
  const mayAct = can(session.role, 'operator');
  const [revoking, setRevoking] = useState<EnrolmentToken | null>(null);
  const revoke = useMutation((id: string) =>
    client.call(fleetEndpoints.revokeEnrolmentToken, { params: { id } }),
  );
  const userNames = useUserNames(client);
  const groupNames = new Map((groups.data?.groups ?? []).map((g) => [g.id, g.name]));
  const list = tokens.data?.tokens ?? [];
  const now = Date.now();
  return (
    <Page title="Enrolment" busy={tokens.loading}>
      <p className="muted">
        A PC joins the fleet with a one-time enrolment token: it enrols into the token&apos;s group
        and from then on authenticates with its own key.
      </p>
      <ErrorText error={tokens.error} />
      {mayAct && groups.data && (
        <CreateTokenForm client={client} groups={groups.data.groups} onDone={tokens.reload} />
      )}
      <h2>Tokens</h2>
      {tokens.data && list.length === 0 && (
        <Empty>
          No enrolment tokens.{' '}
          {mayAct ? 'Create one above, then run the command it shows on the PC.' : ''}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Group</th>
                <th scope="col">Uses left</th>
                <th scope="col">Expires</th>
                <th scope="col">State</th>
                <th scope="col">Note</th>
                <th scope="col">Created by</th>
                {mayAct && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {list.map((t) => {
                const state =
                  t.usesLeft <= 0 ? 'used up' : t.expiresAt <= now ? 'expired' : 'active';
                const group = groupNames.get(t.groupId) ?? '…';
                return (
                  <tr key={t.id}>
                    <th scope="row">{group}</th>
                    <td>{t.usesLeft.toLocaleString()}</td>
                    <td title={dateTime(t.expiresAt)}>{relative(t.expiresAt, now)}</td>
                    <td>
                      <Badge value={state} />
                    </td>
                    <td className="muted">{t.note}</td>
                    <td>{t.createdBy === null ? '—' : (userNames.get(t.createdBy) ?? '…')}</td>
                    {mayAct && (
                      <td className="actions">
                        <button
                          type="button"
                          aria-label={`Revoke the token for ${group} created ${dateTime(t.createdAt)}`}
                          onClick={() => setRevoking(t)}
                        >
                          Revoke
                        </button>
                      </td>
                    )}
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {revoking && (
        <ConfirmDialog
          title={`Revoke this enrolment token for ${groupNames.get(revoking.groupId) ?? 'its group'}?`}
          confirmLabel="Revoke token"
          danger
          busy={revoke.busy}
          error={revoke.error}
          onCancel={() => {
            revoke.clearError();
            setRevoking(null);
          }}
          onConfirm={() =>
            void revoke.mutate(revoking.id).then((done) => {
              if (done === undefined) return;
              setRevoking(null);
              tokens.reload();
            })
          }
        >
          <p>
            No PC can enrol with it any more ({revoking.usesLeft} uses left). PCs that already
            enrolled with it stay in the fleet.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function CreateTokenForm(props: {
  client: RouteContext['client'];
  groups: { id: string; name: string }[];
  onDone: () => void;
}) {
  const [groupId, setGroupId] = useState('');
  const [uses, setUses] = useState('1');
  const [hours, setHours] = useState('24');
  const [note, setNote] = useState('');
  const [created, setCreated] = useState<{ token: string; group: string } | null>(null);
  const create = useMutation(() =>
    props.client.call(fleetEndpoints.createEnrolmentToken, {
      body: { groupId, uses: Number(uses), expiresInHours: Number(hours), note },
    }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const answer = await create.mutate();
    if (!answer) return;
    setCreated({
      token: answer.token,
      group: props.groups.find((g) => g.id === groupId)?.name ?? '',
    });
    setNote('');
    props.onDone();
  };
  const command = created
    ? `bulkhead engine enroll --center ${location.origin} --token ${created.token} --name <pc-name>`
    : '';
  return (
    <section className="card" aria-labelledby="create-token">
      <h2 id="create-token">Create an enrolment token</h2>
      {props.groups.length === 0 ? (
        <p className="muted">
          There is no group to enrol into yet: an admin creates one under Groups.
        </p>
      ) : (
        <form onSubmit={(e) => void submit(e)}>
          <div className="form-row">
            <Field label="Group">
              {(id) => (
                <select
                  id={id}
                  value={groupId}
                  required
                  onChange={(e) => setGroupId(e.target.value)}
                >
                  <option value="">Choose a group…</option>
                  {props.groups.map((g) => (
                    <option key={g.id} value={g.id}>
                      {g.name}
                    </option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Uses">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={1}
                  max={10000}
                  required
                  value={uses}
                  onChange={(e) => setUses(e.target.value)}
                />
              )}
            </Field>
            <Field label="Expires in (hours)">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={1}
                  max={720}
                  required
                  value={hours}
                  onChange={(e) => setHours(e.target.value)}
                />
              )}
            </Field>
            <Field label="Note">
              {(id) => <input id={id} value={note} onChange={(e) => setNote(e.target.value)} />}
            </Field>
          </div>
          <ErrorText error={create.error} />
          <button type="submit" className="primary" disabled={create.busy}>
            Create token
          </button>
        </form>
      )}
      {created && (
        <div className="created" role="region" aria-label="New enrolment token">
          <p>
            <strong>The token for {created.group}, shown only now:</strong> copy it before leaving
            this page.
          </p>
          <Secret label="Enrolment token" value={created.token} />
          <p>Run this on the PC (as root), with its name:</p>
          <Secret label="Enrol command" value={command} />
          <button type="button" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      )}
    </section>
  );
}
