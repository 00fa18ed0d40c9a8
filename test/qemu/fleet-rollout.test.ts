// A fleet against one Center process: two Engines with real QEMU VMs (the busybox test guest)
// and four `sim` Engines running the same Engine code, all enrolled with one token into one
// group. A good v2 goes through every phase of its rollout to completion (every device healthy
// on v2); a broken v3 (its health check fails on the real guest) halts its rollout by itself
// after the first phase, with the reason at the API and the CLI, no device beyond that phase
// touched, and the failed device back on v2 with the reason in its trail. Every admin action
// of the test is then found in the audit trail, one by one. The steps run in order.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { bucketOf } from '../../src/center/rollouts/index.ts';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import {
  cliJson,
  freePort,
  killProcess,
  runCli,
  startCenterProcess,
  type CenterProcess,
} from '../support/cli.ts';
import { makeKeys } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));

interface Pc {
  name: string;
  kind: 'qemu' | 'sim';
  dataDir: string;
  id: string;
  engine?: ChildProcess;
}

const w = {
  dir: '',
  url: '',
  token: '',
  adminId: '',
  storeDir: '',
  imageId: '',
  versionIds: {} as Record<string, string>,
  groupId: '',
  pcs: [] as Pc[],
  /** What this test did as the administrator, as the audit trail should name it. */
  actions: [] as { action: string; targetId: string | null }[],
};
let center: CenterProcess | undefined;
let guest: Awaited<ReturnType<typeof testGuest>>['guest'];
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

const env = () => ({ BULKHEAD_TOKEN: w.token });
const cli = (args: string[]) => cliJson([...args, '--center', w.url], env());

