import assert from 'node:assert/strict';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { createQemuDriver, type VmSpec } from '../../src/engine/hypervisor/index.ts';
import { ovmfFiles, runFiles } from '../../src/engine/hypervisor/qemu-args.ts';
import { swtpmPid } from '../../src/engine/hypervisor/swtpm.ts';
import { isAlive } from '../../src/engine/hypervisor/alive.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import { tempDir, tool } from '../support/fixtures.ts';
import { requireQemu, runInGuest, testGuest } from '../support/guest.ts';

/*
 * UEFI (OVMF) and a TPM 2.0 (swtpm) under real QEMU: the test guest boots by direct kernel
 * boot through OVMF, sees EFI and the TPM; the variable store and the TPM state outlive the VM,
 * and the TPM state is encrypted at rest.
 */

const TPM_KEY = Buffer.alloc(32, 0x5c);

/** Share of zero bytes: a TPM's plaintext state is mostly zeros, ciphertext almost none. */
function zeroShare(bytes: Buffer): number {
  let zeros = 0;
  for (const b of bytes) if (b === 0) zeros++;
  return zeros / bytes.length;
}

test('uefi + tpm: the guest sees EFI and a TPM 2.0; vars and encrypted TPM state persist across boots and Engine restarts', async (t) => {
  await requireQemu();
  await tool('swtpm', ['--version'], 'swtpm');
  await stat(ovmfFiles(false).code).catch(() => {
    throw new Error('OVMF was not found: install the Debian package ovmf');
  });
  const { guest } = await testGuest();
  const dir = await tempDir(t);
  const varsPath = join(dir, 'efi-vars.fd');
  const stateDir = join(dir, 'tpm');
  const runDir = join(dir, 'run');
  const spec: VmSpec = {
    name: 'fw',
    cpus: 1,
    memoryMib: 256,
    kernel: { path: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    disks: [],
    policy: IsolationPolicySchema.parse({ network: 'none' }),
    runDir,
    machine: {
      firmware: 'uefi',
      secureBoot: false,
      varsPath,
      tpm: { stateDir, key: TPM_KEY },
      os: 'linux',
      devices: 'virtio',
    },
  };
  const files = runFiles(runDir);
  let driver = createQemuDriver({ accel: 'tcg', startTimeoutMs: 60_000 });
  t.after(async () => {
    await driver.stop('fw', { force: true }).catch(() => {});
    driver.close();
  });

  const probe = [
    '/bin/sh',
    '-c',
    'test -d /sys/firmware/efi && echo efi; cat /sys/class/tpm/tpm0/tpm_version_major',
  ];

  // First boot: the store is made from the template, swtpm starts before QEMU.
  await driver.start(spec);
  const tpmPid = await swtpmPid(files);
  assert.ok(tpmPid !== undefined, 'swtpm runs beside QEMU');
  const first = await runInGuest(driver, 'fw', runDir, probe);
  assert.equal(first.stdout, 'efi\n2\n', 'the guest booted through UEFI and has a TPM 2.0');

  // An Engine restart: the new driver attaches, the VM keeps its swtpm.
  driver.close();
  driver = createQemuDriver({ accel: 'tcg', startTimeoutMs: 60_000 });
  assert.equal((await driver.attach('fw', runDir)).state, 'running');
  assert.equal(await swtpmPid(files), tpmPid, 'the same swtpm serves the attached VM');

  await driver.stop('fw', { timeoutMs: 10_000 });
  assert.ok(!isAlive(tpmPid), 'a stopped VM has no swtpm');
  assert.equal(await swtpmPid(files), undefined);

  // The variable store is the VM's own (OVMF wrote to it) and outlives the VM.
  const vars = await stat(varsPath);
  const template = await readFile(ovmfFiles(false).varsTemplate);
  assert.equal(vars.size, template.length);
  assert.notDeepEqual(await readFile(varsPath), template, 'OVMF wrote its variables');

  // The TPM state outlives the VM, encrypted: its plaintext would be mostly zeros.
  const stateFiles = await readdir(stateDir);
  assert.ok(stateFiles.includes('tpm2-00.permall'), `TPM state: ${stateFiles.join(', ')}`);
  const state = await readFile(join(stateDir, 'tpm2-00.permall'));
  assert.ok(state.length > 1000);
  assert.ok(zeroShare(state) < 0.05, `the TPM state looks unencrypted (${zeroShare(state)})`);
  assert.ok(!state.includes(TPM_KEY), 'the key is not in the state');

  // Second boot: the same store (not made again) and the same TPM state, readable with the key.
  await driver.start(spec);
  const second = await runInGuest(driver, 'fw', runDir, probe);
  assert.equal(second.stdout, 'efi\n2\n');
  assert.equal((await stat(varsPath)).ino, vars.ino, 'the variable store was kept');
  await driver.stop('fw', { timeoutMs: 10_000 });
  assert.equal(await swtpmPid(files), undefined);
});
