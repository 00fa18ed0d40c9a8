import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import {
  createQemuDriver,
  readBootVerdict,
  type VmMachine,
  type VmSpec,
} from '../../src/engine/hypervisor/index.ts';
import { ovmfFiles } from '../../src/engine/hypervisor/qemu-args.ts';
import { systemClock } from '../../src/engine/clock.ts';
import { checkHealth } from '../../src/engine/update/health.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import { tempDir, tool } from '../support/fixtures.ts';
import { requireQemu } from '../support/guest.ts';

/*
 * An image that cannot boot ends its health check early, with the firmware's reason, not after
 * the whole timeout with "the guest agent did not answer". Real QEMU (TCG here) with hand-made
 * disks, no guest: a disk with nothing on it under SeaBIOS and under OVMF, and under OVMF with
 * Secure Boot a GPT disk whose EFI system partition holds an unsigned \EFI\BOOT\BOOTX64.EFI.
 */

/** The health check's timeout: each case must end well within it. */
const TIMEOUT_SECONDS = 90;
/** What "well within" means here, from the VM's start (each case takes a few seconds). */
const EARLY_MS = 45_000;

/**
 * The smallest EFI application: a PE32+ image for x86-64 (subsystem 10) whose entry point
 * returns EFI_SUCCESS (`xor eax, eax; ret`). No signature (its security directory is empty), so
 * Secure Boot refuses it; without Secure Boot it runs and returns to the firmware.
 */
function unsignedEfiApp(): Buffer {
  const f = Buffer.alloc(0x400);
  f.write('MZ', 0, 'latin1');
  f.writeUInt32LE(0x40, 0x3c); // e_lfanew
  f.write('PE\0\0', 0x40, 'latin1');
  // COFF header: x86-64, one section, a 240-byte optional header, executable image.
  f.writeUInt16LE(0x8664, 0x44);
  f.writeUInt16LE(1, 0x46);
  f.writeUInt16LE(240, 0x54);
  f.writeUInt16LE(0x0022, 0x56);
  // Optional header (PE32+).
  const o = 0x58;
  f.writeUInt16LE(0x20b, o);
  f.writeUInt32LE(0x200, o + 4); // SizeOfCode
  f.writeUInt32LE(0x1000, o + 16); // AddressOfEntryPoint
  f.writeUInt32LE(0x1000, o + 20); // BaseOfCode
  f.writeUInt32LE(0x1000, o + 32); // SectionAlignment
  f.writeUInt32LE(0x200, o + 36); // FileAlignment
  f.writeUInt32LE(0x2000, o + 56); // SizeOfImage
  f.writeUInt32LE(0x200, o + 60); // SizeOfHeaders
  f.writeUInt16LE(10, o + 68); // Subsystem: EFI application
  f.writeBigUInt64LE(0x10000n, o + 72); // stack reserve
  f.writeBigUInt64LE(0x1000n, o + 80); // stack commit
  f.writeBigUInt64LE(0x10000n, o + 88); // heap reserve
  f.writeBigUInt64LE(0x1000n, o + 96); // heap commit
  f.writeUInt32LE(16, o + 108); // NumberOfRvaAndSizes; every directory (security too) empty
  // The .text section.
  const s = o + 240;
  f.write('.text', s, 'latin1');
  f.writeUInt32LE(0x10, s + 8); // VirtualSize
  f.writeUInt32LE(0x1000, s + 12); // VirtualAddress
  f.writeUInt32LE(0x200, s + 16); // SizeOfRawData
  f.writeUInt32LE(0x200, s + 20); // PointerToRawData
  f.writeUInt32LE(0x60000020, s + 36); // code, execute, read
  Buffer.from([0x31, 0xc0, 0xc3]).copy(f, 0x200);
  return f;
}

/** A 64 MiB disk with nothing on it. */
async function blankDisk(dir: string): Promise<string> {
  const path = join(dir, 'blank.raw');
  await writeFile(path, '');
  await truncate(path, 64 * 1024 * 1024);
  return path;
}

/** A GPT disk whose only partition is an EFI system partition holding `loader` as the default loader. */
async function espDisk(dir: string, loader: Buffer): Promise<string> {
  await tool('sfdisk', ['--version'], 'fdisk');
  await tool('mkfs.vfat', ['--help'], 'dosfstools');
  await tool('mcopy', ['--version'], 'mtools');
  const disk = await blankDisk(dir);
  const sectors = 100_000;
  const script = `label: gpt\nstart=2048, size=${sectors}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n`;
  const sfdisk = spawnSync('sfdisk', ['--quiet', disk], { input: script, encoding: 'utf8' });
  assert.equal(sfdisk.status, 0, sfdisk.stderr);
  const fat = join(dir, 'esp.fat');
  const efi = join(dir, 'BOOTX64.EFI');
  await writeFile(efi, loader);
  await tool('mkfs.vfat', ['-C', fat, String(sectors / 2)], 'dosfstools');
  await tool('mmd', ['-i', fat, '::/EFI', '::/EFI/BOOT'], 'mtools');
  await tool('mcopy', ['-i', fat, efi, '::/EFI/BOOT/BOOTX64.EFI'], 'mtools');
  const out = await open(disk, 'r+');
  try {
    await out.write(await readFile(fat), 0, undefined, 2048 * 512);
  } finally {
    await out.close();
  }
  return disk;
}