function startEngine(pc: Pc): void {
  const args =
    pc.kind === 'qemu'
      ? ['--kernel', guest.kernel, '--initrd', guest.initrd, '--cmdline', guest.cmdline]
      : ['--hypervisor', 'sim'];
  const child = spawn(
    nodeBin,
    [BIN, 'engine', 'run', '--data', pc.dataDir, ...args, '--poll-interval', '2'],
    { env: { ...process.env, BULKHEAD_ACCEL: 'tcg' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  child.stderr!.on('data', (b: Buffer) => {
    const text = b.toString();
    if (/"level":(40|50|60)/.test(text)) process.stderr.write(`[${pc.name}] ${text}`);
  });
  pc.engine = child;
}

interface DeviceItem {
  id: string;
  name: string;
  profiles: { current: { version: string } | null }[];
}

/** Each device's system version by name, as Center last heard it healthy. */
async function versions(): Promise<Map<string, string | undefined>> {
  const { devices } = await api<{ devices: DeviceItem[] }>(
    'GET',
    `/devices?groupId=${w.groupId}&limit=500`,
  );
  return new Map(devices.map((d) => [d.name, d.profiles[0]?.current?.version]));
}

async function allOn(version: string): Promise<void> {
  await waitFor(
    `every device to run os@${version}`,
    async () => {
      const v = await versions().catch(() => new Map());
      return w.pcs.every((pc) => v.get(pc.name) === version) ? true : undefined;
    },
    { intervalMs: 1000 },
  );
}

interface RolloutView {
  id: string;
  state: string;
  stateReason: string | null;
  currentPhase: number;
}

interface TrailPage {
  devices: {
    deviceId: string;
    device: string;
    phase: number;
    status: string;
    reason: string | null;
    trail: { type: string; reason: string | null }[];
  }[];
  next: string | null;
}

/**
 * Creates a pending rollout of `version` in phases 50 % → 100 % and starts it once its first
 * phase holds exactly one of the QEMU devices. Phase membership is a hash of the rollout's id
 * and the device's (bucket.ts), drawn anew by each rollout, so a draw that does not fit is
 * aborted (audited like any action) and drawn again.
 */
async function rolloutWithOneQemuFirst(version: string, soakMinutes: number) {
  const qemu = w.pcs.filter((pc) => pc.kind === 'qemu');
  for (let draw = 1; draw <= 40; draw++) {
    const r = (await cli([
      'rollout',
      'create',
      '--image',
      `os@${version}`,
      '--group',
      'fleet',
      '--phases',
      '50,100',
      '--soak-minutes',
      String(soakMinutes),
      '--failure-threshold',
      '0',
    ])) as RolloutView;
    w.actions.push({ action: 'rollout.create', targetId: r.id });
    const first = qemu.filter((pc) => bucketOf(r.id, pc.id) < 5000);
    if (first.length === 1) {
      const started = (await cli(['rollout', 'resume', r.id])) as RolloutView;
      w.actions.push({ action: 'rollout.resume', targetId: r.id });
      assert.equal(started.state, 'running');
      return { rollout: r, firstQemu: first[0]! };
    }
    await cli([
      'rollout',
      'abort',
      r.id,
      '--reason',
      'drawn again: the test wants one QEMU PC first',
    ]);
    w.actions.push({ action: 'rollout.abort', targetId: r.id });
  }
  throw new Error('no draw put exactly one QEMU device in the first phase in 40 tries');
}

async function trail(rolloutId: string): Promise<TrailPage> {
  return api<TrailPage>('GET', `/rollouts/${rolloutId}/devices?limit=200`);
}

before(async () => {
  await requireQemu();
  const built = await testGuest();
  guest = built.guest;
  const { volumes } = built;
  w.dir = await mkdtemp(join(tmpdir(), 'bulkhead-fleet-'));
  const port = await freePort();
  w.url = `http://127.0.0.1:${port}`;
  const keys = await makeKeys(w.dir);
  w.storeDir = join(w.dir, 'store');
  const store = new DirectoryStore(w.storeDir);
  const common = { store, name: 'os', key: keys.key, tempDir: join(w.dir, 'tmp') };
  await importImage({ ...common, file: volumes.system.v1, version: '1', parent: null });
  await importImage({ ...common, file: volumes.system.v2, version: '2', parent: '1' });
  await importImage({ ...common, file: volumes.system['v3-broken'], version: '3', parent: '2' });

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
  w.actions.push({ action: 'session.create', targetId: null });
  const publisher = await api<{ keyid: string }>('POST', '/publishers', {
    name: 'test-publisher',
    publicKey: await readFile(keys.publicPath, 'utf8'),
  });
  w.actions.push({ action: 'publisher.create', targetId: publisher.keyid });
});

after(async () => {
  for (const pc of w.pcs) await killProcess(pc.engine);
  for (const pc of w.pcs.filter((p) => p.kind === 'qemu')) {
    const { runDir } = volumeLayout(pc.dataDir, 'work');
    await driver.attach('work', runDir).catch(() => {});
    await driver.stop('work', { timeoutMs: 5000 }).catch(() => {});
  }
  await center?.stop();
  if (w.dir) await rm(w.dir, { recursive: true, force: true });
});

test('1. six PCs (two on QEMU, four simulated) enrol with one token and run os@1', async () => {
  for (const [version, how] of [
    ['1', '--release'],
    ['2', '--publish'],
    ['3', '--publish'],
  ] as const) {
    await cliJson(
      ['image', 'push', '--center', w.url, '--store', w.storeDir, 'os', version, how],
      env(),
    );
  }
  const image = await api<{ id: string; versions: { id: string; version: string }[] }>(
    'GET',
    '/images/os',
  );
  w.imageId = image.id;
  w.actions.push({ action: 'image.create', targetId: image.id });
  for (const v of image.versions) {
    w.versionIds[v.version] = v.id;
    w.actions.push({ action: 'image.version.upload', targetId: v.id });
    w.actions.push({ action: 'image.version.publish', targetId: v.id });
  }
  const group = (await cli(['groups', 'create', '--name', 'fleet'])) as { id: string };
  w.groupId = group.id;
  w.actions.push({ action: 'group.create', targetId: group.id });
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: w.imageId,
    isolation: { network: 'none', encryptData: true },
    healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
    cpus: 1,
    memoryMib: 256,
  });
  w.actions.push({ action: 'profile.create', targetId: profile.id });
  const token = (await cli(['tokens', 'create', '--group', 'fleet', '--uses', '6'])) as {
    id: string;
    token: string;
  };
  w.actions.push({ action: 'enrolment-token.create', targetId: token.id });
  const kinds = ['qemu', 'qemu', 'sim', 'sim', 'sim', 'sim'] as const;
  for (const [i, kind] of kinds.entries()) {
    const name = `${kind}-${i + 1}`;
    const dataDir = join(w.dir, name);
    const enrolled = (await cliJson([
      'engine',
      'enroll',
      '--center',
      w.url,
      '--token',
      token.token,
      '--name',
      name,
      '--data',
      dataDir,
    ])) as { deviceId: string };
    const pc: Pc = { name, kind, dataDir, id: enrolled.deviceId };
    w.pcs.push(pc);
    await cli(['devices', 'assign', name, '--profile', 'work']);
    w.actions.push({ action: 'device.update', targetId: pc.id });
    startEngine(pc);
  }
  await allOn('1');
  for (const pc of w.pcs.filter((p) => p.kind === 'qemu')) {
    const { runDir } = volumeLayout(pc.dataDir, 'work');
    const r = await runInGuest(driver, 'work', runDir, ['/bin/cat', '/etc/os-release']);
    assert.match(r.stdout, /VERSION_ID=1\n/, pc.name);
  }
});

test('2. a good os@2 goes through every phase to completion; every device is healthy on it', async () => {
  const { rollout } = await rolloutWithOneQemuFirst('2', 0);
  const done = await waitFor(
    'the os@2 rollout to complete',
    async () => {
      const r = await api<RolloutView>('GET', `/rollouts/${rollout.id}`);
      assert.notEqual(r.state, 'halted', `halted: ${r.stateReason}`);
      return r.state === 'completed' ? r : undefined;
    },
    { intervalMs: 1000 },
  );
  assert.equal(done.currentPhase, 1, 'it went through both phases');
  await allOn('2');
  // Every device's trail for os@2 ends healthy, after it was staged and switched.
  const page = await waitFor('every device of the os@2 rollout healthy', async () => {
    const p = await trail(rollout.id);
    return p.devices.length === w.pcs.length && p.devices.every((d) => d.status === 'healthy')
      ? p
      : undefined;
  });
  for (const d of page.devices) {
    const types = d.trail.map((e) => e.type).filter((t) => t !== 'download-progress');
    assert.deepEqual(types.slice(-3), ['staged', 'switched', 'healthy'], d.device);
  }
  for (const pc of w.pcs.filter((p) => p.kind === 'qemu')) {
    const { runDir } = volumeLayout(pc.dataDir, 'work');
    const r = await runInGuest(driver, 'work', runDir, ['/bin/cat', '/etc/os-release']);
    assert.match(r.stdout, /VERSION_ID=2\n/, pc.name);
  }
});

test('3. a broken os@3 halts its rollout after the first phase; nothing beyond it is touched', async () => {
  // A long soak: the first phase cannot end before the QEMU device has had its say.
  const { rollout, firstQemu } = await rolloutWithOneQemuFirst('3', 60);
  const halted = await waitFor(
    'the os@3 rollout to halt',
    async () => {
      const r = await api<RolloutView>('GET', `/rollouts/${rollout.id}`);
      return r.state === 'halted' ? r : undefined;
    },
    { intervalMs: 1000 },
  );
  assert.equal(halted.currentPhase, 0, 'it halted in its first phase');
  assert.match(halted.stateReason!, /devices that reported failed or rolled back/);
  // The reason at the CLI, in words.
  const shown = await runCli(['rollout', 'show', rollout.id, '--center', w.url], { env: env() });
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /state\s+halted, phase 1 of 2 \(50%\)/);
  assert.ok(shown.stdout.includes(`reason         ${halted.stateReason}`), shown.stdout);

  const inFirst = new Set(
    w.pcs.filter((pc) => bucketOf(rollout.id, pc.id) < 5000).map((p) => p.id),
  );
  const beyond = w.pcs.filter((pc) => !inFirst.has(pc.id));
  assert.ok(
    beyond.some((pc) => pc.kind === 'qemu'),
    'the other QEMU device is beyond',
  );
  // Per rollout: only first-phase devices; the QEMU one rolled back with its reason.
  const page = await trail(rollout.id);
  assert.deepEqual(new Set(page.devices.map((d) => d.deviceId)), inFirst);
  assert.ok(page.devices.every((d) => d.phase === 0));
  const failed = page.devices.find((d) => d.deviceId === firstQemu.id)!;
  assert.deepEqual(
    [failed.status, failed.reason],
    ['rolled-back', 'health check command exited 1'],
  );
  const steps = failed.trail.map((e) => (e.reason ? `${e.type}: ${e.reason}` : e.type));
  assert.deepEqual(steps.filter((s) => !s.startsWith('download-progress')).slice(-3), [
    'staged',
    'switched',
    'rolled-back: health check command exited 1',
  ]);
  // The failed device runs os@2 again, and says so.
  await waitFor('the failed device back on os@2 at Center', async () =>
    (await versions()).get(firstQemu.name) === '2' ? true : undefined,
  );
  const { runDir } = volumeLayout(firstQemu.dataDir, 'work');
  const r = await runInGuest(driver, 'work', runDir, ['/bin/cat', '/etc/os-release']);
  assert.match(r.stdout, /VERSION_ID=2\n/);
  // Per device, from the CLI: its trail for os@3 ends with the rollback and its reason.
  const mine = (await cli(['devices', 'events', firstQemu.name, '--rollout', rollout.id])) as {
    events: { type: string; reason: string | null }[];
  };
  assert.deepEqual(
    [mine.events[0]!.type, mine.events[0]!.reason],
    ['rolled-back', 'health check command exited 1'],
  );
  // Beyond the first phase: nothing about os@3, still on os@2, even after the scheduler has
  // had its ticks (every 10 s).
  const later = Date.now() + 25_000;
  await waitFor('two scheduler ticks', () => (Date.now() >= later ? true : undefined));
  assert.equal((await api<RolloutView>('GET', `/rollouts/${rollout.id}`)).state, 'halted');
  const now = await versions();
  for (const pc of beyond) {
    const events = await api<{ events: unknown[] }>(
      'GET',
      `/devices/${pc.id}/events?versionId=${w.versionIds['3']}`,
    );
    assert.deepEqual(events.events, [], `${pc.name} reported nothing about os@3`);
    assert.equal(now.get(pc.name), '2', `${pc.name} stays on os@2`);
  }
});

test('4. every admin action of the test is in the audit trail', async () => {
  const entries: { actor: string; action: string; targetId: string | null }[] = [];
  let cursor: string | null = '';
  while (cursor !== null) {
    const page: { entries: typeof entries; next: string | null } = await api(
      'GET',
      `/audit?limit=500${cursor ? `&cursor=${cursor}` : ''}`,
    );
    entries.push(...page.entries);
    cursor = page.next;
  }
  const mine = entries.filter((e) => e.actor !== 'system');
  for (const a of w.actions) {
    // A login's entry names the session, which the test does not know: by action alone.
    assert.ok(
      mine.some((e) => e.action === a.action && (a.targetId === null || e.targetId === a.targetId)),
      `audit has ${a.action} ${a.targetId}; it has: ${mine.map((e) => `${e.action} ${e.targetId}`).join(', ')}`,
    );
  }
  // Nothing the administrator did is missing from the list above, nor anything added.
  const expected = w.actions.map((a) => a.action).sort();
  assert.deepEqual(
    mine.map((e) => e.action).sort(),
    expected,
    'the audit trail holds exactly the actions of the test',
  );
  // And Center's own halt, by `system`.
  assert.ok(entries.some((e) => e.actor === 'system' && e.action === 'rollout.halt'));
});
