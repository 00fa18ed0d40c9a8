import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { DesiredState, DesiredVm } from '../protocol/index.ts';
import { plan, type PlanInput, type Step, type VmFacts } from './reconcile.ts';
import { beginTransaction } from './update/machine.ts';
import { releaseKey, type Release } from './volumes/index.ts';
import { systemRelease, volumeRef } from '../../test/support/releases.ts';

const NOW = 1_000_000;
const ref = volumeRef;
const rel = systemRelease;

function desiredVm(v: string, over: Partial<DesiredVm> = {}): DesiredVm {
  return {
    name: 'work',
    profileId: 'p1',
    system: ref(v),
    apps: [],
    policy: {
      network: 'nat',
      allowedEndpoints: [],
      clipboard: false,
      usbDevices: [],
      encryptData: false,
    },
    healthCheck: { timeoutSeconds: 30 },
    resources: { cpus: 1, memoryMib: 256 },
    resetPolicy: 'on-update',
    lease: { days: 30, expiresAt: NOW + 30 * 86_400_000 },
    ...over,
  };
}

function desired(
  vms: DesiredVm[],
  state: DesiredState['device']['state'] = 'active',
): DesiredState {
  return {
    deviceId: 'd',
    revision: 1,
    generatedAt: 0,
    expiresAt: NOW * 2,
    device: { state },
    mirrors: ['http://m/'],
    publishers: [],
    vms,
    commands: [],
  };
}

function vm(
  over: Partial<VmFacts> & { current?: Release | null; previous?: Release | null } = {},
): VmFacts {
  return {
    name: 'work',
    record: {
      current: over.current ?? null,
      previous: over.previous ?? null,
      badVersions: over.record?.badVersions ?? [],
      lastFailure: over.record?.lastFailure ?? null,
    },
    transaction: over.transaction ?? null,
    run: over.run ?? 'stopped',
    ...(over.leaseExpiryHandled !== undefined
      ? { leaseExpiryHandled: over.leaseExpiryHandled }
      : {}),
    ...(over.leaseWarningGiven !== undefined ? { leaseWarningGiven: over.leaseWarningGiven } : {}),
  };
}

const input = (
  d: DesiredState | null,
  vms: VmFacts[],
  goldens: PlanInput['goldens'] = [],
): PlanInput => ({
  now: NOW,
  desired: d,
  vms,
  goldens,
});
const actions = (steps: Step[]) => steps.map((s) => `${s.action}${'vm' in s ? `:${s.vm}` : ''}`);

