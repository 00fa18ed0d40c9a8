// What Engine's log says about an update: every step of a good update and of one that rolls
// back, at info level, naming the VM and the versions as people know them (`os@2`), without
// the data volume's key. The real reconciler, update transaction, records and overlays
// (qemu-img) on the simulated hypervisor; goldens are small local files.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { testKeyRing, wrappedDigestForTest } from '../../../test/support/keys.ts';
import { test } from 'node:test';
import { recordingLog, type LogEntry } from '../../../test/support/engine.ts';
import { tempDir, tool } from '../../../test/support/fixtures.ts';
import { waitFor } from '../../../test/support/wait.ts';
import type { DesiredState, DesiredVm, VolumeRef } from '../../protocol/index.ts';
import { systemClock } from '../clock.ts';
import { createSimDriver } from '../hypervisor/sim.ts';
import { createReconciler } from '../reconcile.ts';
import { engineFiles } from '../state.ts';
import type { GoldenStore } from '../volumes/index.ts';
import { TransactionFiles, VmRecords } from './records.ts';

const DATA_KEY_BYTES = Buffer.alloc(32, 7);
const DATA_KEY = DATA_KEY_BYTES.toString('base64');

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

function desired(version: string, revision: number): DesiredState {
  const vm: DesiredVm = {
    name: 'work',
    profileId: 'p1',
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
    healthCheck: { timeoutSeconds: 30, command: ['/bin/true'] },
    resources: { cpus: 1, memoryMib: 256 },
    resetPolicy: 'on-update',
    lease: { days: 30, expiresAt: Date.now() + 30 * 86_400_000 },
    wrappedDataKeyDigest: wrappedDigestForTest(DATA_KEY_BYTES, 'p1'),
  };
  return {
    deviceId: 'd',
    revision,
    generatedAt: Date.now(),
    expiresAt: Date.now() + 86_400_000,
    device: { state: 'active' },
    mirrors: ['http://mirror.invalid/'],
    publishers: [],
    vms: [vm],
    commands: [],
  };
}

/**
 * Goldens that are small local raw files, "downloaded" the first time each version is asked
 * for.
 */
function localGoldens(dataDir: string): GoldenStore {
  const pulled = new Set<string>();
  return {
    ensure: async (v: VolumeRef) => {
      const path = join(dataDir, `golden-${v.versionId}.raw`);
      const isNew = !pulled.has(v.versionId);
      if (isNew) await writeFile(path, Buffer.alloc(v.size));
      pulled.add(v.versionId);
      return {
        golden: { path },
        pulled: isNew,
        downloadedBytes: isNew ? v.size : 0,
        reusedBytes: 0,
      };
    },
    list: async () => [],
    gc: async () => [],
  } as unknown as GoldenStore;
}

type ReconcilerDeps = Parameters<typeof createReconciler>[0];

/**
 * The real reconciler, update transaction, records and overlays on `hypervisor`, logging to a
 * recording log; `deps` adds or replaces what a test needs (the guest agent, a stop signal…).
 */
function engineOn(
  dataDir: string,
  hypervisor: ReturnType<typeof createSimDriver>,
  goldens: GoldenStore,
  deps: Partial<ReconcilerDeps> = {},
) {
  const clock = systemClock;
  const log = recordingLog();
  const reconciler = createReconciler({
    keys: testKeyRing(),
    dataDir,
    goldens,
    hypervisor,
    records: new VmRecords(engineFiles(dataDir, { clock, log }).engineState, clock),
    transactions: new TransactionFiles(dataDir, clock, log),
    report: async () => {},
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
    ...deps,
  });
  return { reconciler, log };
}

/** Records the version each start of `hypervisor` boots; returns a getter for the last one. */
function tracksVersion(hypervisor: ReturnType<typeof createSimDriver>): () => string {
  let running = '';
  const start = hypervisor.start.bind(hypervisor);
  hypervisor.start = async (spec) => {
    running = spec.version ?? '';
    return start(spec);
  };
  return () => running;
}

