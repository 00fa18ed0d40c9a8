import { useState, type FormEvent } from 'react';
import {
  fleetEndpoints,
  imageEndpoints,
  type Profile,
  type ProfileKindName,
} from '../../../../src/protocol/index.ts';
import { can, useMutation, useQuery } from '../api.ts';
import { Badge, count, dateTime, Empty, ErrorText, Page } from '../components.tsx';
import type { RouteContext } from '../page-context.ts';
import { Link, navigate, withQuery } from '../router.tsx';
import { Field } from '../parts.tsx';

/** VM profiles: what a VM on a PC is, runs and may reach. */
export function Profiles({ client, session }: RouteContext) {
  const profiles = useQuery(client, fleetEndpoints.listProfiles, {});
  const images = useQuery(client, imageEndpoints.listImages, { query: {} }, { pollMs: 0 });
  const isAdmin = can(session.role, 'admin');
  const imageNames = new Map((images.data?.images ?? []).map((i) => [i.id, i.name]));
  const list = profiles.data?.profiles ?? [];
  return (
    <Page title="Profiles" busy={profiles.loading}>
      <ErrorText error={profiles.error} />
      {profiles.data && list.length === 0 && (
        <Empty>
          No profiles yet. A profile says what a VM runs (its system image and apps), how it is
          isolated and how long it may stay offline
          {isAdmin ? ': create the first one below.' : '.'}
        </Empty>
      )}
      {list.length > 0 && (
        <div className="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Kind</th>
                <th scope="col">System image</th>
                <th scope="col">Apps</th>
                <th scope="col">Network</th>
                <th scope="col">Lease</th>
                <th scope="col">Devices</th>
              </tr>
            </thead>
            <tbody>
              {list.map((p) => (
                <tr key={p.id}>
                  <th scope="row">
                    <Link to={`/profiles/${p.id}`}>{p.name}</Link>
                  </th>
                  <td>{p.kind}</td>
                  <td>{imageNames.get(p.systemImageId) ?? '…'}</td>
                  <td>{p.apps.length}</td>
                  <td>{networkSentence(p)}</td>
                  <td>{count(p.leaseDays, 'day')}</td>
                  <td>
                    <Link to={withQuery('/devices', { profileId: p.id })}>
                      {p.devices.toLocaleString()}
                    </Link>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      {isAdmin && images.data && (
        <CreateProfileForm
          client={client}
          images={images.data.images
            .filter((i) => i.kind === 'system')
            .map((i) => ({ id: i.id, name: i.name }))}
        />
      )}
    </Page>
  );
}

/** One profile: its isolation policy and firmware as sentences, and its apps. */
export function ProfilePage({ client, id }: RouteContext & { id: string }) {
  const profile = useQuery(client, fleetEndpoints.getProfile, { params: { id } });
  const images = useQuery(client, imageEndpoints.listImages, { query: {} }, { pollMs: 0 });
  const apps = useQuery(client, fleetEndpoints.listApps, {}, { pollMs: 0 });
  const imageNames = new Map((images.data?.images ?? []).map((i) => [i.id, i.name]));
  const appNames = new Map((apps.data?.apps ?? []).map((a) => [a.id, a.displayName]));
  const p = profile.data;
  return (
    <Page title={p ? `Profile ${p.name}` : 'Profile'} busy={profile.loading}>
      <p>
        <Link to="/profiles">← All profiles</Link>
      </p>
      <ErrorText error={profile.error} />
      {p && (
        <div className="grid">
          <section className="card" aria-labelledby="profile-vm">
            <h2 id="profile-vm">The VM</h2>
            <dl className="facts">
              <dt>Kind</dt>
              <dd>
                {p.kind === 'work'
                  ? 'Work: managed by Center, its data key escrowed'
                  : "Personal: the user's own VM; Center never sees its data key"}
              </dd>
              <dt>System image</dt>
              <dd>
                {imageNames.has(p.systemImageId) ? (
                  <Link to={`/images/${encodeURIComponent(imageNames.get(p.systemImageId)!)}`}>
                    {imageNames.get(p.systemImageId)}
                  </Link>
                ) : (
                  '…'
                )}
                {p.personalImageIds.length > 1 &&
                  ` (the user may choose: ${p.personalImageIds
                    .map((i) => imageNames.get(i) ?? '…')
                    .join(', ')})`}
              </dd>
              <dt>Resources</dt>
              <dd>
                {count(p.cpus, 'CPU')}, {memory(p.memoryMib)} of memory
              </dd>
              <dt>Devices</dt>
              <dd>
                <Link to={withQuery('/devices', { profileId: p.id })}>
                  {count(p.devices, 'device')}
                </Link>
              </dd>
              {p.description && (
                <>
                  <dt>Description</dt>
                  <dd>{p.description}</dd>
                </>
              )}
            </dl>
          </section>
          <section className="card" aria-labelledby="profile-policy">
            <h2 id="profile-policy">Policy</h2>
            <ul className="sentences">
              {policySentences(p).map((s) => (
                <li key={s}>{s}</li>
              ))}
            </ul>
          </section>
          <section className="card" aria-labelledby="profile-apps">
            <h2 id="profile-apps">Apps</h2>
            {p.apps.length === 0 ? (
              <p className="muted">
                {p.kind === 'personal' ? 'A personal VM has no managed apps.' : 'No apps.'}
              </p>
            ) : (
              <ul className="sentences">
                {p.apps.map((a) => (
                  <li key={a.appId}>
                    {appNames.get(a.appId) ?? '…'} <Badge value={a.mode} />
                    <span className="hint">
                      {a.mode === 'default'
                        ? 'every device with the profile gets it'
                        : p.userChoosesApps
                          ? 'chosen per device, by an operator or the PC’s user'
                          : 'chosen per device by an operator'}
                    </span>
                  </li>
                ))}
              </ul>
            )}
          </section>
        </div>
      )}
      {p && <p className="muted">Last changed {dateTime(p.updatedAt)}.</p>}
    </Page>
  );
}

function networkSentence(p: Profile): string {
  const { network, allowedEndpoints } = p.isolation;
  if (network === 'nat') return 'Internet through NAT';
  if (network === 'none') return 'Network: none';
  return allowedEndpoints.length === 0
    ? 'Network: only these endpoints: none yet'
    : `Network: only these endpoints: ${allowedEndpoints.map((e) => `${e.host}:${e.port}`).join(', ')}`;
}

function memory(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

/** The profile's isolation, firmware, health check and lease as sentences a person reads. */
export function policySentences(p: Profile): string[] {
  const i = p.isolation;
  const m = p.machine;
  const firmware =
    m.firmware === 'uefi'
      ? `Firmware: UEFI${m.secureBoot ? ' with Secure Boot' : ''}${m.tpm ? `${m.secureBoot ? ' and' : ' with'} a TPM` : ''}`
      : `Firmware: BIOS${m.tpm ? ' with a TPM' : ''}`;
  const check = p.healthCheck;
  const health = [
    `the guest agent answers within ${check.timeoutSeconds} s`,
    ...(check.command ? [`\`${check.command.join(' ')}\` exits 0`] : []),
    ...(check.screen ? ['its screen is not blank'] : []),
  ];
  return [
    networkSentence(p),
    i.encryptData ? 'Data volume encrypted' : 'Data volume not encrypted',
    i.clipboard ? "Clipboard: shared with the PC's other VMs" : 'Clipboard: off',
    i.usbDevices.length === 0 ? 'USB: none' : `USB: only ${i.usbDevices.join(', ')}`,
    firmware,
    `Guest: ${m.os === 'windows' ? 'Windows' : 'Linux'} on ${m.devices === 'virtio' ? 'paravirtual (virtio) devices' : 'compatible devices (AHCI disks, an e1000 network card)'}`,
    ...(i.requireTpm ? ['Runs only on a PC whose Engine seals its keys with a TPM'] : []),
    `Lease: ${count(p.leaseDays, 'day')} offline; past that without contact the VM does not start`,
    `Healthy after an update when ${health.length > 1 ? `${health.slice(0, -1).join(', ')} and ${health.at(-1)}` : health[0]}; otherwise it rolls back`,
    p.resetPolicy === 'on-boot'
      ? 'System changes are discarded at every boot'
      : 'System changes are discarded at each update',
  ];
}

function CreateProfileForm(props: {
  client: RouteContext['client'];
  images: { id: string; name: string }[];
}) {
  const [name, setName] = useState('');
  const [systemImageId, setSystemImageId] = useState('');
  const [kind, setKind] = useState<ProfileKindName>('work');
  const [leaseDays, setLeaseDays] = useState('30');
  const [cpus, setCpus] = useState('2');
  const [memoryMib, setMemoryMib] = useState('4096');
  const create = useMutation(() =>
    props.client.call(fleetEndpoints.createProfile, {
      body: {
        name,
        systemImageId,
        kind,
        leaseDays: Number(leaseDays),
        cpus: Number(cpus),
        memoryMib: Number(memoryMib),
      },
    }),
  );
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const created = await create.mutate();
    if (created) navigate(`/profiles/${created.id}`);
  };
  return (
    <section className="card" aria-labelledby="create-profile">
      <h2 id="create-profile">Create a profile</h2>
      {props.images.length === 0 ? (
        <p className="muted">
          There is no system image yet: push one with <code>bulkhead image push</code> first.
        </p>
      ) : (
        <form onSubmit={(e) => void submit(e)}>
          <div className="form-row">
            <Field label="Name" hint="The VM's name on the PC: lower-case, e.g. work">
              {(id) => (
                <input id={id} value={name} required onChange={(e) => setName(e.target.value)} />
              )}
            </Field>
            <Field label="System image">
              {(id) => (
                <select
                  id={id}
                  value={systemImageId}
                  required
                  onChange={(e) => setSystemImageId(e.target.value)}
                >
                  <option value="">Choose a system image…</option>
                  {props.images.map((i) => (
                    <option key={i.id} value={i.id}>
                      {i.name}
                    </option>
                  ))}
                </select>
              )}
            </Field>
            <Field label="Kind">
              {(id) => (
                <select
                  id={id}
                  value={kind}
                  onChange={(e) => setKind(e.target.value as ProfileKindName)}
                >
                  <option value="work">work (managed)</option>
                  <option value="personal">personal (the user&apos;s own)</option>
                </select>
              )}
            </Field>
            <Field label="Lease (days offline)">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={1}
                  max={365}
                  required
                  value={leaseDays}
                  onChange={(e) => setLeaseDays(e.target.value)}
                />
              )}
            </Field>
            <Field label="CPUs">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={1}
                  max={64}
                  required
                  value={cpus}
                  onChange={(e) => setCpus(e.target.value)}
                />
              )}
            </Field>
            <Field label="Memory (MiB)">
              {(id) => (
                <input
                  id={id}
                  type="number"
                  min={64}
                  step={64}
                  required
                  value={memoryMib}
                  onChange={(e) => setMemoryMib(e.target.value)}
                />
              )}
            </Field>
          </div>
          <p className="muted">
            It starts with the defaults: internet through NAT, no clipboard, no USB, BIOS. Change
            the policy with <code>bulkhead profiles edit</code>.
          </p>
          <ErrorText error={create.error} />
          <button type="submit" className="primary" disabled={create.busy}>
            Create profile
          </button>
        </form>
      )}
    </section>
  );
}
