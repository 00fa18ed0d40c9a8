// The reconciler's VM lifecycle beyond updates, on real files: a VM that cannot boot as
// configured (Secure Boot with a directly booted kernel) fails with that reason instead of
// booting, and a VM that leaves the desired state is stopped and its disks and firmware state
// removed. The real reconciler, update transaction, records and overlays (qemu-img) on the
// simulated hypervisor; goldens are small local files.
import assert from 'node:assert/strict';
import { mkdir, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { testKeyRing, wrappedDigestForTest } from '../../test/support/keys.ts';
import { test } from 'node:test';
import { recordingLog } from '../../test/support/engine.ts';
import { tempDir, tool } from '../../test/support/fixtures.ts';
import type { DesiredState, DesiredVm, VmMachineHint, VolumeRef } from '../protocol/index.ts';
import { systemClock } from './clock.ts';
import { createSimDriver } from './hypervisor/sim.ts';
import type { NewEvent } from './queue.ts';
import { createReconciler } from './reconcile.ts';
import { engineFiles } from './state.ts';
import { TransactionFiles, VmRecords } from './update/records.ts';
import { volumeLayout, type GoldenStore } from './volumes/index.ts';

const DATA_KEY_BYTES = Buffer.alloc(32, 7);
const KERNEL = { path: '/boot/vmlinuz-test', initrd: '/boot/initrd-test' };

function ref(version: string): VolumeRef {
  return {
    image: 'os',
    imageId: 'img-os',
    version,
    versionId: `ver-${version}`,
    manifestId: version.repeat(64).slice(0, 64),
    size: 65536,
  };
}

function desiredVm(name: string, machine?: VmMachineHint, version = '1'): DesiredVm {
  return {
    name,
    profileId: `p-${name}`,
    system: ref(version),
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
    lease: { days: 30, expiresAt: Date.now() + 86_400_000 },
    ...(machine ? { machine } : {}),
    wrappedDataKeyDigest: wrappedDigestForTest(DATA_KEY_BYTES, `p-${name}`),
  };
}

/** One field of an event's data, whatever its type. */
const field = (e: NewEvent, key: string) => (e.data as Record<string, unknown>)[key];

let revision = 0;
function desired(vms: DesiredVm[], state: DesiredState['device']['state'] = 'active') {
  return {
    deviceId: 'd',
    revision: ++revision,
    generatedAt: Date.now(),
    expiresAt: Date.now() + 86_400_000,
    device: { state },
    mirrors: ['http://mirror.invalid/'],
    publishers: [],
    vms,
    commands: [],
  } satisfies DesiredState;
}

const UEFI_TPM: VmMachineHint = {
  firmware: 'uefi',
  secureBoot: false,
  tpm: true,
  os: 'linux',
  devices: 'virtio',
};
const SECURE_BOOT: VmMachineHint = { ...UEFI_TPM, secureBoot: true, tpm: false };

/**
 * The real reconciler on the simulated hypervisor; goldens are local files, counted; `extra`
 * replaces or adds dependencies.
 */
function engineOn(
  dataDir: string,
  kernel?: typeof KERNEL,
  extra: Partial<Parameters<typeof createReconciler>[0]> = {},
) {
  const clock = systemClock;
  const log = recordingLog();
  const hypervisor = createSimDriver();
  const starts: string[] = [];
  const start = hypervisor.start.bind(hypervisor);
  hypervisor.start = async (spec) => {
    starts.push(spec.name);
    return start(spec);
  };
  const fetched: string[] = [];
  const goldens = {
    ensure: async (v: VolumeRef) => {
      fetched.push(v.versionId);
      const path = join(dataDir, `golden-${v.versionId}.raw`);
      await writeFile(path, Buffer.alloc(v.size));
      return { golden: { path }, pulled: true, downloadedBytes: v.size, reusedBytes: 0 };
    },
    list: async () => [],
    gc: async () => [],
  } as unknown as GoldenStore;
  const events: NewEvent[] = [];
  const records = new VmRecords(engineFiles(dataDir, { clock, log }).engineState, clock);
  const transactions = new TransactionFiles(dataDir, clock, log);
  const reconciler = createReconciler({
    keys: testKeyRing(),
    dataDir,
    goldens,
    hypervisor,
    records,
    transactions,
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
    ...(kernel ? { kernel } : {}),
    ...extra,
  });
  return { reconciler, hypervisor, records, transactions, events, starts, fetched, log };
}

test('Secure Boot with a directly booted kernel: the first install fails before any download, with the reason', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const e = engineOn(dataDir, KERNEL);
  await e.reconciler.reconcile(desired([desiredVm('work', SECURE_BOOT)]));

  assert.deepEqual(e.starts, [], 'nothing booted');
  assert.deepEqual(e.fetched, [], 'nothing downloaded');
  const failed = e.events.find((x) => x.type === 'failed');
  assert.ok(failed, `events: ${e.events.map((x) => x.type).join(', ')}`);
  const reason = (failed.data as { reason: string }).reason;
  assert.match(reason, /VM work cannot boot: its profile turns Secure Boot on/);
  assert.match(reason, /Remove kernel/);
  const record = await e.records.get('work');
  assert.equal(record.currentVersionId, null);
  assert.match(record.lastError?.message ?? '', /Secure Boot/);
  assert.equal(await e.transactions.read('work'), undefined, 'the transaction is over');
});

