import assert from 'node:assert/strict';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../../test/support/fixtures.ts';
import {
  FIRMWARE_LOG_TAIL,
  logLines,
  parseFirmwareLogs,
  readBootVerdict,
  readTail,
} from './firmware-log.ts';

/*
 * The firmware's verdict, on logs captured from QEMU 7.2 with Debian 12's SeaBIOS and OVMF
 * (testdata/): a virtio disk with nothing on it under each firmware, a GPT disk whose
 * \EFI\BOOT\BOOTX64.EFI is unsigned under Secure Boot and without it (where that small EFI
 * program runs and returns), a disk with a boot sector under SeaBIOS, and a kernel booted
 * directly under each.
 */

const testdata = (name: string) =>
  readFile(new URL(`./testdata/${name}`, import.meta.url), 'latin1');

test('SeaBIOS with nothing to boot: final, quoting its last words and the disk it tried', async () => {
  const verdict = parseFirmwareLogs({ firmware: await testdata('seabios-nothing-to-boot.log') });
  assert.deepEqual(verdict, {
    reason:
      "the firmware found nothing to boot: 'No bootable device.' (hard disk: 'Boot failed: not a bootable disk')",
    isFinal: true,
  });
});

test('OVMF with nothing to boot: final once it falls back to its shell, quoting the disk it tried', async () => {
  const verdict = parseFirmwareLogs({ console: await testdata('ovmf-nothing-to-boot.console') });
  assert.deepEqual(verdict, {
    reason:
      'the firmware found nothing to boot: \'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): Not Found\'',
    isFinal: true,
  });
});

test('OVMF with Secure Boot refusing an unsigned loader: final, naming Secure Boot and Access Denied', async () => {
  const verdict = parseFirmwareLogs({
    console: await testdata('ovmf-secure-boot-refused.console'),
  });
  assert.deepEqual(verdict, {
    reason:
      'Secure Boot refused the boot loader: \'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): Access Denied\'',
    isFinal: true,
  });
});

test('OVMF whose loader returns: final once it shows its boot manager', async () => {
  const verdict = parseFirmwareLogs({ console: await testdata('ovmf-loader-returned.console') });
  assert.equal(verdict?.isFinal, true);
  assert.equal(
    verdict?.reason,
    'the boot loader gave control back to the firmware: \'BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0)\'',
  );
});

test('boots that went well have no verdict', async () => {
  // A booted Linux writes on its serial console.
  const console = '[    0.000000] Linux version 6.1.0-56-cloud-amd64\n';
  for (const firmware of ['seabios-disk-boots.log', 'seabios-kernel-boots.log']) {
    assert.equal(
      parseFirmwareLogs({ firmware: await testdata(firmware), console }),
      null,
      firmware,
    );
  }
  assert.equal(
    parseFirmwareLogs({ console: await testdata('ovmf-kernel-boots.console') }),
    null,
    'a kernel booted directly under OVMF',
  );
  assert.equal(parseFirmwareLogs({}), null, 'no logs at all');
});

test('a UEFI-only disk under SeaBIOS: the boot sector runs and nothing follows, which the verdict says without calling it final', async () => {
  // The full Debian guest's GPT disk under SeaBIOS: its protective MBR has the boot signature.
  const firmware = await testdata('seabios-uefi-only-disk.log');
  assert.deepEqual(parseFirmwareLogs({ firmware }), {
    reason:
      "the firmware started the disk's boot sector ('Booting from 0000:7c00') and nothing has " +
      'shown on the serial console since: a disk with no BIOS boot loader (UEFI only) stops ' +
      'there; if so, give its profile --firmware uefi',
    isFinal: false,
  });
  assert.equal(
    parseFirmwareLogs({ firmware, console: 'GRUB loading.\n' }),
    null,
    'a loader that writes on the console is under way',
  );
});

