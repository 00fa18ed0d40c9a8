import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir, tool } from '../../../test/support/fixtures.ts';
import {
  ensureDataVolume,
  freshOverlay,
  overlayBacking,
  volumeLayout,
  vmDisks,
} from './overlays.ts';

async function readAt(path: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, offset);
    return buf;
  } finally {
    await fh.close();
  }
}

test('overlays: a fresh overlay forgets what the guest wrote; the golden is never written', async (t) => {
  const dir = await tempDir(t);
  const golden = join(dir, 'golden.raw');
  await writeFile(golden, Buffer.alloc(1024 * 1024, 0x11));
  const layout = volumeLayout(dir, 'work');
  const overlay = layout.overlay('system');
  await freshOverlay(golden, overlay);
  assert.equal(await overlayBacking(overlay), golden);
  await tool('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 0 64k', overlay], 'qemu-utils');
  const flat = join(dir, 'flat.raw');
  await tool('qemu-img', ['convert', '-O', 'raw', overlay, flat], 'qemu-utils');
  assert.equal((await readAt(flat, 0, 1))[0], 0x55);

  await freshOverlay(golden, overlay);
  await tool('qemu-img', ['convert', '-O', 'raw', overlay, flat], 'qemu-utils');
  assert.equal((await readAt(flat, 0, 1))[0], 0x11);
  assert.deepEqual(await readFile(golden), Buffer.alloc(1024 * 1024, 0x11));
});

test('overlays: role names stay inside the VM folder', () => {
  const layout = volumeLayout('engine', 'work');
  assert.equal(layout.overlay('app:office'), 'engine/vms/work/app-office.qcow2');
  assert.throws(() => layout.overlay('app:../x'), /not valid/);
  assert.throws(() => layout.overlay('other'), /not valid/);
  assert.throws(() => volumeLayout('engine', '../etc'), /not valid/);
  const disks = vmDisks(layout, [{ name: 'office' }]);
  assert.deepEqual(
    disks.map((d) => [d.role, d.readOnly]),
    [
      ['system', false],
      ['app:office', true],
      ['data', false],
    ],
  );
});

test('data volume: created once as ext4, encrypted with the key, never recreated', async (t) => {
  const dir = await tempDir(t);
  const key = randomBytes(32);
  const path = join(dir, 'data.qcow2');
  assert.equal(await ensureDataVolume(path, { key, sizeBytes: 64 * 1024 * 1024 }), true);
  const before = await stat(path);
  assert.equal(await ensureDataVolume(path, { key }), false);
  const after = await stat(path);
  assert.equal(after.ino, before.ino);
  assert.equal(after.mtimeMs, before.mtimeMs);

  const info = JSON.parse(
    await tool('qemu-img', ['info', '--output=json', path], 'qemu-utils'),
  ) as { encrypted?: boolean };
  assert.equal(info.encrypted, true);
  // Opened with the key in base64 as the passphrase (as the hypervisor does), it is ext4.
  const secret = join(dir, 'k');
  await writeFile(secret, key.toString('base64'), { mode: 0o600 });
  const flat = join(dir, 'flat.raw');
  await tool(
    'qemu-img',
    [
      'convert',
      '--object',
      `secret,id=k,file=${secret}`,
      '--image-opts',
      `driver=qcow2,file.filename=${path},encrypt.key-secret=k`,
      '-O',
      'raw',
      flat,
    ],
    'qemu-utils',
  );
  assert.equal((await readAt(flat, 0x438, 2)).readUInt16LE(0), 0xef53, 'ext4 magic');
  // Nothing of the key is left beside the volume.
  assert.deepEqual(await readdir(dir), ['data.qcow2', 'flat.raw', 'k']);
});
