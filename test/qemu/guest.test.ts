import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { buildAppVolume, buildSystemVolume } from '../../guest/build.ts';
import { tempDir, tool } from '../support/fixtures.ts';
import { testGuest } from '../support/guest.ts';

/** Reads one file of an ext4 image without mounting it. */
async function readFromImage(image: string, path: string): Promise<string> {
  return tool('debugfs', ['-R', `cat ${path}`, image], 'e2fsprogs');
}

async function listFromImage(image: string, dir: string): Promise<string[]> {
  const out = await tool('debugfs', ['-R', `ls -p ${dir}`, image], 'e2fsprogs');
  // `ls -p` lines: /inode/mode/uid/gid/name/size/
  return out
    .split('\n')
    .map((l) => l.split('/')[5])
    .filter((n): n is string => n !== undefined && n !== '' && n !== '.' && n !== '..');
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

/**
 * The paths in a gzipped cpio archive of the "newc" format (what the guest build writes), read
 * here rather than by `cpio -it`, which may exit at the trailer before the pipe feeding it is
 * drained and so fail the pipeline on a busy machine.
 */
async function initramfsEntries(initrd: string): Promise<string[]> {
  const archive = gunzipSync(await readFile(initrd));
  const entries: string[] = [];
  const align4 = (n: number) => (n + 3) & ~3;
  let at = 0;
  for (;;) {
    const magic = archive.toString('latin1', at, at + 6);
    assert.equal(magic, '070701', `a newc header at offset ${at}`);
    const field = (i: number) =>
      parseInt(archive.toString('latin1', at + 6 + i * 8, at + 14 + i * 8), 16);
    const fileSize = field(6);
    const nameSize = field(11);
    const name = archive.toString('utf8', at + 110, at + 110 + nameSize - 1);
    if (name === 'TRAILER!!!') return entries;
    entries.push(name.replace(/^\.\//, ''));
    at = align4(align4(at + 110 + nameSize) + fileSize);
  }
}

test('the guest kernel and initramfs hold busybox, qemu-ga with its libraries, modules and /init', async () => {
  const { guest } = await testGuest();
  assert.ok((await stat(guest.kernel)).size > 1024 * 1024);
  const entries = new Set(await initramfsEntries(guest.initrd));
  for (const path of ['init', 'bin/busybox', 'bin/sh', 'sbin/modprobe', 'ga/qemu-ga', 'ga/ld.so']) {
    assert.ok(entries.has(path), `initramfs has ${path}`);
  }
  assert.ok([...entries].some((e) => e.startsWith('ga/lib/libglib-2.0.so')));
  const mods = `lib/modules/${guest.kernelVersion}`;
  assert.ok(entries.has(`${mods}/modules.dep`));
  for (const ko of ['virtio_blk', 'virtio_console', 'virtio_pci', 'ext4', 'jbd2', 'mbcache']) {
    assert.ok(
      [...entries].some((e) => e.startsWith(mods) && e.endsWith(`/${ko}.ko`)),
      `initramfs has ${ko}.ko`,
    );
  }
  // A second call finds the cache instead of building again.
  const again = await testGuest();
  assert.equal(again.guest.initrd, guest.initrd);
});

test('system volumes differ like a patch: v2 adds, changes and removes files; v3 breaks the health check', async () => {
  const { volumes } = await testGuest();
  const { v1, v2 } = volumes.system;
  const v3 = volumes.system['v3-broken'];
  assert.match(await readFromImage(v1, '/etc/os-release'), /^VERSION=1$/m);
  assert.match(await readFromImage(v2, '/etc/os-release'), /^VERSION=2$/m);
  assert.match(await readFromImage(v3, '/etc/os-release'), /^VERSION=3$/m);
  assert.match(await readFromImage(v1, '/usr/libexec/health-check'), /exit 0/);
  assert.match(await readFromImage(v3, '/usr/libexec/health-check'), /exit 1/);

  const libs1 = await listFromImage(v1, '/usr/lib/bulkhead');
  const libs2 = await listFromImage(v2, '/usr/lib/bulkhead');
  assert.deepEqual(libs1.sort(), ['libcore.so', 'libextra.so']);
  assert.deepEqual(libs2.sort(), ['libcore.so', 'libnew.so']);
  assert.notEqual(
    await readFromImage(v1, '/usr/lib/bulkhead/libcore.so'),
    await readFromImage(v2, '/usr/lib/bulkhead/libcore.so'),
  );
  assert.equal(
    await readFromImage(v1, '/usr/share/doc/readme.txt'),
    await readFromImage(v2, '/usr/share/doc/readme.txt'),
  );
  assert.match(
    await tool('debugfs', ['-R', 'stat /bin/sh', v1], 'e2fsprogs'),
    /link dest: "busybox"/,
  );
  assert.equal((await stat(v1)).size, 64 * 1024 * 1024);

  const app = await readFromImage(volumes.appEditor, '/app.json');
  assert.deepEqual(JSON.parse(app), { name: 'editor', version: '1' });
});

test('volume images are reproducible: the same version gives the same bytes', async (t) => {
  const { volumes } = await testGuest();
  const dir = await tempDir(t);
  await buildSystemVolume('v1', join(dir, 'v1.img'));
  assert.equal(await sha256(join(dir, 'v1.img')), await sha256(volumes.system.v1));
  await buildAppVolume('editor', '1', join(dir, 'app.img'));
  assert.deepEqual(await readFile(join(dir, 'app.img')), await readFile(volumes.appEditor));
  await assert.rejects(buildAppVolume('Bad Name', '1', join(dir, 'x.img')), /app name/);
});
