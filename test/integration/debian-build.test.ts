import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { debianMirrors, DebianBuildError, stripSignature } from '../../guest/debian.ts';

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

test('the guest build command refuses what it does not know, with its usage', () => {
  const script = fileURLToPath(new URL('../../guest/build.ts', import.meta.url));
  for (const args of [['--bogus'], ['--debian', '--out'], ['--debian', 'extra']]) {
    const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^usage: npm run -s guest \[-- \[--debian\] \[--out DIR\]\]$/m);
  }
});
