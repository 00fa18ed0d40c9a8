// Center and Engine as real processes, the VM on real QEMU (TCG) with the test guest: enrol,
// publish v1 and see it run healthy, patch to v2 (only new chunks, /data kept), a broken v3
// that rolls back by itself with Center told why, lock, unlock and restart-vm sent with the CLI
// and carried out over the push channel, Engine restarting while Center is down with its
// reports arriving once Center is back, none twice, and a kill. The steps share one VM and run
// in order.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { readEngineStatus } from '../../src/engine/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage, type ImportResult } from '../../src/image/index.ts';
import {
  cliJson,
  freePort,
  killProcess,
  startCenterProcess,
  type CenterProcess,
  type CenterServeInfo,
} from '../support/cli.ts';
import { makeKeys, type Keys } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));

interface World {
  dir: string;
  port: number;
  url: string;
  token: string;
  keys: Keys;
  storeDir: string;
  versions: Record<string, ImportResult>;
  engineData: string;
  guest: Awaited<ReturnType<typeof testGuest>>['guest'];
  deviceId: string;
  imageId: string;
  versionIds: Record<string, string>;
}
const w = {} as World;
let center: CenterProcess | undefined;
let engine: ChildProcess | undefined;
// Looks at the VM Engine owns without taking its QMP connection.
const driver = createQemuDriver({ observeOnly: true });

async function startCenter(): Promise<CenterServeInfo> {
  // /metrics is not on the main listener: it gets one of its own, on loopback.
  const args = [
    '--data',
    join(w.dir, 'center'),
    '--listen',
    `127.0.0.1:${w.port}`,
    '--metrics-listen',
    '127.0.0.1:0',
  ];
  // The module's `after` stops whichever process runs last.
  center = await startCenterProcess({ after: () => {} }, [...args, '--public-url', w.url], {
    node: nodeBin,
  });
  return center.info;
}

async function stopCenter(): Promise<void> {
  const c = center;
  center = undefined;
  await c?.stop();
}

/** Starts Engine; it asks Center for news every `pollSeconds` when no push arrives. */
function startEngine(pollSeconds = 2): void {
  const c = spawn(
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
      String(pollSeconds),
      '--log-level',
      'info',
    ],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  c.stderr!.on('data', (b: Buffer) => process.stderr.write(`[engine] ${b.toString()}`));
  engine = c;
}

async function killEngine(): Promise<void> {
  const c = engine;
  engine = undefined;
  await killProcess(c);
}

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

interface CommandView {
  id: string;
  kind: string;
  state: string;
  result: { ok: boolean; message: string } | null;
}

/** The command `id` as Center shows it, once the device has settled it. */
async function settled(id: string): Promise<CommandView> {
  return until(`command ${id} to be settled at Center`, async () => {
    const { commands } = await api<{ commands: CommandView[] }>(
      'GET',
      `/devices/${w.deviceId}/commands`,
    );
    const c = commands.find((x) => x.id === id);
    return c && c.state !== 'pending' && c.state !== 'delivered' ? c : undefined;
  });
}

/** Runs the CLI against Center as the administrator. */
const cli = (args: string[]) =>
  cliJson([...args, '--center', w.url], { BULKHEAD_TOKEN: w.token }) as Promise<CommandView>;