test('a firmware still trying has a verdict that is not final', async () => {
  // OVMF has failed the disk but not yet fallen back (it may try the network next).
  const ovmf = (await testdata('ovmf-nothing-to-boot.console')).split('\n')[0]!;
  assert.deepEqual(parseFirmwareLogs({ console: ovmf }), {
    reason:
      'the firmware could not load the boot loader: \'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x2,0x0): Not Found\'',
    isFinal: false,
  });
  // SeaBIOS has failed the disk and goes on with the next device.
  const seabios = await testdata('seabios-nothing-to-boot.log');
  const cut = seabios.slice(0, seabios.indexOf('Booting from Floppy'));
  assert.deepEqual(parseFirmwareLogs({ firmware: cut }), {
    reason: "the firmware could not boot: 'Boot failed: not a bootable disk'",
    isFinal: false,
  });
});

test('only the last SeaBIOS boot counts: a reset that then boots clears the verdict', async () => {
  const failed = await testdata('seabios-nothing-to-boot.log');
  const booted = await testdata('seabios-disk-boots.log');
  const console = 'GRUB loading.\n';
  assert.equal(parseFirmwareLogs({ firmware: failed + booted, console }), null);
  assert.equal(parseFirmwareLogs({ firmware: booted + failed })?.isFinal, true);
});

test('reasons hold no control characters and quote at most 240 characters of a line', () => {
  const long = `BdsDxe: failed to load Boot0003 "${'\x1b[1mX\x07'.repeat(400)}" from PciRoot(0x0)/Pci(0x3,0x0): Access Denied\r\n`;
  const verdict = parseFirmwareLogs({ console: long });
  assert.ok(verdict);
  // eslint-disable-next-line no-control-regex -- looking for control characters
  assert.doesNotMatch(verdict.reason, /[\x00-\x1f\x7f-\x9f]/);
  assert.match(
    verdict.reason,
    /^Secure Boot refused the boot loader: 'BdsDxe: failed to load Boot0003 "XXX/,
  );
  assert.ok(verdict.reason.length < 300, `${verdict.reason.length} characters`);
  assert.deepEqual(logLines('a\x1b[2J\x1b[01;01Hb\r\nc\x00d\re\n\n'), ['ab', 'cd', 'e']);
});

test('only the tail of a log is read, from a line start', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'firmware.log');
  const failure =
    'Booting from Hard Disk...\nBoot failed: not a bootable disk\nNo bootable device.\n';
  await writeFile(path, 'x'.repeat(3 * FIRMWARE_LOG_TAIL) + '\n' + failure);
  const tail = await readTail(path);
  assert.ok(tail.length <= FIRMWARE_LOG_TAIL);
  assert.equal(tail, failure);
  // A failure further back than the tail is not read.
  await writeFile(path, failure + 'y\n'.repeat(FIRMWARE_LOG_TAIL));
  assert.doesNotMatch(await readTail(path), /No bootable device/);
  assert.equal(await readTail(join(dir, 'missing.log')), '');
});

test("a VM's verdict: its firmware.log and its newest console log", async (t) => {
  const dir = await tempDir(t);
  const runDir = join(dir, 'run');
  const consoleDir = join(dir, 'consoles');
  await mkdir(runDir);
  await mkdir(consoleDir);
  assert.equal(await readBootVerdict(runDir, consoleDir), null, 'nothing logged yet');
  await writeFile(
    join(consoleDir, '2026-01-01T00-00-00-000Z-os@1.log'),
    await testdata('ovmf-secure-boot-refused.console'),
  );
  assert.match((await readBootVerdict(runDir, consoleDir))?.reason ?? '', /^Secure Boot refused/);
  // A newer boot's console replaces it.
  await writeFile(
    join(consoleDir, '2026-01-01T00-10-00-000Z-os@2.log'),
    await testdata('ovmf-kernel-boots.console'),
  );
  assert.equal(await readBootVerdict(runDir, consoleDir), null);
  await writeFile(join(runDir, 'firmware.log'), await testdata('seabios-nothing-to-boot.log'));
  assert.match((await readBootVerdict(runDir, consoleDir))?.reason ?? '', /No bootable device/);
  // Without a console directory, the run directory's console.log is the console.
  await writeFile(join(runDir, 'firmware.log'), '');
  await writeFile(join(runDir, 'console.log'), await testdata('ovmf-nothing-to-boot.console'));
  assert.match((await readBootVerdict(runDir))?.reason ?? '', /UEFI Misc Device.*Not Found/);
});
