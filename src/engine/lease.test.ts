// The offline lease through the real reconciler, records and overlays (qemu-img) on the
// simulated hypervisor, with an injected clock and Engine's persisted time mark: the warning
// window, the graceful shutdown at expiry, no restart (not even with the clock set back, not
// even after an Engine restart) until a newer verified document renews the lease.
import assert from 'node:assert/strict';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fixedClock, recordingLog } from '../../test/support/engine.ts';
import { tempDir, tool } from '../../test/support/fixtures.ts';
import { testKeyRing, wrapForTest } from '../../test/support/keys.ts';
import { wrappedKeyDigest } from '../signing/index.ts';
import { wrappedKeyFiles } from './wrapped-keys.ts';
import type { DesiredState, DesiredVm, VolumeRef } from '../protocol/index.ts';
import { createSimDriver } from './hypervisor/sim.ts';
import type { VmEvent } from './hypervisor/types.ts';
import { leaseStatus, leaseWarningMs } from './lease.ts';
import { statusVms } from './local-api.ts';
import type { NewEvent } from './queue.ts';
import { createReconciler } from './reconcile.ts';
import { engineFiles } from './state.ts';
import { createTimeMark } from './time-mark.ts';
import { TransactionFiles, VmRecords } from './update/records.ts';
import type { GoldenStore } from './volumes/index.ts';

const T0 = Date.parse('2026-05-01T08:00:00Z');
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

const system: VolumeRef = {
  image: 'os',
  imageId: 'img-os',
  version: '1',
  versionId: 'ver-1',
  manifestId: '1'.repeat(64),
  size: 65536,
};

function vm(name: string, lease: DesiredVm['lease']): DesiredVm {
  return {
    name,
    profileId: `p-${name}`,
    system,
    apps: [],
    policy: {
      network: 'nat',
      allowedEndpoints: [],
      clipboard: false,
      usbDevices: [],
      encryptData: false,
      requireTpm: false,
    },
    healthCheck: { timeoutSeconds: 30 },
    resources: { cpus: 1, memoryMib: 256 },
    resetPolicy: 'on-update',
    ...(lease ? { lease } : {}),
  };
}

/** A document as Center makes it: the lease runs `days` from `generatedAt`. */
function document(generatedAt: number, revision: number, days = 2): DesiredState {
  return {
    deviceId: 'd',
    revision,
    generatedAt,
    expiresAt: generatedAt + DAY,
    device: { state: 'active' },
    mirrors: ['http://mirror.invalid/'],
    publishers: [],
    // The work VM has a lease; the personal VM has none.
    vms: [vm('personal', undefined), vm('work', { days, expiresAt: generatedAt + days * DAY })],
    commands: [],
  };
}

/** Engine's reconciler and time mark over `dataDir`, as `engine run` builds them. */
async function engineOn(dataDir: string, clock: ReturnType<typeof fixedClock>) {
  const log = recordingLog();
  const hypervisor = createSimDriver();
  const starts: string[] = [];
  const start = hypervisor.start.bind(hypervisor);
  hypervisor.start = async (spec) => {
    starts.push(spec.name);
    return start(spec);
  };
  const vmEvents: VmEvent[] = [];
  hypervisor.onEvent((e) => vmEvents.push(e));
  const goldens = {
    ensure: async (v: VolumeRef) => {
      const path = join(dataDir, `golden-${v.versionId}.raw`);
      await writeFile(path, Buffer.alloc(v.size));
      return { golden: { path }, pulled: true, downloadedBytes: v.size, reusedBytes: 0 };
    },
    list: async () => [],
    gc: async () => [],
  } as unknown as GoldenStore;
  // Running time does not pass unless the test says so.
  const running = { ms: 0 };
  const timeMark = createTimeMark({ dataDir, clock, log, monotonic: () => running.ms });
  await timeMark.load();
  const events: NewEvent[] = [];
  const reconciler = createReconciler({
    dataDir,
    goldens,
    hypervisor,
    records: new VmRecords(engineFiles(dataDir, { clock, log }).engineState, clock),
    transactions: new TransactionFiles(dataDir, clock, log),
    report: async (e) => events.push(e),
    connectAgent: async () => ({
      ping: async () => {},
      exec: async () => ({ exitCode: 0 }),
      close: () => {},
    }),
    clock,
    log,
    dataVolumeBytes: 1 << 20,
    switchDeadlineMs: 0,
    stopTimeoutMs: 1000,
    timeMark,
    // The wrapped keys in their files, as `engine run` keeps them (wrapped-keys.ts).
    keys: testKeyRing('file', undefined, wrappedKeyFiles(dataDir)),
    wrappedKeys: wrappedKeyFiles(dataDir),
  });
  /** What the sync loop does with a verified document (run.ts wires the same). */
  const deliver = async (desired: DesiredState, source: 'center' | 'disk') => {
    await timeMark.observe(desired.generatedAt, source);
    await reconciler.reconcile(desired);
  };
  return { reconciler, hypervisor, timeMark, events, starts, vmEvents, log, running, deliver };
}