async function requireOvmf(): Promise<void> {
  await stat(ovmfFiles(true).code).catch(() => {
    throw new Error('OVMF was not found: install the Debian package ovmf');
  });
}

/**
 * Boots `disk` as the VM's system disk under `machine`, runs Engine's health check on it with
 * the firmware's logs and stops it; answers the result and how long it took from the start.
 */
async function healthOf(
  t: TestContext,
  dir: string,
  disk: string,
  machine?: Omit<VmMachine, 'varsPath' | 'os' | 'devices'>,
) {
  const runDir = join(dir, 'run');
  const consoleDir = join(dir, 'consoles');
  const spec: VmSpec = {
    name: 'unbootable',
    cpus: 1,
    memoryMib: 256,
    disks: [{ role: 'system', path: disk, format: 'raw', readOnly: false }],
    policy: IsolationPolicySchema.parse({ network: 'none' }),
    runDir,
    consoleDir,
    version: 'os@1',
    ...(machine
      ? {
          machine: {
            ...machine,
            varsPath: join(dir, 'efi-vars.fd'),
            os: 'linux',
            devices: 'virtio',
          },
        }
      : {}),
  };
  const driver = createQemuDriver({ accel: 'tcg', startTimeoutMs: 60_000 });
  t.after(async () => {
    await driver.stop(spec.name, { force: true }).catch(() => {});
    driver.close();
  });
  const startedAt = Date.now();
  const status = await driver.start(spec);
  const result = await checkHealth({
    connect: () => GuestAgent.connect(status.guestAgentSocket!, { timeoutMs: 2000 }),
    check: { timeoutSeconds: TIMEOUT_SECONDS },
    startedAt,
    clock: systemClock,
    bootVerdict: () => readBootVerdict(runDir, consoleDir),
  });
  const tookMs = Date.now() - startedAt;
  await driver.stop(spec.name, { force: true });
  return { result, tookMs };
}

test('bios: a disk with nothing bootable fails its health check early, naming the boot failure', async (t) => {
  await requireQemu();
  const dir = await tempDir(t);
  const { result, tookMs } = await healthOf(t, dir, await blankDisk(dir));
  assert.deepEqual(result, {
    healthy: false,
    reason:
      "the firmware found nothing to boot: 'No bootable device.' (hard disk: 'Boot failed: not a bootable disk')",
  });
  assert.ok(tookMs < EARLY_MS, `took ${tookMs} ms of a ${TIMEOUT_SECONDS} s timeout`);
});

test('uefi: a disk with nothing bootable fails its health check early, naming the boot failure', async (t) => {
  await requireQemu();
  await requireOvmf();
  const dir = await tempDir(t);
  const { result, tookMs } = await healthOf(t, dir, await blankDisk(dir), {
    firmware: 'uefi',
    secureBoot: false,
  });
  assert.equal(result.healthy, false);
  assert.match(
    result.healthy ? '' : result.reason,
    /^the firmware found nothing to boot: 'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot\(0x0\)\/Pci\(0x[0-9a-f]+,0x0\): Not Found'$/,
  );
  assert.ok(tookMs < EARLY_MS, `took ${tookMs} ms of a ${TIMEOUT_SECONDS} s timeout`);
});

test('uefi + Secure Boot: an unsigned \\EFI\\BOOT\\BOOTX64.EFI fails its health check early, naming Secure Boot', async (t) => {
  await requireQemu();
  await requireOvmf();
  const dir = await tempDir(t);
  const disk = await espDisk(dir, unsignedEfiApp());
  const { result, tookMs } = await healthOf(t, dir, disk, { firmware: 'uefi', secureBoot: true });
  assert.equal(result.healthy, false);
  assert.match(
    result.healthy ? '' : result.reason,
    /^Secure Boot refused the boot loader: 'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot\(0x0\)\/Pci\(0x[0-9a-f]+,0x0\): Access Denied'$/,
  );
  assert.ok(tookMs < EARLY_MS, `took ${tookMs} ms of a ${TIMEOUT_SECONDS} s timeout`);

  // Without Secure Boot the same loader runs (it only returns): it was refused for want of a
  // signature, not for being broken.
  const plain = await tempDir(t);
  const again = await healthOf(t, plain, disk, { firmware: 'uefi', secureBoot: false });
  assert.match(
    again.result.healthy ? '' : again.result.reason,
    /^the boot loader gave control back to the firmware: 'BdsDxe: starting Boot0001 "UEFI Misc Device"/,
  );
});