async function metric(name: string): Promise<number> {
  const metricsUrl = center?.info.metricsUrl;
  if (!metricsUrl) throw new Error('Center runs without --metrics-listen');
  const text = await (await fetch(`${metricsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.split(' ')[1]);
}

async function vmStatus() {
  return driver.attach('work', volumeLayout(w.engineData, 'work').runDir);
}

interface DeviceDetail {
  currentVersions: Record<string, { system?: string }>;
  recentEvents: { id: string; type: string; data: Record<string, unknown> }[];
}

const device = () => api<DeviceDetail>('GET', `/devices/${w.deviceId}`);

/**
 * Waits for `fn` to give something; a failing call (Center away, VM booting) counts as not yet.
 * A wait that times out says what the device last reported, which is where the cause shows.
 */
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

async function push(version: string): Promise<void> {
  await cliJson(
    ['image', 'push', '--center', w.url, '--store', w.storeDir, 'os', version, '--release'],
    { BULKHEAD_TOKEN: w.token },
  );
  const list = await api<{ versions: { id: string; version: string }[] }>(
    'GET',
    `/images/${w.imageId || (await imageId())}/versions`,
  );
  for (const v of list.versions) w.versionIds[v.version] = v.id;
}

async function imageId(): Promise<string> {
  const { images } = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
  w.imageId = images.find((i) => i.name === 'os')!.id;
  return w.imageId;
}

function guestRun(argv: string[]): Promise<{ exitCode: number; stdout: string }> {
  return runInGuest(driver, 'work', volumeLayout(w.engineData, 'work').runDir, argv);
}

before(async () => {
  await requireQemu();
  const { guest, volumes } = await testGuest();
  w.guest = guest;
  w.dir = await mkdtemp(join(tmpdir(), 'bulkhead-e2e-'));
  w.port = await freePort();
  w.url = `http://127.0.0.1:${w.port}`;
  w.engineData = join(w.dir, 'engine');
  w.versionIds = {};
  w.imageId = '';
  w.keys = await makeKeys(w.dir);
  w.storeDir = join(w.dir, 'store');
  const store = new DirectoryStore(w.storeDir);
  const common = { store, name: 'os', key: w.keys.key, tempDir: join(w.dir, 'tmp') };
  w.versions = {
    '1': await importImage({ ...common, file: volumes.system.v1, version: '1', parent: null }),
  };
  w.versions['2'] = await importImage({
    ...common,
    file: volumes.system.v2,
    version: '2',
    parent: '1',
  });
  w.versions['3'] = await importImage({
    ...common,
    file: volumes.system['v3-broken'],
    version: '3',
    parent: '2',
  });

  const started = await startCenter();
  const admin = started.initialAdmin!;
  const res = await fetch(`${w.url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: admin.username, password: admin.password }),
  });
  w.token = ((await res.json()) as { token: string }).token;
  await api('POST', '/publishers', {
    name: 'test-publisher',
    publicKey: await readFile(w.keys.publicPath, 'utf8'),
  });
});

after(async () => {
  await killEngine();
  await driver.attach('work', volumeLayout(w.engineData, 'work').runDir).catch(() => {});
  await driver.stop('work', { timeoutMs: 5000 }).catch(() => {});
  await stopCenter();
  if (w.dir) await rm(w.dir, { recursive: true, force: true });
});

test('1. enrol; publish v1; the VM boots v1 and is healthy; Center shows the device on v1', async () => {
  await push('1');
  const group = await api<{ id: string }>('POST', '/groups', { name: 'lab' });
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: w.imageId,
    isolation: { network: 'none', encryptData: true },
    // A TCG guest on a busy machine can take minutes to answer; a broken version fails its
    // check command at once, so the bound costs nothing when the test passes.
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
  await api('PATCH', `/devices/${w.deviceId}`, { profiles: [profile.id] });
  startEngine();
  await until('Center to show the device on v1', async () =>
    Object.values((await device()).currentVersions).some((v) => v.system === w.versionIds['1']),
  );
  assert.equal((await guestRun(['/usr/libexec/health-check'])).exitCode, 0);
  assert.match((await guestRun(['/bin/cat', '/etc/os-release'])).stdout, /VERSION_ID=1\n/);
});

test('2. a file in /data survives the patch to v2, which downloads only new chunks', async () => {
  const wrote = await guestRun(['/bin/sh', '-c', 'echo precious > /data/file && sync']);
  assert.equal(wrote.exitCode, 0);
  await push('2');
  await until('Center to show the device on v2', async () =>
    Object.values((await device()).currentVersions).some((v) => v.system === w.versionIds['2']),
  );
  assert.match((await guestRun(['/bin/cat', '/etc/os-release'])).stdout, /VERSION_ID=2\n/);
  assert.equal((await guestRun(['/bin/cat', '/data/file'])).stdout, 'precious\n');
  const staged = (await device()).recentEvents.find(
    (e) => e.type === 'staged' && e.data.versionId === w.versionIds['2'],
  );
  assert.ok(staged, 'Center has the staged event of v2');
  const downloaded = staged.data.downloadedBytes as number;
  const fresh = w.versions['2']!.newBytes;
  assert.ok(
    downloaded > 0 && downloaded < fresh + 256 * 1024,
    `downloaded ${downloaded} bytes; the chunks new in v2 are ${fresh} bytes`,
  );
});

test('3. a broken v3 rolls back to v2 by itself; Center has the reason and the device on v2', async () => {
  await push('3');
  const rolled = await until('the rolled-back report at Center', async () =>
    (await device()).recentEvents.find(
      (e) => e.type === 'rolled-back' && e.data.versionId === w.versionIds['3'],
    ),
  );
  assert.equal(rolled.data.reason, 'health check command exited 1');
  const d = await device();
  assert.ok(Object.values(d.currentVersions).some((v) => v.system === w.versionIds['2']));
  assert.match((await guestRun(['/bin/cat', '/etc/os-release'])).stdout, /VERSION_ID=2\n/);
  assert.equal((await guestRun(['/bin/cat', '/data/file'])).stdout, 'precious\n');
});

test('4. lock, unlock and restart-vm from the CLI reach Engine over the push channel and act', async () => {
  // Engine now asks Center for news once an hour: what reaches it here came over the push
  // channel (and each contact delivers the command's result in the same exchange).
  await killEngine();
  // Center counts the killed Engine's connection until it sees the socket close; only a count
  // that went to zero and back up is the new Engine's channel.
  await until("Center to drop the killed Engine's push channel", async () =>
    (await metric('bulkhead_center_push_connections')) === 0 ? true : undefined,
  );
  startEngine(3600);
  await until('Engine to hold its push channel', async () =>
    (await metric('bulkhead_center_push_connections')) >= 1 ? true : undefined,
  );
  assert.equal((await vmStatus()).state, 'running');

  const lock = await cli(['devices', 'lock', w.deviceId]);
  assert.equal(lock.state, 'pending');
  const locked = await settled(lock.id);
  assert.equal(locked.state, 'done', JSON.stringify(locked.result));
  assert.match(locked.result!.message, /every VM is stopped \(stopped now: work\).*locked/);
  assert.equal((await vmStatus()).state, 'stopped', 'done means the VM is stopped');
  // Engine's reconciler passes every 5 s; after two of them the locked VM is still off.
  await new Promise((r) => setTimeout(r, 12_000));
  assert.equal((await vmStatus()).state, 'stopped', 'a locked VM does not start again');

  const unlock = await cli(['devices', 'unlock', w.deviceId]);
  assert.equal((await settled(unlock.id)).state, 'done');
  await until('the VM to run again after the unlock', async () => {
    if ((await vmStatus()).state !== 'running') return undefined;
    return (await guestRun(['/bin/cat', '/etc/os-release'])).stdout.includes('VERSION_ID=2');
  });

  const before = (await vmStatus()).pid;
  const restart = await cli(['devices', 'restart-vm', w.deviceId, '--vm', 'work']);
  const restarted = await settled(restart.id);
  assert.equal(restarted.state, 'done', JSON.stringify(restarted.result));
  const after = await vmStatus();
  assert.equal(after.state, 'running');
  assert.notEqual(after.pid, before, 'a new QEMU process runs the VM');
  assert.equal((await guestRun(['/bin/cat', '/data/file'])).stdout, 'precious\n');
});

test('5. Center down: Engine restarts, the VM keeps running v2; reports arrive later, none twice', async () => {
  await stopCenter();
  await killEngine();
  const restarted = Date.now();
  startEngine();
  // The VM was never stopped, and Engine (restarted, offline) leaves it running on v2: looked at
  // once the new Engine is up and has found Center away.
  await until('the restarted Engine to miss Center', async () => {
    const { connectivity } = await readEngineStatus(w.engineData);
    return (connectivity.lastError?.at ?? 0) >= restarted;
  });
  assert.match((await guestRun(['/bin/cat', '/etc/os-release'])).stdout, /VERSION_ID=2\n/);
  // Something worth reporting happens while Center is away: the VM is shut down in the guest
  // and Engine starts it again on its current version.
  await guestRun(['/sbin/shutdown']).catch(() => {});
  await until('the VM to run again', async () => {
    await driver.attach('work', volumeLayout(w.engineData, 'work').runDir);
    const s = await driver.status('work');
    if (s.state !== 'running') return false;
    return (await guestRun(['/bin/cat', '/etc/os-release'])).stdout.includes('VERSION_ID=2');
  });
  await startCenter();
  await until('the offline vm-state report at Center', async () =>
    (await device()).recentEvents.some((e) => e.type === 'vm-state' && e.data.state === 'running'),
  );
  const ids = (await device()).recentEvents.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, 'no event reached Center twice');
});

test('6. kill from the CLI stops every VM; Center has it done, then cuts the PC off', async () => {
  await until('Engine to hold its push channel', async () =>
    (await metric('bulkhead_center_push_connections')) >= 1 ? true : undefined,
  );
  const kill = await cli(['devices', 'kill', w.deviceId, '--yes']);
  const killed = await settled(kill.id);
  assert.equal(killed.state, 'done', JSON.stringify(killed.result));
  assert.match(killed.result!.message, /every VM is stopped \(stopped now: work\).*killed/);
  assert.equal((await vmStatus()).state, 'stopped');
  const detail = await api<{ state: string }>('GET', `/devices/${w.deviceId}`);
  assert.equal(detail.state, 'killed');
});
