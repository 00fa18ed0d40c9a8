import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fixedClock } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { consoleLogName } from './hypervisor/consoles.ts';
import { engineFiles } from './state.ts';
import type { DesiredVm } from '../protocol/index.ts';
import { describeVm, formatEngineStatus, readEngineStatus, type VmFacts } from './status.ts';
import type { Transaction } from './update/machine.ts';
import { statusVms } from './local-api.ts';
import { TransactionFiles, VmRecords } from './update/records.ts';
import { releaseKey, type Release } from './volumes/index.ts';

test('engine status names where each VM’s console logs are, and the latest one', async (t) => {
  const dataDir = await tempDir(t);
  const clock = fixedClock();
  await new VmRecords(engineFiles(dataDir).engineState, clock).update('work', (r) => r);
  const before = await readEngineStatus(dataDir);
  const consoleDir = join(dataDir, 'vms', 'work', 'consoles');
  assert.deepEqual(
    before.vms.map((v) => [v.name, v.consoleDir, v.consoleLogs]),
    [['work', consoleDir, []]],
  );

  await mkdir(consoleDir, { recursive: true });
  const failed = consoleLogName(clock.ms, 'os@3');
  const rollback = consoleLogName(clock.ms + 30_000, 'os@2');
  for (const n of [failed, rollback]) await writeFile(join(consoleDir, n), 'boot\n');
  const after = await readEngineStatus(dataDir);
  assert.deepEqual(after.vms[0]!.consoleLogs, [failed, rollback]);
  // Human output: as if enrolled, the VM's line is followed by where its consoles are.
  const lines = formatEngineStatus(
    { ...after, enrolled: true, deviceId: 'd', centerUrl: 'http://c' },
    clock.ms,
  );
  assert.ok(
    lines.includes(`  console logs  ${consoleDir} (last 2 boots; latest ${rollback})`),
    lines.join('\n'),
  );
});

const ref = (image: string, version: string) => ({
  image,
  imageId: `${image}-id`,
  version,
  versionId: `${image}-${version}-0123456789`,
  manifestId: 'm',
  size: 1_200_000,
});
const os2: Release = { system: ref('os', '2'), apps: [] };
const os3: Release = { system: ref('os', '3'), apps: [] };
const withTools: Release = {
  system: ref('os', '2'),
  apps: [{ ...ref('tools', '3'), appId: 'a', name: 'tools' }],
};
const desiredOf = (r: Release) => ({ system: r.system, apps: r.apps }) as unknown as DesiredVm;
const tx = (state: Transaction['state'], reason: string | null = null): Transaction => ({
  vm: 'work',
  profileId: 'p',
  from: os2,
  to: os3,
  state,
  attempt: 1,
  reason,
  startedAt: 0,
  since: 0,
});
const facts = (more: Partial<VmFacts> = {}): VmFacts => ({
  name: 'work',
  record: {
    currentVersionId: os2.system.versionId,
    current: os2,
    badVersions: [],
    lastError: null,
    transaction: { state: 'idle', targetVersionId: null },
  },
  transaction: undefined,
  desired: desiredOf(os2),
  deviceState: 'active',
  killed: false,
  run: 'running',
  ...more,
});

