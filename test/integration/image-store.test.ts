import assert from 'node:assert/strict';
import { closeSync, openSync, writeSync } from 'node:fs';
import { copyFile, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { zstdDecompressSync } from 'node:zlib';
import {
  DirectoryStore,
  decodeChunkIndex,
  diffImages,
  importImage,
  indexKey,
  listImages,
  pullImage,
  readManifest,
  verifyImage,
} from '../../src/image/index.ts';
import {
  ext4Image,
  makeKeys,
  osFiles,
  publishPair,
  sha256Of,
  tempDir,
  tool,
} from '../support/fixtures.ts';

test('import stores each chunk once, compressed, and signs a manifest that matches the image', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1, r1, r2 } = await publishPair(dir);
  assert.equal(r1.sha256, await sha256Of(v1));
  assert.equal(r1.size, (await stat(v1)).size);
  assert.equal(r1.newChunks, r1.uniqueChunks, 'a first import stores every distinct chunk');
  assert.ok(r1.storedBytes < r1.newBytes, 'chunks are stored compressed');
  assert.ok(r1.zeroBytes > r1.size / 2, 'the unused space of the file system is recorded as holes');
  assert.equal(r1.dataBytes + r1.zeroBytes, r1.size);
  // The rebuilt v2 shares most chunks with v1.
  assert.ok(
    r2.newChunks < r2.uniqueChunks / 3,
    `v2 stored ${r2.newChunks} of ${r2.uniqueChunks} chunks anew`,
  );
  assert.equal(r2.parent, '1');
  assert.ok(r2.pack && r2.pack.chunks === r2.newChunks && r2.pack.bytes > 0);

  const m = await readManifest(store, 'os', '1', keys.trusted);
  assert.equal(m.id, r1.manifest);
  assert.equal(m.body.chunker.algorithm, 'block-cdc');
  const raw = zstdDecompressSync(
    await readFile(join(store.location, indexKey(m.body.index.digest))),
  );
  const entries = decodeChunkIndex(raw, m.body.size);
  for (const e of entries) {
    assert.equal(e.offset % 4096, 0, 'chunks start on 4 KiB block edges');
    if (e.digest)
      await stat(
        join(store.location, 'chunks', e.digest.slice(0, 2), e.digest.slice(2, 4), e.digest),
      );
  }
  const listed = await listImages(store);
  assert.deepEqual(
    listed.map((i) => [i.name, i.version, i.parent, i.packs]),
    [
      ['os', '1', null, []],
      ['os', '2', '1', ['1']],
    ],
  );
  const catalog = JSON.parse(await readFile(join(store.location, 'catalog.json'), 'utf8'));
  assert.equal(catalog.images.length, 2);
});

test('pull with a seed downloads only what the seed lacks and rebuilds the exact image', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1, v2, r2 } = await publishPair(dir);
  const full = await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'full.raw'),
  });
  assert.equal(await sha256Of(join(dir, 'full.raw')), await sha256Of(v2));
  const delta = await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'delta.raw'),
    seeds: [v1],
  });
  assert.equal(delta.sha256, await sha256Of(v2));
  assert.equal(await sha256Of(join(dir, 'delta.raw')), await sha256Of(v2));
  assert.ok(delta.packFrames > 0, 'the pack from v1 was used');
  assert.ok(
    delta.downloadedBytes < full.downloadedBytes / 4,
    `delta ${delta.downloadedBytes} vs full ${full.downloadedBytes}`,
  );
  // What was downloaded is about what the pack holds (plus manifest, index, pack index).
  assert.ok(
    delta.downloadedBytes < r2.pack!.bytes + r2.indexBytes + 64 * 1024,
    `downloaded ${delta.downloadedBytes}`,
  );
  assert.ok(delta.reusedBytes > r2.dataBytes / 2);
  // The output is sparse where the image has holes.
  const st = await stat(join(dir, 'delta.raw'));
  assert.ok(st.blocks * 512 < st.size / 2, 'holes are not written');
  assert.equal(
    await stat(join(dir, 'delta.raw.partial')).catch(() => null),
    null,
    'no partial file remains',
  );
});

test('pull with the target itself as seed downloads nothing but metadata', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v2 } = await publishPair(dir);
  const r = await pullImage({
    store,
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'again.raw'),
    seeds: [v2],
  });
  assert.equal(r.chunksDownloaded, 0);
  assert.equal(await sha256Of(join(dir, 'again.raw')), await sha256Of(v2));
});

