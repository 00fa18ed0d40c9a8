// Keys a stolen disk does not give away, and a kill that erases, with real processes: Center,
// Engine running the test guest on QEMU (TCG), and a real TPM 2.0 emulator (swtpm) as the PC's
// TPM. A work profile with encrypted data that requires the TPM; a marker written in the
// guest's /data; then every file under Engine's data directory and its log is searched for the
// data key (Center's own derivation gives it to the test) and for the marker. Then a kill from
// the CLI: afterwards no file Engine had opens the data volume, nor does the real key (the LUKS
// header is gone), the identity key is gone, and Center hears nothing more from the PC.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { deriveDataKey } from '../../src/center/devices/desired-state.ts';
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
import { exec, filesUnder, makeKeys } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { startTestTpm, type TestTpm } from '../support/swtpm.ts';
import { waitFor } from '../support/wait.ts';

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
const nodeBin = fileURLToPath(new URL('../../node_modules/.bin/node', import.meta.url));
const POLL_SECONDS = 2;

const cleanups: (() => unknown)[] = [];
const w = {} as {
  dir: string;
  url: string;
  token: string;
  engineData: string;
  engineLog: string;
  guest: Awaited<ReturnType<typeof testGuest>>['guest'];
  tpm: TestTpm;
  deviceId: string;
  profileId: string;
  dataKey: Buffer;
  marker: string;
};
let center: CenterProcess | undefined;
let engine: ChildProcess | undefined;
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

function startEngine(): void {
  const log = createWriteStream(w.engineLog, { flags: 'a' });
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
      String(POLL_SECONDS),
      '--log-level',
      'debug',
    ],
    {
      env: { ...process.env, BULKHEAD_ACCEL: 'tcg', BULKHEAD_TPM: w.tpm.tcti },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  c.stdout!.pipe(log);
  c.stderr!.pipe(log);
  engine = c;
}

/** Center's count of requests on the device routes (only this one PC uses them). */
async function deviceRequests(): Promise<number> {
  const text = await (await fetch(`${center!.info.metricsUrl}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('bulkhead_center_http_requests_total{') && l.includes('/device/'))
    .reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0);
}

async function pushConnections(): Promise<number> {
  const text = await (await fetch(`${center!.info.metricsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('bulkhead_center_push_connections '));
  return Number(line?.split(' ')[1]);
}

const until = <T>(what: string, fn: () => Promise<T | undefined | false>) =>
  waitFor(what, () => fn().catch(() => undefined), { intervalMs: 500 });

/** Whether qemu-img can read the whole encrypted volume with the passphrase in `secretFile`. */
async function opens(volume: string, secretFile: string): Promise<boolean> {
  try {
    await exec('qemu-img', [
      'convert',
      // The running VM holds the image's lock: read it anyway (only reads).
      '-U',
      '--object',
      `secret,id=k,file=${secretFile}`,
      '--image-opts',
      `driver=qcow2,file.filename=${volume},encrypt.key-secret=k`,
      '-O',
      'raw',
      join(w.dir, 'out.raw'),
    ]);
    return true;
  } catch {
    return false;
  } finally {
    await rm(join(w.dir, 'out.raw'), { force: true });
  }
}

before(async () => {
  await requireQemu();
  const { guest, volumes } = await testGuest();
  w.guest = guest;
  w.dir = await mkdtemp(join(tmpdir(), 'bulkhead-keys-'));
  w.tpm = await startTestTpm({ after: (f) => cleanups.push(f) });
  const port = await freePort();
  w.url = `http://127.0.0.1:${port}`;
  w.engineData = join(w.dir, 'engine');
  w.engineLog = join(w.dir, 'engine.log');
  w.marker = `marker-${randomBytes(12).toString('hex')}`;
  const keys = await makeKeys(w.dir);
  const storeDir = join(w.dir, 'store');
  await importImage({
    store: new DirectoryStore(storeDir),
    name: 'os',
    key: keys.key,
    tempDir: join(w.dir, 'tmp'),
    file: volumes.system.v1,
    version: '1',
    parent: null,
  });
  center = await startCenterProcess(
    { after: () => {} },
    [
      '--data',
      join(w.dir, 'center'),
      '--listen',
      `127.0.0.1:${port}`,
      '--metrics-listen',
      '127.0.0.1:0',
      '--public-url',
      w.url,
    ],
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
  await cliJson(['image', 'push', '--center', w.url, '--store', storeDir, 'os', '1', '--release'], {
    BULKHEAD_TOKEN: w.token,
  });
});

after(async () => {
  await killProcess(engine);
  await driver.attach('work', volumeLayout(w.engineData, 'work').runDir).catch(() => {});
  await driver.stop('work', { timeoutMs: 5000 }).catch(() => {});
  await center?.stop();
  for (const f of cleanups.reverse()) await f();
  if (w.dir) await rm(w.dir, { recursive: true, force: true });
});

test('1. a work VM with encrypted data runs; no file of Engine holds the data key or the marker', async () => {
  const { images } = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
  const group = await api<{ id: string }>('POST', '/groups', { name: 'lab' });
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: images.find((i) => i.name === 'os')!.id,
    isolation: { network: 'none', encryptData: true, requireTpm: true },
    healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
    cpus: 1,
    memoryMib: 256,
  });
  w.profileId = profile.id;
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
    '--tpm',
    w.tpm.tcti,
  ])) as { deviceId: string; keyProtection: string };
  assert.equal(enrolled.keyProtection, 'tpm');
  w.deviceId = enrolled.deviceId;
  await api('PATCH', `/devices/${w.deviceId}`, { profiles: [profile.id] });
  startEngine();
  const runDir = volumeLayout(w.engineData, 'work').runDir;
  await until('the work VM to answer its health check', async () => {
    const r = await runInGuest(driver, 'work', runDir, ['/usr/libexec/health-check']);
    return r.exitCode === 0;
  });
  const wrote = await runInGuest(driver, 'work', runDir, [
    '/bin/sh',
    '-c',
    `echo ${w.marker} > /data/marker && sync`,
  ]);
  assert.equal(wrote.exitCode, 0);
  assert.equal(
    (await runInGuest(driver, 'work', runDir, ['/bin/cat', '/data/marker'])).stdout,
    `${w.marker}\n`,
  );

  // The data key as Center derives it: the test may know it, no file on the PC may.
  const centerKey = createPrivateKey(await readFile(join(w.dir, 'center', 'center.key'), 'utf8'));
  w.dataKey = Buffer.from(deriveDataKey(centerKey, w.deviceId, w.profileId), 'base64');
  const needles: [string, Buffer][] = [
    ['the data key', w.dataKey],
    ['the data key in base64', Buffer.from(w.dataKey.toString('base64'))],
    ['the data key in base64url', Buffer.from(w.dataKey.toString('base64url'))],
    ['the data key in hex', Buffer.from(w.dataKey.toString('hex'))],
    ['the marker', Buffer.from(w.marker)],
  ];
  const files = [
    ...(await filesUnder(w.engineData)),
    { path: w.engineLog, bytes: await readFile(w.engineLog) },
  ];
  assert.ok(
    files.some((f) => f.path.endsWith('data.qcow2')),
    'the data volume was searched',
  );
  const found = files.flatMap((f) =>
    needles.filter(([, n]) => f.bytes.includes(n)).map(([what]) => `${what} in ${f.path}`),
  );
  assert.deepEqual(found, []);
});

