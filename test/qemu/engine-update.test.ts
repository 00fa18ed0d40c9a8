// The update transaction on real QEMU (TCG) with the test guest: install, patch, a broken
// patch that rolls back by itself, and kill -9 of the Engine process in every state of the
// transaction. One VM is shared by the whole file (a TCG boot costs seconds); the tests run
// in order, each leaving the VM healthy for the next.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import type { HypervisorDriver } from '../../src/engine/hypervisor/types.ts';
import type { UpdateState } from '../../src/engine/update/machine.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage, type ImportResult } from '../../src/image/index.ts';
import type { DesiredState, VolumeRef } from '../../src/protocol/index.ts';
import { killProcess } from '../support/cli.ts';
import { osVersionRef, workDesiredState } from '../support/desired.ts';
import { testWrappedKey } from '../support/keys.ts';
import { wrappedKeyFiles } from '../../src/engine/wrapped-keys.ts';
import { makeKeys } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';
import { waitFor, withTimeout } from '../support/wait.ts';
import { startStaticServer, type StaticServer } from '../support/static-server.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const nodeBin = join(root, 'node_modules/.bin/node');
const childScript = join(root, 'test/qemu/engine-update.child.ts');

interface Ctx {
  dir: string;
  dataDir: string;
  desiredPath: string;
  eventsPath: string;
  server: StaticServer;
  tampering: StaticServer;
  publicPem: string;
  keyid: string;
  versions: Record<string, ImportResult>;
  guest: Awaited<ReturnType<typeof testGuest>>['guest'];
  driver: HypervisorDriver;
}
let ctx: Ctx;
let child: ChildProcess | undefined;
/** Reconcile passes the Engine children have finished. */
let passes = 0;

before(async () => {
  await requireQemu();
  const { guest, volumes } = await testGuest();
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-engine-update-'));
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const versions: Record<string, ImportResult> = {};
  const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp') };
  versions['1'] = await importImage({
    ...common,
    file: volumes.system.v1,
    version: '1',
    parent: null,
  });
  versions['2'] = await importImage({
    ...common,
    file: volumes.system.v2,
    version: '2',
    parent: '1',
  });
  // The broken version under several names: a bad version is never retried, and the crash
  // cases need a fresh one each.
  for (const v of ['3a', '3b', '3c']) {
    versions[v] = await importImage({
      ...common,
      file: volumes.system['v3-broken'],
      version: v,
      parent: '2',
    });
  }
  // Content no golden holds (the app volume's), for the tampered-mirror case.
  versions['x'] = await importImage({
    ...common,
    file: volumes.appEditor,
    version: 'x',
    parent: null,
  });
  const server = await startStaticServer(join(dir, 'store'));
  const tampering = await startStaticServer(join(dir, 'store'));
  tampering.fault = (path) =>
    path.startsWith('/chunks/')
      ? { kind: 'replace', body: Buffer.from('tampered') }
      : { kind: 'none' };
  ctx = {
    dir,
    dataDir: join(dir, 'engine'),
    desiredPath: join(dir, 'desired.json'),
    eventsPath: join(dir, 'events.jsonl'),
    server,
    tampering,
    publicPem: await readFile(keys.publicPath, 'utf8'),
    keyid: keys.key.keyid,
    versions,
    guest,
    // Looks at the VM the Engine child owns without taking its QMP connection.
    driver: createQemuDriver({ observeOnly: true }),
  };
  await writeFile(ctx.eventsPath, '');
});

after(async () => {
  await stopChild();
  if (ctx) {
    await ctx.driver.attach('work', volumeLayout(ctx.dataDir, 'work').runDir);
    await ctx.driver.stop('work', { timeoutMs: 5000 });
    await ctx.server.close();
    await ctx.tampering.close();
    await rm(ctx.dir, { recursive: true, force: true });
  }
});

function ref(version: string): VolumeRef {
  return osVersionRef(version, ctx.versions[version]!);
}

function desired(
  version: string,
  over: { system?: Partial<VolumeRef>; mirrors?: string[] } = {},
): DesiredState {
  return workDesiredState({
    system: { ...ref(version), ...over.system },
    mirrors: over.mirrors ?? [ctx.server.url],
    publishers: [{ keyid: ctx.keyid, publicKey: ctx.publicPem }],
    dataKey: Buffer.alloc(32, 7),
  });
}