test('qcow2 input is read through qemu-img and yields the raw image', async (t) => {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const raw = await ext4Image(dir, 'v1', osFiles(1));
  const qcow = join(dir, 'v1.qcow2');
  await tool('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, qcow], 'qemu-utils');
  const store = new DirectoryStore(join(dir, 'store'));
  const r = await importImage({
    file: qcow,
    store,
    name: 'os',
    version: '1',
    key: keys.key,
    tempDir: join(dir, 'tmp'),
  });
  assert.equal(r.format, 'qcow2');
  assert.equal(r.sha256, await sha256Of(raw));
  const again = await importImage({
    file: raw,
    store,
    name: 'os',
    version: '1-raw',
    key: keys.key,
    tempDir: join(dir, 'tmp'),
  });
  assert.equal(again.newChunks, 0, 'the same content in another container stores nothing new');
});

test('verify checks every chunk and notices a damaged one; diff predicts the download', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1, v2 } = await publishPair(dir);
  const ok = await verifyImage(store, 'os', '2', keys.trusted, { file: v2 });
  assert.equal(ok.ok, true);
  assert.equal(ok.packs[0]?.ok, true);
  const bad = await verifyImage(store, 'os', '2', keys.trusted, { file: v1 });
  assert.equal(bad.file?.ok, false);

  const diff = await diffImages(store, 'os', '1', '2', keys.trusted);
  const pulled = await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'p.raw'),
    seeds: [v1],
  });
  // The prediction counts the same objects the pull fetched; the pull also reads the pack index.
  assert.ok(
    Math.abs(pulled.downloadedBytes - diff.downloadBytes) < 32 * 1024,
    `diff ${diff.downloadBytes} vs pull ${pulled.downloadedBytes}`,
  );

  // Damage one chunk in the store.
  const m = await readManifest(store, 'os', '2', keys.trusted);
  const entries = decodeChunkIndex(
    zstdDecompressSync(await readFile(join(store.location, indexKey(m.body.index.digest)))),
    m.body.size,
  );
  const victim = entries.find((e) => e.digest)!.digest!;
  const { writeFile } = await import('node:fs/promises');
  await writeFile(
    join(store.location, 'chunks', victim.slice(0, 2), victim.slice(2, 4), victim),
    Buffer.from('not zstd'),
  );
  const damaged = await verifyImage(store, 'os', '2', keys.trusted);
  assert.equal(damaged.ok, false);
  assert.deepEqual(damaged.corrupt, [victim]);
});

test('on a file system with reflinks, the seed is cloned and only changed ranges are written', async (t) => {
  if (process.getuid?.() !== 0)
    throw new Error('the reflink test loop-mounts an XFS file system and must run as root');
  const dir = await tempDir(t);
  const { keys, store, v1, v2 } = await publishPair(dir);
  const fsImage = join(dir, 'xfs.img');
  const { mkdtemp, rm, copyFile } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  await tool('truncate', ['-s', '512M', fsImage], 'coreutils');
  await tool('mkfs.xfs', ['-q', '-m', 'reflink=1', fsImage], 'xfsprogs');
  const mnt = await mkdtemp(join(tmpdir(), 'bulkhead-xfs-'));
  await tool('mount', ['-o', 'loop', fsImage, mnt], 'mount');
  t.after(async () => {
    await tool('umount', [mnt], 'mount');
    await rm(mnt, { recursive: true, force: true });
  });
  const seed = join(mnt, 'v1.raw');
  await copyFile(v1, seed);
  const out = join(mnt, 'v2.raw');
  const r = await pullImage({
    store,
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out,
    seeds: [seed],
  });
  assert.equal(r.reflinked, true);
  assert.equal(await sha256Of(out), await sha256Of(v2));
  const frag = await tool('filefrag', ['-v', out], 'e2fsprogs');
  assert.match(frag, /shared/, 'the output shares extents with its seed');
});

test('chunking is deterministic: the same image cuts the same way into any store', async (t) => {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const image = await ext4Image(dir, 'v1', osFiles(1));
  const into = (store: string) =>
    importImage({
      file: image,
      store: new DirectoryStore(join(dir, store)),
      name: 'os',
      version: '1',
      key: keys.key,
    });
  const a = await into('a');
  const b = await into('b');
  const ma = await readManifest(new DirectoryStore(join(dir, 'a')), 'os', '1', keys.trusted);
  const mb = await readManifest(new DirectoryStore(join(dir, 'b')), 'os', '1', keys.trusted);
  assert.equal(ma.body.index.digest, mb.body.index.digest);
  assert.equal(a.chunks, b.chunks);
});

test('a chunk left half-written by a crash is found and rewritten by the next import', async (t) => {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const image = await ext4Image(dir, 'v1', osFiles(1));
  const first = await importImage({ file: image, store, name: 'os', version: '1', key: keys.key });
  const m = await readManifest(store, 'os', '1', keys.trusted);
  const entries = decodeChunkIndex(
    zstdDecompressSync(await readFile(join(store.location, indexKey(m.body.index.digest)))),
    m.body.size,
  );
  const victim = entries.find((e) => e.digest)!.digest!;
  const path = join(store.location, 'chunks', victim.slice(0, 2), victim.slice(2, 4), victim);
  // As a crash before publication leaves it: chunks written, one of them cut short, and no
  // manifest (nor catalog entry) naming them.
  const { truncate, unlink } = await import('node:fs/promises');
  await truncate(path, 10);
  await unlink(join(store.location, 'manifests/os/1.json'));
  const again = await importImage({ file: image, store, name: 'os', version: '1', key: keys.key });
  assert.equal(again.newChunks, 1);
  assert.ok(first.newChunks > 1);
  assert.equal((await verifyImage(store, 'os', '1', keys.trusted)).ok, true);
});

test('a seed written to while it is copied from fails the pull, naming the seed, and leaves no image', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1 } = await publishPair(dir);
  const seed = join(dir, 'seed.raw');
  await copyFile(v1, seed);
  let touched = false;
  await assert.rejects(
    pullImage({
      store: new DirectoryStore(store.location),
      name: 'os',
      version: '2',
      trusted: keys.trusted,
      out: join(dir, 'out.raw'),
      seeds: [seed],
      onProgress: (p) => {
        if (p.phase !== 'assemble' || touched) return;
        touched = true;
        // As a VM still running on it would: a write, in place.
        const fd = openSync(seed, 'r+');
        writeSync(fd, Buffer.from('x'), 0, 1, 4096);
        closeSync(fd);
      },
    }),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'ERR_INPUT_UNREADABLE');
      assert.match(err.message, new RegExp(`seed ${seed} changed while it was in use`));
      return true;
    },
  );
  assert.ok(touched, 'the seed was copied from');
  assert.equal(await stat(join(dir, 'out.raw')).catch(() => null), null, 'no image appeared');
});