test('2. kill from the CLI crypto-erases: nothing Engine had opens the volume, and the PC goes silent', async () => {
  const volume = volumeLayout(w.engineData, 'work').data;
  const realKey = join(w.dir, 'real-key');
  await writeFile(realKey, w.dataKey.toString('base64'), { mode: 0o600 });
  assert.equal(await opens(volume, realKey), true, 'before the kill the real key opens it');

  const kill = (await cliJson(['devices', 'kill', w.deviceId, '--yes', '--center', w.url], {
    BULKHEAD_TOKEN: w.token,
  })) as { id: string };
  const settled = await until('the kill to be settled at Center', async () => {
    const { commands } = await api<{
      commands: { id: string; state: string; result: { message: string } | null }[];
    }>('GET', `/devices/${w.deviceId}/commands`);
    const c = commands.find((x) => x.id === kill.id);
    return c && c.state !== 'pending' && c.state !== 'delivered' ? c : undefined;
  });
  assert.equal(settled.state, 'done', JSON.stringify(settled.result));
  assert.match(
    settled.result!.message,
    /crypto-erased: keys destroyed, LUKS headers overwritten \(work\)/,
  );
  await until('the identity key to be destroyed', async () =>
    stat(join(w.engineData, 'device.key')).then(
      () => false,
      () => true,
    ),
  );
  await until('the push channel to close', async () => (await pushConnections()) === 0);

  // Nothing more reaches Center: three poll intervals and more pass without a request.
  const counted = await deviceRequests();
  const since = Date.now();
  await until(
    'several poll intervals to pass',
    async () => Date.now() - since > 4 * POLL_SECONDS * 1000,
  );
  assert.equal(await deviceRequests(), counted, 'no request from the killed PC');
  assert.equal(await pushConnections(), 0);

  // Every candidate: each file's bytes and, for small ones, their text and base64 either way.
  assert.equal(await opens(volume, realKey), false, 'the real key no longer opens it');
  const candidates: Buffer[] = [];
  for (const f of [
    ...(await filesUnder(w.engineData)),
    { path: w.engineLog, bytes: await readFile(w.engineLog) },
  ]) {
    if (f.path === volume || f.bytes.length > 64 * 1024) continue;
    candidates.push(f.bytes, Buffer.from(f.bytes.toString('base64')));
    const text = f.bytes.toString('utf8').trim();
    if (/^[A-Za-z0-9+/=\s]+$/.test(text)) {
      candidates.push(
        Buffer.from(text),
        Buffer.from(Buffer.from(text, 'base64').toString('base64')),
      );
    }
  }
  assert.ok(candidates.length > 4, `${candidates.length} candidates`);
  const candidateFile = join(w.dir, 'candidate');
  for (const c of candidates) {
    await writeFile(candidateFile, c);
    assert.equal(await opens(volume, candidateFile), false);
  }
  const left = (await filesUnder(w.engineData)).map((f) => f.path.slice(w.engineData.length + 1));
  assert.ok(
    !left.some((p) => p.startsWith('keys/') || p === 'device.key' || p.startsWith('goldens/')),
    left.join(', '),
  );
  assert.ok(!left.some((p) => p.startsWith('desired-state.json')), 'no desired state kept');
  assert.ok(
    !left.some((p) => p.startsWith('vms/work/') && p !== 'vms/work/data.qcow2'),
    left.join(', '),
  );

  // Engine started again on the killed data directory says so and exits, without a request.
  await killProcess(engine);
  engine = undefined;
  const again = await runCli(['engine', 'run', '--data', w.engineData], {
    env: { BULKHEAD_TPM: w.tpm.tcti },
  });
  assert.equal(again.code, 1);
  assert.match(again.stderr, /this device was killed by Center/);
  assert.equal(await deviceRequests(), counted);
});