test('engine status says in words what each VM is doing, versions by name', () => {
  const rolledBack = {
    ...facts().record,
    badVersions: [releaseKey(os3)],
    lastError: { code: 'ERR_HEALTH_CHECK', message: 'health check command exited 1', at: 0 },
  };
  const cases: [string, VmFacts, string, string][] = [
    ['healthy', facts(), 'running', 'work: running and healthy on os@2'],
    [
      'with apps',
      facts({ record: { ...facts().record, current: withTools }, desired: desiredOf(withTools) }),
      'running',
      'work: running and healthy on os@2+tools@3',
    ],
    [
      'downloading',
      facts({ transaction: tx('downloading'), desired: desiredOf(os3) }),
      'updating',
      'work: updating to os@3 — downloading (1.2 MB)',
    ],
    [
      'staged',
      facts({ transaction: tx('staged'), desired: desiredOf(os3) }),
      'updating',
      'work: updating to os@3 — staged, switches when the VM is next off, when the user accepts it (bulkhead engine accept) or at the switch deadline',
    ],
    [
      'booting',
      facts({ transaction: tx('booting'), desired: desiredOf(os3) }),
      'updating',
      'work: updating to os@3 — booting',
    ],
    [
      'health check',
      facts({ transaction: tx('health-check'), desired: desiredOf(os3) }),
      'updating',
      'work: updating to os@3 — checking health',
    ],
    [
      'rolling back',
      facts({
        transaction: tx('rolling-back', 'health check command exited 1'),
        desired: desiredOf(os3),
      }),
      'updating',
      'work: updating to os@3 — rolling back to os@2: health check command exited 1',
    ],
    [
      'after a rollback the bad desired version is refused, not a target',
      facts({ record: rolledBack, desired: desiredOf(os3) }),
      'rolled-back',
      'work: rolled back from os@3 to os@2: health check command exited 1 (os@3 is refused until Center assigns another version)',
    ],
    [
      'not yet started',
      facts({ desired: desiredOf(os3) }),
      'updating',
      'work: updating to os@3 — waiting to start',
    ],
    [
      'locked',
      facts({ deviceState: 'locked', run: 'stopped' }),
      'locked',
      'work: locked — stopped until Center unlocks this PC',
    ],
    [
      'killed',
      facts({ killed: true, run: 'stopped' }),
      'killed',
      'work: killed — Center killed this PC; no VM starts again',
    ],
    ['stopped', facts({ run: 'stopped' }), 'stopped', 'work: stopped on os@2'],
    [
      'not started as configured: says why',
      facts({
        run: 'stopped',
        record: {
          ...facts().record,
          lastError: { code: 'ERR_VALIDATION', message: 'VM work cannot boot: …', at: 1 },
        },
      }),
      'stopped',
      'work: stopped on os@2 — not started: VM work cannot boot: …',
    ],
    [
      'crashed',
      facts({ run: 'crashed' }),
      'crashed',
      'work: crashed on os@2 (its QEMU is gone; see its console log)',
    ],
    [
      'an id no longer in the desired state is a short id',
      facts({
        record: { ...facts().record, current: null, currentVersionId: 'abcdef0123456789' },
        desired: undefined,
      }),
      'running',
      'work: running and healthy on version abcdef01',
    ],
  ];
  for (const [what, input, activity, summary] of cases) {
    assert.deepEqual(describeVm(input), { activity, summary }, what);
  }
});

test('engine status reads a VM’s run state from its QEMU pidfile', async (t) => {
  const dataDir = await tempDir(t);
  const clock = fixedClock();
  await new VmRecords(engineFiles(dataDir).engineState, clock).update('work', (r) => r);
  const runDir = join(dataDir, 'vms', 'work', 'run');
  const read = async () => (await readEngineStatus(dataDir)).vms[0]!;
  assert.equal((await read()).activity, 'stopped');
  assert.equal((await read()).summary, 'work: stopped with nothing installed');
  await mkdir(runDir, { recursive: true });
  await writeFile(join(runDir, 'qemu.pid'), `${process.pid}\n`);
  assert.equal((await read()).activity, 'running');
  // A pid that cannot be alive: the QEMU is gone and nobody cleaned up after it.
  await writeFile(join(runDir, 'qemu.pid'), '2147483646\n');
  assert.equal((await read()).activity, 'crashed');
});

test("the switcher's view of a VM: its version, a staged update's prompt and its last outcome", async (t) => {
  const dataDir = await tempDir(t);
  const clock = fixedClock();
  const records = new VmRecords(engineFiles(dataDir).engineState, clock);
  await records.update('work', (r) => ({
    ...r,
    current: os2,
    currentVersionId: os2.system.versionId,
    lastOutcome: {
      result: 'rolled-back',
      version: 'os@2',
      failed: 'os@3',
      reason: 'the guest agent did not answer',
      at: clock.ms - 60_000,
    },
  }));
  const transactions = new TransactionFiles(dataDir, clock);
  await transactions.write('work', {
    vm: 'work',
    profileId: 'p',
    from: os2,
    to: os3,
    state: 'staged',
    attempt: 0,
    reason: null,
    startedAt: clock.ms - 5000,
    since: clock.ms - 1000,
  });
  const [vm] = await statusVms(dataDir, 3_600_000)();
  assert.equal(vm!.kind, 'work');
  assert.equal(vm!.version, 'os@2');
  assert.deepEqual(vm!.update, {
    to: 'os@3',
    stagedAt: clock.ms - 1000,
    deadlineAt: clock.ms - 1000 + 3_600_000,
  });
  assert.equal(vm!.lastOutcome?.reason, 'the guest agent did not answer');
  // Once it switches, the prompt goes.
  await transactions.write('work', {
    ...(await transactions.read('work'))!,
    state: 'booting',
    attempt: 1,
  });
  assert.equal((await statusVms(dataDir)())[0]!.update, null);
});
