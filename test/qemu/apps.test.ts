// Optional apps on real QEMU (TCG) with the test guest, Center and Engine as real processes: the
// VM runs v1 with no app; the administrator adds app `editor` for this device with the CLI and
// the guest sees /apps/editor, Engine having downloaded the app's chunks alone; a rollout of a
// broken editor (its /check fails, so the VM's health check does) rolls the app alone back; a
// good editor rollout completes; removing the app takes it out of the guest, downloading
// nothing. The steps share one VM and run in order.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage, type ImportResult } from '../../src/image/index.ts';
import {
  cliJson,
  freePort,
  startCenterProcess,
  killProcess,
  type CenterProcess,
} from '../support/cli.ts';
import { makeKeys } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));

interface VersionName {
  id: string;
  image: string;
  version: string;
}
interface DeviceEvent {
  id: string;
  type: string;
  data: Record<string, unknown> & {
    volumes?: { role: string; image: string; version: string; versionId: string }[];
  };
}
interface DeviceDetail {
  profiles: { name: string; current: { system: VersionName | null; apps: VersionName[] } | null }[];
  apps: { name: string }[];
  recentEvents: DeviceEvent[];
}

const w = {} as {
  dir: string;
  url: string;
  token: string;
  storeDir: string;
  engineData: string;
  deviceId: string;
  os: ImportResult;
  editor: Record<string, ImportResult>;
  guest: Awaited<ReturnType<typeof testGuest>>['guest'];
};
let center: CenterProcess | undefined;
let engine: ChildProcess | undefined;
// Looks at the VM Engine owns without taking its QMP connection.
const driver = createQemuDriver({ observeOnly: true });

async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${w.url}/api/v1/admin${path}`, {
    method,
    headers: {
      authorization: `Bearer ${w.token}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
  return (text ? JSON.parse(text) : null) as T;
}

/** Runs the CLI against Center as the administrator. */
const cli = <T>(args: string[]) =>
  cliJson([...args, '--center', w.url], { BULKHEAD_TOKEN: w.token }) as Promise<T>;

const device = () => api<DeviceDetail>('GET', `/devices/${w.deviceId}`);

/** What the work VM last reported running: `image@version` of its system and of each app. */
async function running(): Promise<string[] | undefined> {
  const current = (await device()).profiles.find((p) => p.name === 'work')?.current;
  if (!current?.system) return undefined;
  return [current.system, ...current.apps].map((v) => `${v.image}@${v.version}`);
}

/** Waits for `fn` to give something; a failing call (VM booting) counts as not yet. */
async function until<T>(what: string, fn: () => Promise<T | undefined | false>): Promise<T> {
  try {
    return await waitFor(what, () => fn().catch(() => undefined), { intervalMs: 500 });
  } catch (err) {
    const latest = await device()
      .then((d) =>
        d.recentEvents
          .slice(0, 8)
          .map((e) => `${e.type} ${JSON.stringify(e.data['reason'] ?? e.data['state'] ?? '')}`)
          .join('; '),
      )
      .catch(() => 'none (Center did not answer)');
    throw new Error(`${(err as Error).message}; the device's latest events: ${latest}`);
  }
}

/** Waits until the VM runs exactly `release` (system first) as Center sees it. */
async function untilRunning(release: string[]): Promise<void> {
  await until(`Center to show the VM on ${release.join(' + ')}`, async () => {
    const r = await running();
    return r !== undefined && r.join() === release.join();
  });
}

function guestRun(argv: string[]): Promise<{ exitCode: number; stdout: string }> {
  return runInGuest(driver, 'work', volumeLayout(w.engineData, 'work').runDir, argv);
}

/** The `staged` event of the transaction to exactly `release`, newer than the `seen` ids. */
async function stagedFor(release: string[], seen: Set<string>): Promise<DeviceEvent> {
  return until(`the staged report of ${release.join(' + ')}`, async () =>
    (await device()).recentEvents.find(
      (e) =>
        e.type === 'staged' &&
        !seen.has(e.id) &&
        (e.data.volumes ?? []).map((v) => `${v.image}@${v.version}`).join() === release.join(),
    ),
  );
}

async function eventIds(): Promise<Set<string>> {
  return new Set((await device()).recentEvents.map((e) => e.id));
}

