import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { debianMirrors, DebianBuildError, stripSignature } from '../../guest/debian.ts';
import { debianGuest } from '../support/debian.ts';
import { tool } from '../support/fixtures.ts';

test('the Debian guest fetches from the archive apt is configured with, deb822 or one-line', () => {
  const deb822 = [
    'Types: deb',
    'URIs: http://archive.example/debian',
    'Suites: bookworm bookworm-updates',
    'Components: main',
    '',
    'Types: deb',
    'URIs: http://security.example/debian-security/',
    'Suites: bookworm-security',
    'Components: main',
  ].join('\n');
  assert.deepEqual(
    debianMirrors({}, () => deb822),
    {
      archive: 'http://archive.example/debian',
      security: 'http://security.example/debian-security',
    },
  );
  const oneLine = 'deb [arch=amd64] http://mirror.example/debian bookworm main\n';
  assert.deepEqual(
    debianMirrors({}, () => oneLine),
    {
      archive: 'http://mirror.example/debian',
      security: 'http://mirror.example/debian-security',
    },
  );
  assert.deepEqual(
    debianMirrors({ BULKHEAD_DEBIAN_MIRROR: 'http://local.example/debian/' }, () => deb822),
    { archive: 'http://local.example/debian', security: 'http://local.example/debian-security' },
  );
  assert.throws(
    () => debianMirrors({}, () => 'deb http://other.example/ubuntu jammy main\n'),
    (err: unknown) => err instanceof DebianBuildError && /BULKHEAD_DEBIAN_MIRROR/.test(err.message),
  );
});

/** A PE32+ image of `length` bytes whose security directory points at its last `certs` bytes. */
function signedPe(length: number, certs: number): Buffer {
  const pe = Buffer.alloc(length, 0xab);
  pe.write('MZ', 0, 'latin1');
  pe.writeUInt32LE(0x80, 0x3c);
  pe.write('PE\0\0', 0x80, 'latin1');
  pe.writeUInt16LE(0x20b, 0x80 + 24);
  const security = 0x80 + 24 + 112 + 32;
  pe.writeUInt32LE(length - certs, security);
  pe.writeUInt32LE(certs, security + 4);
  return pe;
}

test('stripSignature clears the security directory and cuts the certificate table off', () => {
  const signed = signedPe(4096, 1024);
  const stripped = stripSignature(signed);
  assert.equal(stripped.length, 3072);
  const security = 0x80 + 24 + 112 + 32;
  assert.equal(stripped.readUInt32LE(security), 0);
  assert.equal(stripped.readUInt32LE(security + 4), 0);
  assert.equal(signed.readUInt32LE(security + 4), 1024, 'the input is left as it was');
  assert.throws(() => stripSignature(Buffer.alloc(512)), /not a PE image/);
});

/** The size of the PE security directory (the signature) of `path` on the disk's ESP. */
function signatureBytes(disk: string, path: string): number {
  // mtools reads the ESP in place: partition 1 starts at 1 MiB.
  const r = spawnSync('mtype', ['-i', `${disk}@@1M`, path], {
    env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
    maxBuffer: 16 * 1024 * 1024,
  });
  assert.equal(r.status, 0, `mtype ${path}: ${r.stderr?.toString()}`);
  const pe = r.stdout;
  const header = pe.readUInt32LE(0x3c);
  return pe.readUInt32LE(header + 24 + 112 + 32 + 4);
}

// Built here, in the first phase of the suite, so the QEMU tests that boot it find it built.
test('the full Debian guest: GPT with an ESP and a root, a signed loader but in v3, and v2 a real upgrade', async () => {
  await tool('mtype', ['--version'], 'mtools');
  const guest = await debianGuest();
  for (const version of ['v1', 'v2', 'v3-unsigned'] as const) {
    const dump = spawnSync('sfdisk', ['--dump', guest.disks[version]], { encoding: 'utf8' });
    assert.equal(dump.status, 0, dump.stderr);
    assert.match(dump.stdout, /^label: gpt$/m, `${version} is a GPT disk`);
    assert.match(dump.stdout, /type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B/, `${version} has an ESP`);
    assert.match(dump.stdout, /type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709/, `${version} has a root`);
  }
  assert.ok(signatureBytes(guest.disks.v1, '::/EFI/BOOT/BOOTX64.EFI') > 0, 'v1: shim is signed');
  assert.ok(signatureBytes(guest.disks.v1, '::/EFI/BOOT/grubx64.efi') > 0, 'v1: grub is signed');
  assert.equal(signatureBytes(guest.disks['v3-unsigned'], '::/EFI/BOOT/BOOTX64.EFI'), 0);
  assert.ok(
    guest.changes.added.some((p) => p.startsWith('less ')),
    `v2 adds less: ${guest.changes.added.join(', ')}`,
  );
  assert.deepEqual(guest.changes.etc, [
    '/etc/motd',
    '/etc/systemd/journald.conf.d/50-size.conf',
    '/etc/sysctl.d/90-swappiness.conf',
  ]);
  assert.deepEqual(
    guest.changes.removed.filter((p) => !p.startsWith('linux-image-')),
    [],
  );
});
