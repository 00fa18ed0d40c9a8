import { useState, type FormEvent } from 'react';
import { imageEndpoints, type Publisher } from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import { Badge, ConfirmDialog, dateTime, Empty, ErrorText, Page } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Field } from '../parts.tsx';

/** Trusted publisher keys: whose signatures Center accepts on uploaded versions. */
export function Publishers({ client, session }: RouteContext) {
  const list = useQuery(client, imageEndpoints.listPublishers, {});
  const isAdmin = can(session.role, 'admin');
  const [revoking, setRevoking] = useState<Publisher | null>(null);
  const revoke = useMutation((keyid: string) =>
    client.call(imageEndpoints.revokePublisher, { params: { keyid } }),
  );
  const publishers = list.data?.publishers ?? [];
  return (
    <Page title="Publisher keys" busy={list.loading}>
      <p className="muted">
        Center accepts an image version only when a trusted key signed its manifest. Make a key pair
        with <code>bulkhead keys generate --out DIR</code> on the machine that publishes.
      </p>
      <ErrorText error={list.error} />
      {list.data && publishers.length === 0 && (
        <Empty>
          No trusted keys yet: no image can be published.{' '}
          {isAdmin
            ? 'Trust the public key of whoever publishes below.'
            : 'Ask an admin to trust one.'}
        </Empty>
      )}
      {publishers.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Key id</th>
                <th scope="col">State</th>
                <th scope="col">Trusted since</th>
                {isAdmin && <th scope="col">Actions</th>}
              </tr>
            </thead>
            <tbody>
              {publishers.map((p) => (
                <tr key={p.keyid}>
                  <th scope="row">{p.name}</th>
                  <td>
                    <code title={p.keyid}>{p.keyid.slice(0, 16)}…</code>
                  </td>
                  <td>
                    {p.revokedAt === null ? (
                      <Badge value="trusted" />
                    ) : (
                      <>
                        <Badge value="revoked" /> {dateTime(p.revokedAt)}
                      </>
                    )}
                  </td>
                  <td>{dateTime(p.createdAt)}</td>
                  {isAdmin && (
                    <td className="actions">
                      {p.revokedAt === null && (
                        <button type="button" onClick={() => setRevoking(p)}>
                          Revoke
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
      {isAdmin && <TrustKeyForm client={client} onDone={list.reload} />}
      {revoking && (
        <ConfirmDialog
          title={`Revoke the key ${revoking.name}?`}
          confirmLabel="Revoke key"
          danger
          typeToConfirm={revoking.name}
          busy={revoke.busy}
          error={revoke.error}
          onCancel={() => {
            revoke.clearError();
            setRevoking(null);
          }}
          onConfirm={() =>
            void revoke.mutate(revoking.keyid).then((done) => {
              if (!done) return;
              setRevoking(null);
              list.reload();
            })
          }
        >
          <p>
            Center will refuse every new upload it signs, and versions only it signed can no longer
            go out: they cannot be published, released or rolled out. Versions already on PCs stay.
            A revoked key cannot be trusted again.
          </p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function TrustKeyForm(props: { client: RouteContext['client']; onDone: () => void }) {
  const [name, setName] = useState('');
  const [publicKey, setPublicKey] = useState('');
  const trust = useMutation(() =>
    props.client.call(imageEndpoints.createPublisher, { body: { name, publicKey } }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const created = await trust.mutate();
    if (!created) return;
    setName('');
    setPublicKey('');
    props.onDone();
  };
  return (
    <section className="card" aria-labelledby="trust-key">
      <h2 id="trust-key">Trust a publisher key</h2>
      <form onSubmit={(e) => void submit(e)}>
        <Field label="Name" hint="Who publishes with it: letters, digits and . _ @ -">
          {(id) => (
            <input id={id} value={name} required onChange={(e) => setName(e.target.value)} />
          )}
        </Field>
        <Field
          label="Public key"
          hint="Paste the text of the .pub file (-----BEGIN PUBLIC KEY----- …)"
        >
          {(id) => (
            <textarea
              id={id}
              rows={4}
              value={publicKey}
              required
              spellCheck={false}
              onChange={(e) => setPublicKey(e.target.value)}
            />
          )}
        </Field>
        <ErrorText error={trust.error} />
        <button type="submit" className="primary" disabled={trust.busy}>
          Trust key
        </button>
      </form>
    </section>
  );
}
