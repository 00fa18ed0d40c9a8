import { useState } from 'react';
import {
  imageEndpoints,
  type ImageDetail,
  type ImageInfo,
  type ImageVersionInfo,
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
} from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link, withQuery } from '../router.tsx';

/** The images list: what each one is, what devices get, how many versions it has. */
export function Images({ client }: RouteContext) {
  const images = useQuery(client, imageEndpoints.listImages, { query: {} });
  const list = images.data?.images ?? [];
  return (
    <Page title="Images" busy={images.loading}>
      <ErrorText error={images.error} />
      {images.data && list.length === 0 && (
        <Empty>
          No images yet. Publish one from a disk image with{' '}
          <code>bulkhead image push --name NAME --version 1 DISK</code>; trust its publisher key
          under <Link to="/publishers">Keys</Link> first.
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Kind</th>
                <th scope="col">Released version</th>
                <th scope="col">Versions</th>
                <th scope="col">Description</th>
              </tr>
            </thead>
            <tbody>
              {list.map((image) => (
                <ImageRow key={image.id} image={image} client={client} />
              ))}
            </tbody>
          </table>
        </div>
      )}
    </Page>
  );
}

function ImageRow({ image, client }: { image: ImageInfo; client: RouteContext['client'] }) {
  // The list does not carry version counts; each row asks once (images are few).
  const versions = useQuery(
    client,
    imageEndpoints.listVersions,
    { params: { id: image.id } },
    { pollMs: 0 },
  );
  return (
    <tr>
      <td>
        <Link to={`/images/${encodeURIComponent(image.name)}`}>{image.name}</Link>
      </td>
      <td>{image.kind}</td>
      <td>{image.release ? image.release.version : <span className="muted">none yet</span>}</td>
      <td>{versions.data ? versions.data.versions.length : '…'}</td>
      <td className="muted">{image.description}</td>
    </tr>
  );
}

type VersionAction = 'publish' | 'release' | 'retire';

