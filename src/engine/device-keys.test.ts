import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../test/support/fixtures.ts';
import { startTestTpm } from '../../test/support/swtpm.ts';
import { ErrorCodes } from '../protocol/index.ts';
import { rawX25519, wrapDataKey } from '../signing/index.ts';
import {
  createEncryptionKey,
  destroyEncryptionKey,
  keysDir,
  loadEncryptionKey,
} from './device-keys.ts';
import { resolveTcti } from './tpm.ts';

/* The device's encryption key at rest: sealed by a real TPM (swtpm), or a key file. */

async function allBytes(dir: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) parts.push(await readFile(join(entry.parentPath, entry.name)));
  }
  return Buffer.concat(parts);
}

test('with a TPM the private key is sealed: no file holds it, and it unseals at the next start', async (t) => {
  const tpm = await startTestTpm(t);
  const dataDir = await tempDir(t);
  const made = await createEncryptionKey(dataDir, tpm.tcti);
  assert.equal(made.protection, 'tpm');
  const seed = Buffer.from(made.privateKey.export({ format: 'jwk' }).d as string, 'base64url');
  const files = (await readdir(keysDir(dataDir))).sort();
  assert.deepEqual(files, ['encryption.json', 'sealed.priv', 'sealed.pub']);
  const disk = await allBytes(dataDir);
  assert.equal(disk.indexOf(seed), -1, 'the raw private key is on no file');
  assert.ok(!disk.toString('latin1').includes(seed.toString('base64')), 'nor its base64');
  assert.ok(!disk.toString('latin1').includes(seed.toString('base64url')), 'nor base64url');

  const loaded = await loadEncryptionKey(dataDir, tpm.tcti);
  assert.equal(loaded?.protection, 'tpm');
  assert.deepEqual(rawX25519(loaded!.publicKey), rawX25519(made.publicKey));
  // A key wrapped for it opens with the unsealed key.
  const key = randomBytes(32);
  const ctx = { deviceId: 'd', profileId: 'p' };
  const { unwrapDataKey } = await import('../signing/index.ts');
  assert.deepEqual(
    unwrapDataKey(loaded!.privateKey, wrapDataKey(made.publicKey, key, ctx), ctx),
    key,
  );

  // Another TPM (other seeds) cannot unseal the blobs.
  const other = await startTestTpm(t);
  await assert.rejects(loadEncryptionKey(dataDir, other.tcti), { code: ErrorCodes.TPM });
  // A sealed key with the TPM turned off in the configuration: a clear refusal.
  await assert.rejects(loadEncryptionKey(dataDir, 'off'), {
    code: ErrorCodes.TPM,
    message: /sealed by a TPM, but Engine's tpm setting is "off"/,
  });

  await destroyEncryptionKey(dataDir);
  assert.equal(await loadEncryptionKey(dataDir, tpm.tcti), undefined);
  await destroyEncryptionKey(dataDir); // idempotent
});

test('without a TPM the key is kept in a 0600 key file (the weaker fallback), and destroyed on erase', async (t) => {
  const dataDir = await tempDir(t);
  const made = await createEncryptionKey(dataDir, 'off');
  assert.equal(made.protection, 'file');
  const file = join(keysDir(dataDir), 'encryption.key');
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  const again = await createEncryptionKey(dataDir, 'off');
  assert.deepEqual(
    rawX25519(again.publicKey),
    rawX25519(made.publicKey),
    'an unfinished enrolment reuses it',
  );
  const loaded = await loadEncryptionKey(dataDir, 'off');
  assert.deepEqual(rawX25519(loaded!.publicKey), rawX25519(made.publicKey));
  await destroyEncryptionKey(dataDir);
  await assert.rejects(stat(keysDir(dataDir)), { code: 'ENOENT' });
  assert.equal(await loadEncryptionKey(dataDir, 'off'), undefined);
});

test('tpm auto uses /dev/tpmrm0 when the PC has one, and none otherwise', async (t) => {
  const dir = await tempDir(t);
  assert.equal(await resolveTcti('auto', join(dir, 'tpmrm0')), null);
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(dir, 'tpmrm0'), '');
  assert.equal(await resolveTcti('auto', join(dir, 'tpmrm0')), `device:${join(dir, 'tpmrm0')}`);
  assert.equal(await resolveTcti('off'), null);
  assert.equal(await resolveTcti('swtpm:port=1'), 'swtpm:port=1');
});