test('an installed VM whose profile turns Secure Boot on is not started with a direct kernel; the reason is recorded and reported once', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const e = engineOn(dataDir, KERNEL);
  await e.reconciler.reconcile(desired([desiredVm('work', { ...SECURE_BOOT, secureBoot: false })]));
  assert.equal((await e.records.get('work')).currentVersionId, 'ver-1');
  assert.deepEqual(e.starts, ['work']);
  await e.hypervisor.stop('work');

  // The same version, now with Secure Boot on: two passes, one report.
  await e.reconciler.reconcile(desired([desiredVm('work', SECURE_BOOT)]));
  await e.reconciler.pass();
  assert.deepEqual(e.starts, ['work'], 'not started again');
  assert.equal((await e.hypervisor.status('work')).state, 'stopped');
  const refused = e.events.filter((x) => x.type === 'vm-state' && field(x, 'state') === 'failed');
  assert.equal(refused.length, 1, 'reported once');
  assert.match(
    String(refused[0] && field(refused[0], 'reason')),
    /cannot boot: its profile turns Secure Boot on/,
  );
  const record = await e.records.get('work');
  assert.equal(record.lastError?.code, 'ERR_VALIDATION');
  assert.match(record.lastError?.message ?? '', /--secure-boot off/);

  // Secure Boot off again: it starts, and the refusal is forgotten.
  await e.reconciler.reconcile(desired([desiredVm('work', { ...SECURE_BOOT, secureBoot: false })]));
  assert.deepEqual(e.starts, ['work', 'work']);
  assert.equal((await e.records.get('work')).lastError, null);
});

test('a profile requiring a TPM is refused on a PC keeping its key in a file, with the reason reported; the other VM runs', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const strict = (): DesiredVm => {
    const vm = desiredVm('work');
    return { ...vm, policy: { ...vm.policy, encryptData: true, requireTpm: true } };
  };
  const withFile = engineOn(await tempDir(t), undefined, { keys: testKeyRing('file') });
  await withFile.reconciler.reconcile(desired([strict(), desiredVm('personal')]));
  assert.deepEqual(withFile.starts, ['personal'], 'the other VM runs');
  const failed = withFile.events.find((x) => x.type === 'failed');
  assert.ok(failed, `events: ${withFile.events.map((x) => x.type).join(', ')}`);
  assert.match(
    (failed.data as { reason: string }).reason,
    /VM work requires a TPM and this PC keeps its keys in a key file/,
  );
  assert.equal((await withFile.records.get('work')).currentVersionId, null);

  // The same desired state on a PC whose key the TPM seals: both run, the data volume encrypted.
  const withTpm = engineOn(await tempDir(t), undefined, { keys: testKeyRing('tpm') });
  await withTpm.reconciler.reconcile(desired([strict(), desiredVm('personal')]));
  assert.deepEqual([...withTpm.starts].sort(), ['personal', 'work']);
});

/** What QEMU and swtpm leave in a VM's directory after it ran (the sim driver makes none). */
async function leaveFirmwareState(dataDir: string, vm: string): Promise<void> {
  const layout = volumeLayout(dataDir, vm);
  await writeFile(layout.efiVars, Buffer.alloc(4096, 1));
  await mkdir(layout.tpmState, { recursive: true });
  await writeFile(join(layout.tpmState, 'tpm2-00.permall'), Buffer.alloc(4096, 2));
  await mkdir(layout.consoleDir, { recursive: true });
  await writeFile(join(layout.consoleDir, 'boot.log'), 'console\n');
}