/** One image: its versions with what each adds over its parent, and publish/release/retire. */
export function ImagePage({ client, session, id }: RouteContext & { id: string }) {
  const image = useQuery(client, imageEndpoints.getImage, { params: { id } });
  const publishers = useQuery(client, imageEndpoints.listPublishers, {}, { pollMs: 0 });
  const [acting, setActing] = useState<{ action: VersionAction; v: ImageVersionInfo } | null>(null);
  const act = useMutation(async (action: VersionAction, v: ImageVersionInfo) => {
    const params = { id: v.imageId, version: v.version };
    if (action === 'publish') await client.call(imageEndpoints.publishVersion, { params });
    else if (action === 'retire') await client.call(imageEndpoints.retireVersion, { params });
    else
      await client.call(imageEndpoints.releaseVersion, {
        params: { id: v.imageId },
        body: { versionId: v.id },
      });
    return true;
  });
  const keyNames = new Map((publishers.data?.publishers ?? []).map((p) => [p.keyid, p.name]));
  const data = image.data;
  const mayAct = can(session.role, 'operator');
  const versions = [...(data?.versions ?? [])].sort((a, b) => b.createdAt - a.createdAt);

  return (
    <Page title={data ? `Image ${data.name}` : `Image ${id}`} busy={image.loading}>
      <p>
        <Link to="/images">← All images</Link>
      </p>
      <ErrorText error={image.error} />
      {data && (
        <>
          <section className="card" aria-labelledby="image-facts">
            <h2 id="image-facts">About</h2>
            <dl className="facts">
              <dt>Kind</dt>
              <dd>
                {data.kind === 'system'
                  ? 'System (a VM boots it)'
                  : 'App layer (attached read-only)'}
              </dd>
              <dt>Released version</dt>
              <dd>
                {data.release
                  ? `${data.release.version}: every device on ${data.name} without a rollout gets it`
                  : 'none yet: devices on it get nothing until a version is released'}
              </dd>
              {data.description && (
                <>
                  <dt>Description</dt>
                  <dd>{data.description}</dd>
                </>
              )}
            </dl>
          </section>
          <h2>Versions</h2>
          {versions.length === 0 ? (
            <Empty>
              No versions yet. Push one with{' '}
              <code>bulkhead image push --name {data.name} --version 1 DISK</code>.
            </Empty>
          ) : (
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Version</th>
                    <th scope="col">State</th>
                    <th scope="col">Size</th>
                    <th scope="col">Chunks</th>
                    <th scope="col">Adds over its parent</th>
                    <th scope="col">Signed by</th>
                    <th scope="col">Created</th>
                    <th scope="col">Published</th>
                    {mayAct && <th scope="col">Actions</th>}
                  </tr>
                </thead>
                <tbody>
                  {versions.map((v) => (
                    <tr key={v.id}>
                      <th scope="row">
                        {v.version} {v.released && <Badge value="released" />}
                      </th>
                      <td>
                        <Badge value={v.state} />
                      </td>
                      <td>{bytes(v.size)}</td>
                      <td>{v.chunks.toLocaleString()}</td>
                      <td>
                        {v.parentVersion === null ? (
                          <>
                            {count(v.addedChunks, 'chunk')}, {bytes(v.addedBytes)}{' '}
                            <span className="muted">(no parent: all of it)</span>
                          </>
                        ) : (
                          <>
                            {count(v.addedChunks, 'chunk')}, {bytes(v.addedBytes)}
                            <span className="muted hint">
                              what a PC holding {v.parentVersion} downloads
                            </span>
                          </>
                        )}
                      </td>
                      <td>
                        {v.signatures.length === 0
                          ? '—'
                          : v.signatures
                              .map((s) => keyNames.get(s.keyid) ?? `${s.keyid.slice(0, 12)}…`)
                              .join(', ')}
                      </td>
                      <td>{dateTime(v.createdAt)}</td>
                      <td>{dateTime(v.publishedAt)}</td>
                      {mayAct && (
                        <td className="actions">
                          {v.state === 'draft' && (
                            <button
                              type="button"
                              onClick={() => setActing({ action: 'publish', v })}
                            >
                              Publish
                            </button>
                          )}
                          {v.state === 'published' && !v.released && (
                            <button
                              type="button"
                              onClick={() => setActing({ action: 'release', v })}
                            >
                              Release
                            </button>
                          )}
                          {v.state === 'published' && (
                            <Link
                              to={withQuery('/rollouts/new', { version: v.id })}
                              className="button"
                            >
                              Roll out
                            </Link>
                          )}
                          {v.state !== 'retired' && !v.released && (
                            <button
                              type="button"
                              onClick={() => setActing({ action: 'retire', v })}
                            >
                              Retire
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
        </>
      )}
      {acting && data && (
        <ConfirmDialog
          title={`${title(acting.action)} ${data.name}@${acting.v.version}?`}
          confirmLabel={title(acting.action)}
          danger={acting.action === 'retire'}
          {...(acting.action === 'retire'
            ? { typeToConfirm: `${data.name}@${acting.v.version}` }
            : {})}
          busy={act.busy}
          error={act.error}
          onCancel={() => {
            act.clearError();
            setActing(null);
          }}
          onConfirm={() =>
            void act.mutate(acting.action, acting.v).then((ok) => {
              if (!ok) return;
              setActing(null);
              image.reload();
            })
          }
        >
          <p>{consequence(acting.action, data, acting.v)}</p>
        </ConfirmDialog>
      )}
    </Page>
  );
}

function title(action: VersionAction): string {
  return action.charAt(0).toUpperCase() + action.slice(1);
}

function consequence(action: VersionAction, image: ImageDetail, v: ImageVersionInfo): string {
  switch (action) {
    case 'publish':
      return image.release === null
        ? `It can go out in rollouts, and as ${image.name} has no released version yet, it becomes the released one: every device on ${image.name} without a rollout gets ${v.version}.`
        : `It can then go out in a rollout or be released; devices keep ${image.release.version} until then.`;
    case 'release':
      return `Every device on ${image.name} without a rollout gets ${v.version}${
        image.release ? ` instead of ${image.release.version}` : ''
      }, devices enrolled later included.`;
    case 'retire':
      return `No PC may install ${image.name}@${v.version} any more, and no rollout can take it. This cannot be undone.`;
  }
}