const state = async (e: { hypervisor: ReturnType<typeof createSimDriver> }, name: string) =>
  (await e.hypervisor.status(name)).state;

test('the warning window is a tenth of the lease, at most a day', () => {
  assert.equal(leaseWarningMs({ days: 1 }), 2.4 * HOUR);
  assert.equal(leaseWarningMs({ days: 30 }), DAY);
  const lease = { days: 2, expiresAt: T0 + 2 * DAY };
  assert.equal(leaseStatus({ lease }, T0), 'valid');
  assert.equal(leaseStatus({ lease }, T0 + 2 * DAY - 4.8 * HOUR), 'warning');
  assert.equal(leaseStatus({ lease }, T0 + 2 * DAY), 'expired');
  assert.equal(leaseStatus({}, Number.POSITIVE_INFINITY), 'none');
});

test('lease: warned, shut down gracefully at expiry, not started again (clock set back, Engine restarted) until Center renews it; the personal VM is unaffected', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const clock = fixedClock(T0);
  let e = await engineOn(dataDir, clock);
  const first = document(T0, 1);
  await e.deliver(first, 'center');
  assert.equal(await state(e, 'work'), 'running');
  assert.equal(await state(e, 'personal'), 'running');

  // In the warning window (the last 4.8 hours of a 2-day lease): warned once, still running.
  clock.ms = T0 + 2 * DAY - 2 * HOUR;
  await e.reconciler.pass();
  await e.reconciler.pass();
  const warnings = e.log.warnings.filter((w) => /work: its lease runs out at/.test(w));
  assert.equal(warnings.length, 1, e.log.warnings.join('\n'));
  assert.equal(await state(e, 'work'), 'running');

  // Past expiry: the work VM is shut down gracefully (the guest saw the power button) and
  // Center will be told; the personal VM, without a lease, keeps running.
  clock.ms = T0 + 2 * DAY + 1;
  await e.reconciler.pass();
  assert.equal(await state(e, 'work'), 'stopped');
  assert.equal(await state(e, 'personal'), 'running');
  const shutdown = e.vmEvents.find((x) => x.name === 'work' && x.event === 'SHUTDOWN');
  assert.equal(shutdown?.detail?.['reason'], 'guest-shutdown', 'a graceful power-down');
  const expired = e.events.filter((x) => x.type === 'lease-expired');
  assert.deepEqual(
    expired.map((x) => [x.id, x.data]),
    [
      [
        `lease-expired-work-${first.vms[1]!.lease!.expiresAt}`,
        {
          vm: 'work',
          profileId: 'p-work',
          expiresAt: first.vms[1]!.lease!.expiresAt,
          wasRunning: true,
        },
      ],
    ],
  );

  // Not started again by later passes, nor with the PC's clock set back to when it was valid.
  await e.reconciler.pass();
  clock.ms = T0 + HOUR;
  await e.reconciler.pass();
  assert.equal(await state(e, 'work'), 'stopped');
  assert.equal(e.starts.filter((n) => n === 'work').length, 1);
  assert.equal(e.events.filter((x) => x.type === 'lease-expired').length, 1, 'reported once');

  // Engine restarts with the clock still set back, and the stored document: the persisted mark
  // keeps the lease expired.
  await e.hypervisor.stop('personal');
  e = await engineOn(dataDir, clock);
  await e.deliver(first, 'disk');
  assert.equal(await state(e, 'personal'), 'running', 'the personal VM starts');
  assert.equal(await state(e, 'work'), 'stopped', 'the work VM does not');
  assert.deepEqual(e.starts, ['personal']);

  // Center reached: a newer verified document renews the lease and the work VM starts.
  clock.ms = T0 + 2 * DAY + HOUR;
  await e.deliver(document(T0 + 2 * DAY + HOUR, 2), 'center');
  assert.equal(await state(e, 'work'), 'running');
});