async function push(name: string, version: string, flags: string[]): Promise<void> {
  await cli(['image', 'push', '--store', w.storeDir, name, version, ...flags]);
}

before(async () => {
  await requireQemu();
  const { guest, volumes } = await testGuest();
  w.guest = guest;
  w.dir = await mkdtemp(join(tmpdir(), 'bulkhead-apps-'));
  const port = await freePort();
  w.url = `http://127.0.0.1:${port}`;
  w.engineData = join(w.dir, 'engine');
  w.storeDir = join(w.dir, 'store');
  const keys = await makeKeys(w.dir);
  const store = new DirectoryStore(w.storeDir);
  const common = { store, key: keys.key, tempDir: join(w.dir, 'tmp') };
  w.os = await importImage({
    ...common,
    name: 'os',
    file: volumes.system.v1,
    version: '1',
    parent: null,
  });
  w.editor = {};
  for (const [version, parent] of [
    ['1', null],
    ['2-broken', '1'],
    ['2', '1'],
  ] as const) {
    w.editor[version] = await importImage({
      ...common,
      name: 'editor',
      file: volumes.editor[version],
      version,
      parent,
    });
  }
  center = await startCenterProcess(
    { after: () => {} },
    ['--data', join(w.dir, 'center'), '--listen', `127.0.0.1:${port}`, '--public-url', w.url],
    { node: nodeBin },
  );
  const admin = center.info.initialAdmin!;
  const res = await fetch(`${w.url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: admin.username, password: admin.password }),
  });
  w.token = ((await res.json()) as { token: string }).token;
  await api('POST', '/publishers', {
    name: 'test-publisher',
    publicKey: await readFile(keys.publicPath, 'utf8'),
  });
});

after(async () => {
  const e = engine;
  engine = undefined;
  await killProcess(e);
  await driver.attach('work', volumeLayout(w.engineData, 'work').runDir).catch(() => {});
  await driver.stop('work', { timeoutMs: 5000 }).catch(() => {});
  await center?.stop();
  if (w.dir) await rm(w.dir, { recursive: true, force: true });
});

test('1. the VM runs os@1 with no optional app; the profile offers editor', async () => {
  await push('os', '1', ['--release']);
  await push('editor', '1', ['--kind', 'app', '--release']);
  await cli(['apps', 'create', '--name', 'editor', '--image', 'editor', '--title', 'Editor']);
  const { images } = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
  const { apps } = await api<{ apps: { id: string; name: string }[] }>('GET', '/apps');
  const group = await api<{ id: string }>('POST', '/groups', { name: 'lab' });
  await api('POST', '/profiles', {
    name: 'work',
    systemImageId: images.find((i) => i.name === 'os')!.id,
    apps: [{ appId: apps.find((a) => a.name === 'editor')!.id, mode: 'optional' }],
    isolation: { network: 'none' },
    // A TCG guest on a busy machine can take minutes to answer; a broken app fails its check
    // at once, so the bound costs nothing when the test passes.
    healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
    cpus: 1,
    memoryMib: 256,
  });
  const token = await api<{ token: string }>('POST', '/enrolment-tokens', { groupId: group.id });
  const enrolled = (await cliJson([
    'engine',
    'enroll',
    '--center',
    w.url,
    '--token',
    token.token,
    '--data',
    w.engineData,
  ])) as { deviceId: string };
  w.deviceId = enrolled.deviceId;
  await cli(['devices', 'assign', w.deviceId, '--profile', 'work']);
  const e = spawn(
    nodeBin,
    [
      BIN,
      'engine',
      'run',
      '--data',
      w.engineData,
      '--kernel',
      w.guest.kernel,
      '--initrd',
      w.guest.initrd,
      '--cmdline',
      w.guest.cmdline,
      '--poll-interval',
      '2',
      '--log-level',
      'info',
    ],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  e.stderr!.on('data', (b: Buffer) => process.stderr.write(`[engine] ${b.toString()}`));
  engine = e;
  await untilRunning(['os@1']);
  assert.notEqual((await guestRun(['/bin/test', '-e', '/apps/editor'])).exitCode, 0);
});

test('2. adding editor for this device mounts /apps/editor; only its chunks are downloaded', async () => {
  const seen = await eventIds();
  const d = await cli<DeviceDetail>(['devices', 'apps', w.deviceId, '--add', 'editor']);
  assert.deepEqual(
    d.apps.map((a) => a.name),
    ['editor'],
  );
  await untilRunning(['os@1', 'editor@1']);
  const app = await guestRun(['/bin/cat', '/apps/editor/app.json']);
  assert.equal(app.stdout, '{"name":"editor","version":"1"}\n');
  assert.equal((await guestRun(['/usr/libexec/health-check'])).exitCode, 0);

  const staged = await stagedFor(['os@1', 'editor@1'], seen);
  const downloaded = staged.data['downloadedBytes'] as number;
  const editor = w.editor['1']!;
  // What the store holds for editor@1 (its compressed new chunks and its index), plus room for
  // its manifest: the app's bytes, and far fewer than the base's chunks.
  const appBytes = editor.storedBytes + editor.indexBytes + 16 * 1024;
  assert.ok(
    downloaded > 0 && downloaded <= appBytes,
    `downloaded ${downloaded} bytes; editor@1 is ${appBytes} bytes in the store`,
  );
  assert.ok(
    downloaded < w.os.storedBytes / 4,
    `downloaded ${downloaded} bytes; os@1's chunks are ${w.os.storedBytes} bytes`,
  );
});