const cases: { name: string; input: PlanInput; expect: string[] }[] = [
  {
    name: 'no desired state yet: nothing',
    input: input(null, [vm({ run: 'running', current: rel('1') })]),
    expect: [],
  },
  {
    name: 'first install',
    input: input(desired([desiredVm('1')]), []),
    expect: ['beginUpdate:work'],
  },
  {
    name: 'converged and running: nothing',
    input: input(
      desired([desiredVm('1')]),
      [vm({ current: rel('1'), run: 'running' })],
      [{ image: 'os', versionId: 'ver-1' }],
    ),
    expect: [],
  },
  {
    name: 'installed but stopped: start it',
    input: input(desired([desiredVm('1')]), [vm({ current: rel('1'), run: 'crashed' })]),
    expect: ['startVm:work'],
  },
  {
    name: 'a VM shutting down is started only once it is down',
    input: input(desired([desiredVm('1')]), [vm({ current: rel('1'), run: 'shutting-down' })]),
    expect: [],
  },
  {
    name: 'a new version: update',
    input: input(desired([desiredVm('2')]), [vm({ current: rel('1'), run: 'running' })]),
    expect: ['beginUpdate:work'],
  },
  {
    name: 'a version marked bad is never tried again; the VM keeps running the old one',
    input: input(desired([desiredVm('3')]), [
      vm({
        current: rel('2'),
        run: 'stopped',
        record: { badVersions: [releaseKey(rel('3'))], lastFailure: null },
      }),
    ]),
    expect: ['startVm:work'],
  },
  {
    name: 'a failed download backs off before it is tried again',
    input: input(desired([desiredVm('2')]), [
      vm({
        current: rel('1'),
        run: 'running',
        record: { badVersions: [], lastFailure: { releaseKey: 'ver-2', at: NOW - 1000 } },
      }),
    ]),
    expect: [],
  },
  {
    name: 'a transaction under way is resumed, whatever else changed',
    input: input(desired([desiredVm('3')]), [
      vm({ current: rel('1'), transaction: beginTransaction('work', 'p1', rel('1'), rel('2'), 0) }),
    ]),
    expect: ['resumeUpdate:work'],
  },
  {
    name: 'an expired lease: the VM does not start and is not updated; Center is told',
    input: input(desired([desiredVm('2', { lease: { days: 1, expiresAt: NOW - 1 } })]), [
      vm({ current: rel('1') }),
    ]),
    expect: ['leaseExpired:work'],
  },
  {
    name: 'an expired lease: a running VM is shut down and Center told',
    input: input(desired([desiredVm('1', { lease: { days: 1, expiresAt: NOW - 1 } })]), [
      vm({ current: rel('1'), run: 'running' }),
    ]),
    expect: ['leaseExpired:work'],
  },
  {
    name: 'an expired lease already acted on: nothing more, no start',
    input: input(desired([desiredVm('1', { lease: { days: 1, expiresAt: NOW - 1 } })]), [
      vm({ current: rel('1'), leaseExpiryHandled: NOW - 1 }),
    ]),
    expect: [],
  },
  {
    name: 'a lease checked against the time mark: the clock set back does not extend it',
    input: {
      ...input(desired([desiredVm('1', { lease: { days: 1, expiresAt: NOW + 1000 } })]), [
        vm({ current: rel('1'), run: 'running' }),
      ]),
      leaseNow: NOW + 1000,
    },
    expect: ['leaseExpired:work'],
  },
  {
    name: 'a lease in its warning window: the user is warned, the VM starts',
    input: input(desired([desiredVm('1', { lease: { days: 10, expiresAt: NOW + 3_600_000 } })]), [
      vm({ current: rel('1') }),
    ]),
    expect: ['leaseWarning:work', 'startVm:work'],
  },
  {
    name: 'a warning already given is not repeated',
    input: input(desired([desiredVm('1', { lease: { days: 10, expiresAt: NOW + 3_600_000 } })]), [
      vm({ current: rel('1'), run: 'running', leaseWarningGiven: NOW + 3_600_000 }),
    ]),
    expect: [],
  },
  {
    name: 'a VM without a lease (the personal VM) starts whatever the time',
    input: {
      ...input(desired([desiredVm('1', { lease: undefined })]), [vm({ current: rel('1') })]),
      leaseNow: Number.POSITIVE_INFINITY,
    },
    expect: ['startVm:work'],
  },
  {
    name: 'a locked device stops its VMs and starts none',
    input: input(desired([desiredVm('1')], 'locked'), [vm({ current: rel('1'), run: 'running' })]),
    expect: ['stopVm:work'],
  },
  {
    name: 'a killed device stops its VMs',
    input: input(desired([desiredVm('2')], 'killed'), [vm({ current: rel('1'), run: 'running' })]),
    expect: ['stopVm:work'],
  },
  {
    name: 'a VM no longer assigned stops',
    input: input(desired([]), [vm({ current: rel('1'), run: 'running' })]),
    expect: ['stopVm:work'],
  },
  {
    name: 'a VM no longer assigned is removed once it is down',
    input: input(desired([]), [vm({ current: rel('1'), run: 'crashed' })]),
    expect: ['removeVm:work'],
  },
  {
    name: 'a locked device removes no VM, assigned or not',
    input: input(desired([], 'locked'), [vm({ current: rel('1'), run: 'stopped' })]),
    expect: [],
  },
  {
    name: 'goldens beyond current and previous are collected',
    input: input(
      desired([desiredVm('3')]),
      [vm({ current: rel('3'), previous: rel('2'), run: 'running' })],
      ['1', '2', '3'].map((v) => ({ image: 'os', versionId: `ver-${v}` })),
    ),
    expect: ['collectGoldens'],
  },
];

for (const c of cases) {
  test(`plan: ${c.name}`, () => {
    assert.deepEqual(actions(plan(c.input)), c.expect);
  });
}

test('plan: collection keeps current, previous and staged versions', () => {
  const steps = plan(
    input(
      desired([desiredVm('3')]),
      [vm({ current: rel('3'), previous: rel('2'), run: 'running' })],
      ['1', '2', '3'].map((v) => ({ image: 'os', versionId: `ver-${v}` })),
    ),
  );
  const step = steps[0];
  assert.equal(step?.action, 'collectGoldens');
  assert.deepEqual(
    step.action === 'collectGoldens' ? step.keep.map((k) => k.versionId).sort() : [],
    ['ver-2', 'ver-3'],
  );
});

test('plan: an update starts from the current release', () => {
  const [step] = plan(
    input(desired([desiredVm('2')]), [vm({ current: rel('1'), run: 'running' })]),
  );
  assert.ok(step?.action === 'beginUpdate');
  assert.equal(step.from?.system.versionId, 'ver-1');
  assert.equal(step.to.system.versionId, 'ver-2');
});