test('the clock set back while Engine runs is noticed from running time, before any mark is written', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const clock = fixedClock(T0);
  const e = await engineOn(dataDir, clock);
  await e.deliver(document(T0, 1), 'center');
  assert.equal(await state(e, 'work'), 'running');
  // Two days and a bit of running time pass, but the PC's clock was set back to T0.
  e.running.ms = 2 * DAY + 1;
  await e.reconciler.pass();
  assert.equal(await state(e, 'work'), 'stopped');
  assert.equal(e.events.filter((x) => x.type === 'lease-expired').length, 1);
});

test('the local API shows the lease by the time mark: a warning in its window, expired past it, whatever the clock says', async (t) => {
  const dataDir = await tempDir(t);
  const now = Date.now();
  const state = document(now - 2 * DAY + 2 * HOUR, 1);
  await engineFiles(dataDir).desiredState.write({
    etag: null,
    document: { state, keyid: 'k', signature: 's' },
    verifiedAt: now,
  });
  const vms = async () => {
    const list = await statusVms(dataDir)();
    return Object.fromEntries(list.map((v) => [v.name, [v.leaseWarning, v.leaseExpired]]));
  };
  // Two hours left of a 2-day lease: in its warning window.
  assert.deepEqual(await vms(), { personal: [false, false], work: [true, false] });
  // The mark (a later time Engine saw) is past the lease: expired, though the clock is not.
  const clock = fixedClock(now + 3 * DAY);
  const mark = createTimeMark({ dataDir, clock, log: recordingLog() });
  await mark.load();
  await mark.observe(clock.now(), 'center');
  assert.deepEqual(await vms(), { personal: [false, false], work: [true, true] });
});

/** Every file under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

test("lease expiry destroys the work VM's wrapped key: nothing under the data directory holds it and the VM does not start; a renewing document brings it back and the VM starts on its data", async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const clock = fixedClock(T0);
  const dataKey = Buffer.alloc(32, 0x3c);
  const wrapped = wrapForTest(dataKey, 'p-work');
  /** A document whose work VM has encrypted data, its key stored as the sync loop stores it. */
  const encrypted = async (generatedAt: number, revision: number): Promise<DesiredState> => {
    const d = document(generatedAt, revision);
    const work = d.vms[1]!;
    work.policy = { ...work.policy, encryptData: true };
    work.wrappedDataKeyDigest = wrappedKeyDigest(wrapped);
    await wrappedKeyFiles(dataDir).save({ [work.profileId]: wrapped });
    return d;
  };
  let e = await engineOn(dataDir, clock);
  const first = await encrypted(T0, 1);
  await e.deliver(first, 'center');
  assert.equal(await state(e, 'work'), 'running');
  const dataPath = join(dataDir, 'vms', 'work', 'data.qcow2');
  const before = await stat(dataPath);

  // Past expiry: shut down, then the key file is overwritten and removed.
  clock.ms = T0 + 2 * DAY + 1;
  await e.reconciler.pass();
  assert.equal(await state(e, 'work'), 'stopped');
  for (const file of await filesUnder(dataDir)) {
    const bytes = await readFile(file);
    assert.ok(!bytes.includes(wrapped), `${file} holds the wrapped key`);
    assert.ok(!bytes.includes(dataKey.toString('base64')), `${file} holds the data key`);
  }
  assert.ok(
    e.log.warnings.some((w) =>
      /work: its key material was destroyed at lease expiry; it comes back at the next contact/.test(
        w,
      ),
    ),
    e.log.warnings.join('\n'),
  );
  const expired = e.events.find((x) => x.type === 'lease-expired');
  assert.equal((expired?.data as { keyDestroyed?: boolean }).keyDestroyed, true);

  // Restarted from the stored document with the clock set back: the work VM does not start,
  // and even a start asked for directly finds no key.
  clock.ms = T0 + HOUR;
  e = await engineOn(dataDir, clock);
  await e.deliver(first, 'disk');
  assert.equal(await state(e, 'work'), 'stopped');
  assert.deepEqual(e.starts, ['personal']);
  assert.throws(
    () => testKeyRing('file', undefined, wrappedKeyFiles(dataDir)).dataKey(first.vms[1]!),
    {
      code: 'ERR_DATA_KEY_UNAVAILABLE',
    },
  );

  // Center reached: the renewing document brings the key back; the VM starts on the same data.
  clock.ms = T0 + 2 * DAY + HOUR;
  await e.deliver(await encrypted(T0 + 2 * DAY + HOUR, 2), 'center');
  assert.equal(await state(e, 'work'), 'running');
  const after = await stat(dataPath);
  assert.equal(after.ino, before.ino, 'the data volume is the one it had');
  assert.equal(after.birthtimeMs, before.birthtimeMs);
});
