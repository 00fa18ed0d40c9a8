import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { exec, tempDir } from '../../test/support/fixtures.ts';
import { cryptoErase, qcow2LuksHeader } from './crypto-erase.ts';
import { createEncryptionKey, keysDir } from './device-keys.ts';
import { silentLog } from './log.ts';
import { engineFiles } from './state.ts';
import { ensureDataVolume, volumeLayout } from './volumes/index.ts';

/* Kill's crypto-erase: after it, nothing opens the data volume, not even the real key. */

/** Reads the whole encrypted volume with `key` (as QEMU would open it); throws when it cannot. */
async function readWithKey(path: string, key: Buffer, out: string): Promise<void> {
  await exec('qemu-img', [
    'convert',
    '--object',
    `secret,id=k,data=${key.toString('base64')}`,
    '--image-opts',
    `driver=qcow2,file.filename=${path},encrypt.key-secret=k`,
    '-O',
    'raw',
    out,
  ]);
}

test('crypto-erase destroys the keys, the desired state, the LUKS header, TPM state, overlays and goldens', async (t) => {
  const dataDir = await tempDir(t);
  const key = randomBytes(32);
  const layout = volumeLayout(dataDir, 'work');
  assert.equal(await ensureDataVolume(layout.data, { key, sizeBytes: 64 * 1024 ** 2 }), true);
  const header = await qcow2LuksHeader(layout.data);
  assert.ok(header && header.length > 0, 'an encrypted qcow2 has a LUKS header extension');
  await readWithKey(layout.data, key, join(dataDir, 'before.raw'));

  await createEncryptionKey(dataDir, 'off');
  await writeFile(layout.overlay('system'), 'overlay');
  await mkdir(layout.tpmState, { recursive: true });
  await writeFile(join(layout.tpmState, 'tpm2-00.permall'), 'tpm');
  await writeFile(layout.efiVars, 'vars');
  await mkdir(join(dataDir, 'goldens', 'os'), { recursive: true });
  await writeFile(join(dataDir, 'goldens', 'os', 'v1.raw'), 'golden');
  const desired = engineFiles(dataDir).desiredState;
  await writeFile(desired.path, '{"wrappedDataKeyDigest":"00"}');
  await writeFile(desired.backupPath, '{"wrappedDataKeyDigest":"01"}');
  await engineFiles(dataDir).wrappedKeys.save({ 'profile-work': 'bhwk1.x' });

  const summary = await cryptoErase(dataDir, silentLog);
  assert.deepEqual(summary.erasedVolumes, ['work']);
  assert.deepEqual(await readdir(layout.vmDir), ['data.qcow2'], 'only the unreadable volume');
  assert.deepEqual(
    (await readdir(dataDir)).filter((f) =>
      ['keys', 'goldens', 'desired-state.json', 'desired-state.json.bak'].includes(f),
    ),
    [],
  );
  await assert.rejects(readdir(keysDir(dataDir)), { code: 'ENOENT' });
  await assert.rejects(
    readWithKey(layout.data, key, join(dataDir, 'after.raw')),
    (err: Error & { stderr?: string }) =>
      /LUKS|header|decrypt|key/i.test(err.stderr ?? err.message),
    'the real key no longer opens it',
  );
  // Idempotent: a kill resumed after a crash does it again without failing.
  assert.deepEqual((await cryptoErase(dataDir, silentLog)).erasedVolumes, ['work']);
});

test('qcow2LuksHeader: none for a plain qcow2', async (t) => {
  const dir = await tempDir(t);
  const plain = join(dir, 'plain.qcow2');
  await ensureDataVolume(plain, { sizeBytes: 64 * 1024 ** 2 });
  assert.equal(await qcow2LuksHeader(plain), null);
});
