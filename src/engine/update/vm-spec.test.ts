import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BulkheadError, IsolationPolicySchema, type DesiredVm } from '../../protocol/index.ts';
import { volumeLayout } from '../volumes/index.ts';
import { testKeyRing, wrappedDigestForTest } from '../../../test/support/keys.ts';
import { vmSpec } from './executors.ts';

const ring = testKeyRing();

/* The VM spec Engine hands the hypervisor for a desired VM: its machine and the keys. */

const DATA_KEY = Buffer.alloc(32, 7);
const ref = {
  image: 'os',
  imageId: 'i',
  version: '1',
  versionId: 'v',
  manifestId: 'm',
  size: 1,
};

function desired(over: Partial<DesiredVm>): DesiredVm {
  return {
    name: 'work',
    profileId: 'p',
    system: ref,
    apps: [],
    policy: IsolationPolicySchema.parse({}),
    healthCheck: { timeoutSeconds: 30 },
    resources: { cpus: 1, memoryMib: 256 },
    resetPolicy: 'on-update',
    lease: { days: 30, expiresAt: Date.now() + 86_400_000 },
    ...over,
  };
}

const layout = volumeLayout('/var/lib/bulkhead', 'work');
const release = { system: ref, apps: [] };

test('no machine from Center: the spec has none (BIOS, virtio, no TPM)', () => {
  const spec = vmSpec(desired({}), release, layout, ring);
  assert.equal(spec.machine, undefined);
});

test('uefi + tpm: the vars store and TPM state sit beside the data volume; the TPM key is derived, the data volume stays plain', () => {
  const vm = desired({
    machine: { firmware: 'uefi', secureBoot: true, tpm: true, os: 'windows', devices: 'compat' },
    wrappedDataKeyDigest: wrappedDigestForTest(DATA_KEY, 'p'),
  });
  const spec = vmSpec(vm, release, layout, ring);
  assert.equal(spec.machine?.varsPath, '/var/lib/bulkhead/vms/work/efi-vars.fd');
  assert.equal(spec.machine?.tpm?.stateDir, '/var/lib/bulkhead/vms/work/tpm');
  assert.equal(spec.machine?.tpm?.key.length, 32);
  assert.ok(!spec.machine?.tpm?.key.equals(DATA_KEY), 'derived, not the data key itself');
  assert.deepEqual(
    vmSpec(vm, release, layout, ring).machine?.tpm?.key,
    spec.machine?.tpm?.key,
    'the same key at every start',
  );
  const data = spec.disks.find((d) => d.role === 'data');
  assert.equal(data?.encryptionKey, undefined, 'policy does not encrypt data');
  assert.equal(spec.machine?.os, 'windows');
  assert.equal(spec.machine?.devices, 'compat');
});

test('a TPM without a data key is refused with a clear error', () => {
  const vm = desired({
    machine: { firmware: 'bios', secureBoot: false, tpm: true, os: 'linux', devices: 'virtio' },
  });
  assert.throws(() => vmSpec(vm, release, layout, ring), {
    code: 'ERR_DATA_KEY_UNAVAILABLE',
    message: /VM work needs its data key and none came/,
  });
});

test('Secure Boot with a directly booted kernel is refused, saying why and what to change', () => {
  const kernel = { path: '/boot/vmlinuz', initrd: '/boot/initrd.img' };
  const secure = desired({
    machine: { firmware: 'uefi', secureBoot: true, tpm: false, os: 'linux', devices: 'virtio' },
  });
  assert.throws(
    () => vmSpec(secure, release, layout, ring, kernel),
    (err: unknown) => {
      assert.ok(err instanceof BulkheadError);
      assert.equal(err.code, 'ERR_VALIDATION');
      assert.match(err.message, /VM work cannot boot: its profile turns Secure Boot on/);
      assert.match(err.message, /boots a kernel directly \(\/boot\/vmlinuz\)/);
      assert.match(err.message, /Remove kernel .* from Engine's configuration/);
      assert.match(err.message, /bulkhead profiles edit work --secure-boot off/);
      return true;
    },
  );
  // Either change alone makes it bootable.
  assert.equal(vmSpec(secure, release, layout, ring).kernel, undefined, 'its own loader');
  const plain = desired({
    machine: { firmware: 'uefi', secureBoot: false, tpm: false, os: 'linux', devices: 'virtio' },
  });
  assert.equal(vmSpec(plain, release, layout, ring, kernel).kernel?.path, '/boot/vmlinuz');
});

test('an encrypted data volume gets the key unwrapped in memory; the document holds only the wrapped one', () => {
  const vm = desired({
    policy: IsolationPolicySchema.parse({ encryptData: true }),
    wrappedDataKeyDigest: wrappedDigestForTest(DATA_KEY, 'p'),
  });
  const data = vmSpec(vm, release, layout, ring).disks.find((d) => d.role === 'data');
  assert.deepEqual(data?.encryptionKey, DATA_KEY);
  assert.ok(!JSON.stringify(vm).includes(DATA_KEY.toString('base64')));
  // Wrapped for another device: refused, with the reason.
  assert.throws(() => vmSpec(vm, release, layout, testKeyRing('file', 'another-device')), {
    code: 'ERR_DATA_KEY_UNWRAP',
  });
});

test('a VM Center could send no key for is refused with Center’s reason (re-enrol)', () => {
  const vm = desired({
    policy: IsolationPolicySchema.parse({ encryptData: true }),
    keyUnavailable: 'this device enrolled before devices had encryption keys; enrol again',
  });
  assert.throws(() => vmSpec(vm, release, layout, ring), {
    code: 'ERR_DATA_KEY_UNAVAILABLE',
    message: /enrolled before devices had encryption keys/,
  });
});

test('a profile that requires a TPM is refused on a PC keeping its key in a file, runs with a TPM', () => {
  const vm = desired({
    policy: IsolationPolicySchema.parse({ encryptData: true, requireTpm: true }),
    wrappedDataKeyDigest: wrappedDigestForTest(DATA_KEY, 'p'),
  });
  assert.throws(() => vmSpec(vm, release, layout, testKeyRing('file')), {
    code: 'ERR_TPM_REQUIRED',
    message: /VM work requires a TPM and this PC keeps its keys in a key file/,
  });
  const spec = vmSpec(vm, release, layout, testKeyRing('tpm'));
  assert.deepEqual(spec.disks.find((d) => d.role === 'data')?.encryptionKey, DATA_KEY);
});