test('3. a rollout of a broken editor rolls the app alone back; the system stays on os@1', async () => {
  await push('editor', '2-broken', ['--publish']);
  const rollout = await cli<{ id: string }>([
    'rollout',
    'create',
    '--image',
    'editor@2-broken',
    '--group',
    'lab',
    '--phases',
    '100',
    '--soak-minutes',
    '0',
    '--start',
  ]);
  const rolled = await until('the rolled-back report of editor@2-broken', async () =>
    (await device()).recentEvents.find(
      (e) =>
        e.type === 'rolled-back' &&
        (e.data.volumes ?? []).some((v) => v.image === 'editor' && v.version === '2-broken'),
    ),
  );
  assert.equal(rolled.data['reason'], 'health check command exited 1');
  const system = rolled.data.volumes!.find((v) => v.role === 'system')!;
  assert.equal(`${system.image}@${system.version}`, 'os@1');
  await untilRunning(['os@1', 'editor@1']);
  const app = await guestRun(['/bin/cat', '/apps/editor/app.json']);
  assert.equal(app.stdout, '{"name":"editor","version":"1"}\n');
  assert.match((await guestRun(['/bin/cat', '/etc/os-release'])).stdout, /VERSION_ID=1\n/);
  const halted = await until('the rollout to halt', async () => {
    const r = await api<{ state: string; stateReason: string | null }>(
      'GET',
      `/rollouts/${rollout.id}`,
    );
    return r.state === 'halted' ? r : undefined;
  });
  assert.ok(halted.stateReason, 'the rollout says why it halted');
});

test('4. a rollout of a good editor@2 completes', async () => {
  await push('editor', '2', ['--publish']);
  const rollout = await cli<{ id: string }>([
    'rollout',
    'create',
    '--image',
    'editor@2',
    '--group',
    'lab',
    '--phases',
    '100',
    '--soak-minutes',
    '0',
    '--start',
  ]);
  await untilRunning(['os@1', 'editor@2']);
  const app = await guestRun(['/bin/cat', '/apps/editor/app.json']);
  assert.equal(app.stdout, '{"name":"editor","version":"2"}\n');
  await until('the rollout to complete', async () => {
    const r = await api<{ state: string }>('GET', `/rollouts/${rollout.id}`);
    return r.state === 'completed';
  });
});

test('5. removing editor takes /apps/editor out of the guest and downloads nothing', async () => {
  const seen = await eventIds();
  const d = await cli<DeviceDetail>(['devices', 'apps', w.deviceId, '--remove', 'editor']);
  assert.deepEqual(d.apps, []);
  await untilRunning(['os@1']);
  assert.notEqual((await guestRun(['/bin/test', '-e', '/apps/editor/app.json'])).exitCode, 0);
  const staged = await stagedFor(['os@1'], seen);
  assert.equal(staged.data['downloadedBytes'], 0);
});