test('a VM no longer assigned is stopped, then its overlays, UEFI variables, TPM state and logs are deleted; its data volume is kept', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const e = engineOn(dataDir);
  await e.reconciler.reconcile(
    desired([desiredVm('work', UEFI_TPM), desiredVm('personal', UEFI_TPM)]),
  );
  for (const vm of ['work', 'personal']) {
    assert.equal((await e.hypervisor.status(vm)).state, 'running');
    await leaveFirmwareState(dataDir, vm);
  }
  const work = volumeLayout(dataDir, 'work');
  const dataVolume = (await stat(work.data)).ino;
  assert.deepEqual((await readdir(work.vmDir)).sort(), [
    'consoles',
    'data.qcow2',
    'efi-vars.fd',
    'run',
    'system.qcow2',
    'tpm',
  ]);

  // A locked device keeps every VM's files: it only stops them.
  await e.reconciler.reconcile(desired([desiredVm('personal', UEFI_TPM)], 'locked'));
  assert.equal((await e.hypervisor.status('work')).state, 'stopped');
  assert.ok((await readdir(work.vmDir)).includes('tpm'), 'kept while locked');

  // A QEMU the driver lost track of still runs in work's run directory: nothing is deleted.
  const pidfile = join(work.runDir, 'qemu.pid');
  await writeFile(pidfile, `${process.pid}\n`);
  await e.reconciler.reconcile(desired([desiredVm('personal', UEFI_TPM)]));
  assert.ok((await readdir(work.vmDir)).includes('tpm'), 'kept while its QEMU runs');
  assert.ok(e.log.warnings.includes('work: not removed: its QEMU still runs'));
  await rm(pidfile);

  // Active again, without work: work is removed, personal runs on untouched.
  await e.reconciler.reconcile(desired([desiredVm('personal', UEFI_TPM)]));
  assert.deepEqual(await readdir(work.vmDir), ['data.qcow2'], 'only the data volume is left');
  assert.equal((await stat(work.data)).ino, dataVolume);
  assert.equal((await e.hypervisor.status('personal')).state, 'running');
  assert.ok((await readdir(volumeLayout(dataDir, 'personal').vmDir)).includes('tpm'));
  assert.deepEqual(
    (await e.records.all()).map((r) => r.name),
    ['personal'],
    'work is forgotten',
  );
  const removed = e.events.filter((x) => x.type === 'vm-state' && field(x, 'state') === 'removed');
  assert.deepEqual(
    removed.map((x) => field(x, 'vm')),
    ['work'],
  );
  assert.ok(
    e.log.entries.some((l) => l.msg === 'work: removed (no longer assigned); kept data.qcow2'),
  );

  // A running VM is stopped first, then removed in the same pass.
  await e.reconciler.reconcile(desired([]));
  assert.equal((await e.hypervisor.status('personal')).state, 'stopped');
  assert.deepEqual(await readdir(volumeLayout(dataDir, 'personal').vmDir), ['data.qcow2']);
  assert.deepEqual(await e.records.all(), []);

  // The same profile coming back gets its data volume again, and fresh firmware state.
  await e.reconciler.reconcile(desired([desiredVm('work', UEFI_TPM)]));
  assert.equal((await e.hypervisor.status('work')).state, 'running');
  assert.equal((await e.records.get('work')).currentVersionId, 'ver-1');
  assert.equal((await stat(work.data)).ino, dataVolume, 'the same data volume');
  assert.ok(!(await readdir(work.vmDir)).includes('tpm'), 'no TPM state of the removed VM');
});

test("a version whose firmware gives up is rolled back at once, with the firmware's reason", async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  // os@2 does not boot: its agent never answers and its firmware says why.
  let running = '';
  const firmwareAsked: string[] = [];
  const e = engineOn(dataDir, undefined, {
    connectAgent: async () => ({
      ping: async () => {
        if (running === 'os@2') throw new Error('no answer');
      },
      exec: async () => ({ exitCode: 0 }),
      close: () => {},
    }),
    bootVerdict: async (vm) => {
      firmwareAsked.push(vm);
      return running === 'os@2'
        ? { reason: "the firmware found nothing to boot: 'No bootable device.'", isFinal: true }
        : null;
    },
  });
  const start = e.hypervisor.start.bind(e.hypervisor);
  e.hypervisor.start = async (spec) => {
    running = spec.version ?? '';
    return start(spec);
  };
  await e.reconciler.reconcile(desired([desiredVm('work', undefined, '1')]));
  assert.equal((await e.records.get('work')).currentVersionId, 'ver-1');

  const began = Date.now();
  await e.reconciler.reconcile(desired([desiredVm('work', undefined, '2')]));
  // The health check's timeout is 30 s; the firmware's verdict ends it long before.
  assert.ok(Date.now() - began < 20_000, `${Date.now() - began} ms`);
  const rolledBack = e.events.find((x) => x.type === 'rolled-back');
  assert.equal(
    rolledBack && field(rolledBack, 'reason'),
    "the firmware found nothing to boot: 'No bootable device.'",
  );
  assert.equal(running, 'os@1', 'back on the previous version');
  assert.ok(firmwareAsked.includes('work'));
});