async function setDesired(
  version: string,
  over: Parameters<typeof desired>[1] = {},
): Promise<void> {
  // Written whole and renamed into place: the Engine child reads it on every pass and must
  // never see it half-written.
  const next = `${ctx.desiredPath}.next`;
  const state = desired(version, over);
  // The wrapped key is stored beside the document, as Engine's sync stores it.
  for (const vm of state.vms) {
    const wrapped = testWrappedKey(vm.wrappedDataKeyDigest ?? '');
    if (wrapped !== undefined) {
      await wrappedKeyFiles(ctx.dataDir).save({ [vm.profileId]: wrapped });
    }
  }
  await writeFile(next, JSON.stringify(state));
  await rename(next, ctx.desiredPath);
}

function startChild(crashAt?: UpdateState): ChildProcess {
  const c = spawn(nodeBin, [childScript], {
    env: {
      ...process.env,
      ENGINE_DATA: ctx.dataDir,
      ENGINE_DESIRED: ctx.desiredPath,
      ENGINE_EVENTS: ctx.eventsPath,
      GUEST_KERNEL: ctx.guest.kernel,
      GUEST_INITRD: ctx.guest.initrd,
      GUEST_CMDLINE: ctx.guest.cmdline,
      ...(crashAt ? { ENGINE_CRASH_AT: crashAt } : { ENGINE_CRASH_AT: '' }),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  c.stderr!.on('data', (d: Buffer) => process.stderr.write(`[engine] ${d.toString()}`));
  // The child prints a line after each reconcile pass.
  c.stdout!.on('data', (d: Buffer) => (passes += d.toString().split('\n').length - 1));
  child = c;
  return c;
}

async function stopChild(): Promise<void> {
  const c = child;
  child = undefined;
  await killProcess(c);
}

function exitOf(c: ChildProcess): Promise<{ code: number | null; signal: string | null }> {
  if (c.exitCode !== null || c.signalCode !== null)
    return Promise.resolve({ code: c.exitCode, signal: c.signalCode });
  return new Promise((r) => c.once('exit', (code, signal) => r({ code, signal })));
}

interface EngineStateFile {
  vms: {
    name: string;
    currentVersionId: string | null;
    previousVersionId: string | null;
    transaction: { state: string };
    badVersions: string[];
  }[];
}

async function vmRecord() {
  try {
    const s = JSON.parse(
      await readFile(join(ctx.dataDir, 'engine-state.json'), 'utf8'),
    ) as EngineStateFile;
    return s.vms.find((v) => v.name === 'work');
  } catch {
    return undefined;
  }
}

async function events(): Promise<{ type: string; data: Record<string, unknown> }[]> {
  const text = await readFile(ctx.eventsPath, 'utf8');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { type: string; data: Record<string, unknown> });
}

async function hasTransaction(): Promise<boolean> {
  try {
    await stat(join(ctx.dataDir, 'updates', 'work.json'));
    return true;
  } catch {
    return false;
  }
}

/** Waits until the VM settled (no transaction) on one of `versions`; returns the one. */
async function settledOn(versions: string[]): Promise<string> {
  return waitFor(`the VM to settle on ${versions.join(' or ')}`, async () => {
    const r = await vmRecord();
    if (!r || (await hasTransaction()) || r.transaction.state !== 'idle') return undefined;
    const v = r.currentVersionId?.replace(/^ver-/, '');
    return v && versions.includes(v) ? v : undefined;
  });
}

/** Runs argv in the guest; stdout as text. */
function guestRun(argv: string[]): Promise<{ exitCode: number; stdout: string }> {
  return runInGuest(ctx.driver, 'work', volumeLayout(ctx.dataDir, 'work').runDir, argv);
}

async function assertGuest(version: string): Promise<void> {
  const health = await guestRun(['/usr/libexec/health-check']);
  assert.equal(health.exitCode, 0, 'the running version passes its health check');
  const os = await guestRun(['/bin/cat', '/etc/os-release']);
  const expected = version.startsWith('3') ? '3' : version;
  assert.match(
    os.stdout,
    new RegExp(`VERSION_ID=${expected}\\n`),
    `the guest runs version ${version}`,
  );
  const data = await guestRun(['/bin/cat', '/data/marker']);
  assert.equal(data.stdout, 'kept across updates\n', '/data is intact');
}

test('install v1, patch to v2 (only new chunks), a broken v3 rolls back by itself; /data kept', async () => {
  await setDesired('1');
  startChild();
  assert.equal(await settledOn(['1']), '1');
  const w = await guestRun(['/bin/sh', '-c', 'echo kept across updates > /data/marker && sync']);
  assert.equal(w.exitCode, 0);
  await assertGuest('1');

  await setDesired('2');
  assert.equal(await settledOn(['2']), '2');
  await assertGuest('2');
  const staged = (await events()).find((e) => e.type === 'staged' && e.data.versionId === 'ver-2');
  assert.ok(staged, 'a staged event for v2');
  const downloaded = staged.data.downloadedBytes as number;
  const newBytes = ctx.versions['2']!.newBytes;
  assert.ok(
    downloaded > 0 && downloaded < newBytes + 256 * 1024,
    `v2 downloaded ${downloaded} bytes for ${newBytes} new`,
  );
  assert.ok(downloaded < ctx.versions['2']!.size / 8, 'far less than the image');

  await setDesired('3a');
  await waitFor('the rolled-back event of 3a', async () =>
    (await events()).find((e) => e.type === 'rolled-back' && e.data.versionId === 'ver-3a'),
  );
  assert.equal(await settledOn(['2']), '2');
  const rolled = (await events()).find(
    (e) => e.type === 'rolled-back' && e.data.versionId === 'ver-3a',
  )!;
  assert.equal(rolled.data.reason, 'health check command exited 1');
  assert.ok((await vmRecord())!.badVersions.includes('ver-3a'), '3a is marked bad');
  await assertGuest('2');
  // A bad version is not tried again: the VM stays on v2 through further passes.
  const seen = passes;
  await waitFor('two more reconcile passes', () => passes >= seen + 2);
  assert.equal((await vmRecord())!.currentVersionId, 'ver-2');
  assert.equal(
    (await events()).filter((e) => e.type === 'switched' && e.data.versionId === 'ver-3a').length,
    1,
  );
  await stopChild();
});

test('bad input: a manifest other than the one named, or tampered chunks, fail with nothing switched', async () => {
  startChild();
  await settledOn(['2']);
  const cases = [
    {
      versionId: 'ver-forged',
      over: { system: { versionId: 'ver-forged', manifestId: ctx.versions['1']!.manifest } },
      version: '2',
      reason: /expected/,
    },
    {
      versionId: 'ver-x',
      over: { mirrors: [ctx.tampering.url] },
      version: 'x',
      reason: /does not match its digest/,
    },
  ];
  for (const c of cases) {
    await setDesired(c.version, c.over);
    const failed = await waitFor(`the failed event of ${c.versionId}`, async () =>
      (await events()).find((e) => e.type === 'failed' && e.data.versionId === c.versionId),
    );
    assert.match(String(failed.data.reason), c.reason);
    assert.equal(
      (await events()).some((e) => e.type === 'switched' && e.data.versionId === c.versionId),
      false,
      'nothing switched',
    );
    assert.equal(await settledOn(['2']), '2');
  }
  await assertGuest('2');
  await stopChild();
});

// kill -9 of Engine right after it persisted each state; the restarted Engine must leave the VM
// on a healthy version (the target or the one before) with /data intact.
const crashCases: { state: UpdateState; target: string; ends: string[] }[] = [
  { state: 'downloading', target: '1', ends: ['1', '2'] },
  { state: 'staged', target: '2', ends: ['2', '1'] },
  { state: 'switching', target: '1', ends: ['1', '2'] },
  { state: 'booting', target: '2', ends: ['2', '1'] },
  { state: 'health-check', target: '1', ends: ['1', '2'] },
  { state: 'committed', target: '2', ends: ['2'] },
  { state: 'rolling-back', target: '3b', ends: ['2'] },
  { state: 'rolled-back', target: '3c', ends: ['2'] },
];

for (const c of crashCases) {
  test(`kill -9 in ${c.state} (to ${c.target}): the VM ends healthy on ${c.ends.join(' or ')}`, async () => {
    await setDesired(c.target);
    const crashing = startChild(c.state);
    const exit = await withTimeout(`Engine to reach ${c.state}`, exitOf(crashing));
    assert.equal(exit.signal, 'SIGKILL', `Engine killed itself in ${c.state}`);
    const tx = JSON.parse(
      await readFile(join(ctx.dataDir, 'updates', 'work.json'), 'utf8').catch(() => 'null'),
    ) as {
      state: string;
    } | null;
    assert.equal(tx?.state, c.state, 'the state was persisted before the kill');
    startChild();
    const version = await settledOn(c.ends);
    await assertGuest(version);
    await stopChild();
  });
}