test('the log tells every step of a good update and of a rollback, by version name', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const hypervisor = createSimDriver();
  // os@3 is broken: its health check command fails; the agent answers for the version booted.
  const running = tracksVersion(hypervisor);
  const { reconciler, log } = engineOn(dataDir, hypervisor, localGoldens(dataDir), {
    connectAgent: async () => ({
      ping: async () => {},
      exec: async () => ({ exitCode: running() === 'os@3' ? 1 : 0 }),
      close: () => {},
    }),
  });
  const infos = (from: number) =>
    log.entries.slice(from).filter((e: LogEntry) => e.level === 'info' || e.level === 'warn');

  await reconciler.reconcile(desired('1', 1));
  const afterFirst = log.entries.length;

  await reconciler.reconcile(desired('2', 2));
  const good = infos(afterFirst);
  assert.deepEqual(
    good.map((e) => `${e.level} ${e.msg}`),
    [
      'info work: update from os@1 to os@2 begins',
      'info work: download of os@2 started',
      'info work: download of os@2 finished (65536 bytes downloaded, 0 reused)',
      'info work: os@2 staged',
      'info work: switching to os@2 (the switch deadline passed)',
      'info work: booted os@2; checking its health',
      'info work: health check of os@2 passed',
      'info work: committed os@2',
    ],
  );
  for (const e of good) {
    assert.equal(e.fields['component'], 'rollout', e.msg);
    assert.equal(e.fields['vm'], 'work');
    assert.deepEqual([e.fields['from'], e.fields['to']], ['os@1', 'os@2'], e.msg);
  }
  assert.equal(good[2]!.fields['downloadedBytes'], 65536);
  const afterGood = log.entries.length;

  await reconciler.reconcile(desired('3', 3));
  const rollback = infos(afterGood);
  assert.deepEqual(
    rollback.map((e) => `${e.level} ${e.msg}`),
    [
      'info work: update from os@2 to os@3 begins',
      'info work: download of os@3 started',
      'info work: download of os@3 finished (65536 bytes downloaded, 0 reused)',
      'info work: os@3 staged',
      'info work: switching to os@3 (the switch deadline passed)',
      'info work: booted os@3; checking its health',
      'info work: health check of os@3 failed: health check command exited 1',
      'info work: rolling back to os@2',
      'info work: rolled back to os@2; os@3 is marked bad (health check command exited 1)',
    ],
  );
  assert.equal(rollback[6]!.fields['reason'], 'health check command exited 1');
  // No line carries the data volume's key, in any field.
  assert.ok(!JSON.stringify(log.entries).includes(DATA_KEY));
  assert.equal(running(), 'os@2', 'the VM runs the previous version again');
});

test('Engine stopping during a health check does not roll back: the next start resumes the update', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const clock = systemClock;
  const hypervisor = createSimDriver();
  const goldens = localGoldens(dataDir);
  const engine = (signal: AbortSignal | undefined, agentAnswers: boolean) =>
    engineOn(dataDir, hypervisor, goldens, {
      // The guest agent of os@2 has not answered yet when Engine is told to stop.
      connectAgent: async () => ({
        ping: () =>
          agentAnswers
            ? Promise.resolve()
            : new Promise<void>((_, reject) =>
                signal?.addEventListener('abort', () => reject(new Error('stopped')), {
                  once: true,
                }),
              ),
        exec: async () => ({ exitCode: 0 }),
        close: () => {},
      }),
      ...(signal ? { signal } : {}),
    });

  const first = engine(undefined, true);
  await first.reconciler.reconcile(desired('1', 1));
  const stop = new AbortController();
  const stopping = engine(stop.signal, false);
  const update = stopping.reconciler.reconcile(desired('2', 2));
  await waitFor(
    'the health check of os@2',
    () =>
      stopping.log.entries.some((e) => e.msg === 'work: booted os@2; checking its health') ||
      undefined,
  );
  stop.abort();
  await update;
  const said = stopping.log.entries.map((e) => e.msg);
  assert.ok(said.includes('work: health check of os@2 interrupted'), said.join('\n'));
  assert.ok(
    !said.some((m) => /failed|rolling back/.test(m)),
    JSON.stringify(stopping.log.entries.slice(-3)),
  );
  const tx = await new TransactionFiles(dataDir, clock, recordingLog()).read('work');
  assert.equal(tx?.state, 'health-check');

  // The next Engine resumes the transaction (booting os@2 again), and os@2 is committed.
  const next = engine(undefined, true);
  await next.reconciler.reconcile(desired('2', 2));
  assert.ok(next.log.entries.some((e) => e.msg === 'work: committed os@2'));
});

test('a health check with the screen: a version whose screen stays blank is rolled back, saying so', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  const dataDir = await tempDir(t);
  const hypervisor = createSimDriver();
  // os@2 answers its agent but its screen stays black.
  const running = tracksVersion(hypervisor);
  const looked: string[] = [];
  const { reconciler, log } = engineOn(dataDir, hypervisor, localGoldens(dataDir), {
    screenVariance: async (vm) => {
      looked.push(vm);
      return running() === 'os@2' ? 0 : 420;
    },
  });
  const withScreen = (version: string, revision: number): DesiredState => {
    const state = desired(version, revision);
    state.vms[0]!.healthCheck = { timeoutSeconds: 5, screen: true };
    return state;
  };
  await reconciler.reconcile(withScreen('1', 1));
  await reconciler.reconcile(withScreen('2', 2));
  const said = log.entries.map((e) => e.msg);
  const reason = 'the screen was still blank 5 s after boot (pixel variance 0.00, at most 0.5)';
  assert.ok(said.includes(`work: health check of os@2 failed: ${reason}`), said.join('\n'));
  assert.ok(said.includes(`work: rolled back to os@1; os@2 is marked bad (${reason})`));
  assert.equal(running(), 'os@1', 'the VM runs the previous version again');
  assert.ok(
    looked.length >= 2 && looked.every((vm) => vm === 'work'),
    'the screen of work was looked at',
  );
});
