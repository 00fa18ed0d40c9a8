import assert from 'node:assert/strict';
import { readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  DirectoryStore,
  chunkKey,
  decodeSketches,
  diffImages,
  importImage,
  indexDeltaKey,
  packIndexKey,
  pullImage,
  sketchesKey,
  verifyImage,
} from '../../src/image/index.ts';
import type { PackIndex } from '../../src/protocol/index.ts';
import { bytesFrom, ext4Image, makeKeys, sha256Of, tempDir } from '../support/fixtures.ts';

/*
 * A patch whose new chunks are near-copies of old ones, as a package's next version is: the
 * libraries are incompressible, so only a pack frame compressed against the old chunks (which
 * a PC on v1 holds) can send less than their size.
 */
function libraries(version: 1 | 2): Record<string, Buffer> {
  const files: Record<string, Buffer> = {};
  for (let i = 0; i < 12; i++) {
    const lib = bytesFrom(`lib${i}`, 160 * 1024);
    if (version === 2 && i % 2 === 0) {
      // A rebuilt library: a few bytes differ every few KiB, and 100 bytes are new mid-file.
      for (let at = 700; at < lib.length; at += 5000)
        lib.writeUInt32LE((0xdeadbeef ^ at) >>> 0, at);
      files[`usr/lib/lib${i}.so`] = Buffer.concat([
        lib.subarray(0, 80_000),
        bytesFrom(`inserted${i}`, 100),
        lib.subarray(80_000),
      ]);
    } else files[`usr/lib/lib${i}.so`] = lib;
  }
  if (version === 2) files['usr/lib/libnew.so'] = bytesFrom('libnew', 64 * 1024);
  return files;
}

async function publish(dir: string, delta: boolean) {
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const v1 = await ext4Image(dir, 'v1', libraries(1));
  const v2 = await ext4Image(dir, 'v2', libraries(2));
  const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp'), delta };
  await importImage({ ...common, file: v1, version: '1' });
  const r2 = await importImage({ ...common, file: v2, version: '2' });
  return { keys, store, v1, v2, r2 };
}

type PackIndexV2 = Extract<PackIndex, { formatVersion: 2 }>;

async function packIndexOf(store: DirectoryStore): Promise<PackIndex> {
  return JSON.parse(
    await readFile(join(store.location, packIndexKey('os', '2', '1')), 'utf8'),
  ) as PackIndex;
}

async function deltaIndexOf(store: DirectoryStore): Promise<PackIndexV2> {
  const index = await packIndexOf(store);
  assert.equal(index.formatVersion, 2, 'frames with references need format 2');
  return index;
}

test('new chunks that resemble the parent are compressed against it and pulled from a seed that holds it', async (t) => {
  const plain = await publish(await tempDir(t), false);
  const dir = await tempDir(t);
  const { keys, store, v1, v2, r2 } = await publish(dir, true);

  assert.ok(r2.pack, 'a pack from v1 was built');
  assert.ok(
    r2.pack.deltaChunks > r2.pack.chunks / 2,
    `${r2.pack.deltaChunks} chunks have a reference`,
  );
  assert.ok(
    r2.pack.bytes < plain.r2.pack!.bytes / 3,
    `delta pack ${r2.pack.bytes} bytes, plain ${plain.r2.pack!.bytes}`,
  );
  const index = await deltaIndexOf(store);
  assert.ok(index.frames.some((f) => f.refs.length > 0));
  assert.equal((await packIndexOf(plain.store)).formatVersion, 1);

  const pulled = await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'pulled.raw'),
    seeds: [v1],
  });
  assert.equal(await sha256Of(join(dir, 'pulled.raw')), await sha256Of(v2));
  assert.ok(pulled.packFrames > 0, 'the pack was used');
  assert.ok(
    pulled.downloadedBytes < r2.pack.bytes + r2.indexBytes + 64 * 1024,
    `downloaded ${pulled.downloadedBytes}, pack ${r2.pack.bytes}`,
  );

  const report = await verifyImage(store, 'os', '2', keys.trusted);
  assert.deepEqual(report.packs, [{ from: '1', ok: true }]);
  const diff = await diffImages(store, 'os', '1', '2', keys.trusted);
  assert.equal(diff.usesPack, true);
  assert.ok(diff.downloadBytes < plain.r2.pack!.bytes / 2);
});

test('without the references at hand a pull fetches those chunks one by one, and gets the same image', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v2 } = await publish(dir, true);
  const warnings: string[] = [];
  const pulled = await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'pulled.raw'),
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(await sha256Of(join(dir, 'pulled.raw')), await sha256Of(v2));
  const index = await deltaIndexOf(store);
  const withRefs = index.frames.filter((f) => f.refs.length > 0).length;
  assert.ok(withRefs > 0);
  assert.ok(
    pulled.packFrames <= index.frames.length - withRefs,
    `${pulled.packFrames} frames fetched; ${withRefs} of ${index.frames.length} need v1's chunks`,
  );
  assert.deepEqual(warnings, [], 'nothing went wrong: the frames were never tried');
});

test('a pack index that names the wrong references spoils only its frames: their chunks come one by one', async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1, v2 } = await publish(dir, true);
  const index = await deltaIndexOf(store);
  // Each frame's references rotated: every one still a chunk of v1, none the right one.
  const all = index.frames.flatMap((f) => f.refs);
  assert.ok(all.length > 1);
  const lying: PackIndexV2 = {
    ...index,
    frames: index.frames.map((f) => ({
      ...f,
      refs: f.refs.map((d) => all[(all.indexOf(d) + 1) % all.length]!),
    })),
  };
  await writeFile(join(store.location, packIndexKey('os', '2', '1')), JSON.stringify(lying));
  const warnings: string[] = [];
  await pullImage({
    store: new DirectoryStore(store.location),
    name: 'os',
    version: '2',
    trusted: keys.trusted,
    out: join(dir, 'pulled.raw'),
    seeds: [v1],
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(await sha256Of(join(dir, 'pulled.raw')), await sha256Of(v2));
  assert.ok(
    warnings.some((w) => /damaged|does not match its digest/.test(w)),
    `warned: ${warnings.join(' | ')}`,
  );

  const report = await verifyImage(store, 'os', '2', keys.trusted);
  assert.equal(report.packs[0]?.ok, false, 'verify notices the lying index');
});

test('verify names a reference the store no longer holds', async (t) => {
  const dir = await tempDir(t);
  const { keys, store } = await publish(dir, true);
  const prefix = (await deltaIndexOf(store)).frames.find((f) => f.refs.length)!.refs[0]!;
  // The index names a reference by a prefix of its digest: the chunk file starts with it.
  const folder = join(store.location, 'chunks', prefix.slice(0, 2), prefix.slice(2, 4));
  const ref = (await readdir(folder)).find((n) => n.startsWith(prefix))!;
  await rm(join(store.location, chunkKey(ref)));
  const report = await verifyImage(store, 'os', '2', keys.trusted);
  assert.equal(report.packs[0]?.ok, false);
  assert.match(report.packs[0]?.problem ?? '', new RegExp(ref.slice(0, 16)));
});

test("an import keeps its chunks' sketches for the next one; a damaged sketch file changes nothing but the time", async (t) => {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const v1 = await ext4Image(dir, 'v1', libraries(1));
  const v2 = await ext4Image(dir, 'v2', libraries(2));
  const packOf = async (store: DirectoryStore) => {
    const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp') };
    await importImage({ ...common, file: v1, version: '1' });
    const sketches = join(store.location, sketchesKey('os', '1'));
    const kept = decodeSketches(await readFile(sketches));
    assert.ok(kept, 'v1 kept a sketch file');
    assert.ok(kept.size > 10, `${kept.size} chunks sketched`);
    return { sketches, import2: () => importImage({ ...common, file: v2, version: '2' }) };
  };

  const good = await packOf(new DirectoryStore(join(dir, 'good')));
  const fromFile = (await good.import2()).pack!;
  const damagedStore = new DirectoryStore(join(dir, 'damaged'));
  const damaged = await packOf(damagedStore);
  await writeFile(damaged.sketches, 'not a sketch file');
  assert.equal(decodeSketches(await readFile(damaged.sketches)), null);
  const fromStore = (await damaged.import2()).pack!;
  // Without the file, the parent's chunks are sketched from the store: the same references.
  assert.equal(fromStore.deltaChunks, fromFile.deltaChunks);
  assert.equal(fromStore.refs, fromFile.refs);
  assert.equal(fromStore.bytes, fromFile.bytes);
  assert.ok(decodeSketches(await readFile(join(damagedStore.location, sketchesKey('os', '2')))));
});

test("a PC holding the parent fetches the chunk index as a delta against the parent's; a damaged delta is named and the whole index read", async (t) => {
  const dir = await tempDir(t);
  const { keys, store, v1, v2, r2 } = await publish(dir, true);
  assert.ok(r2.indexDeltaBytes !== null, 'the import wrote the delta');
  assert.ok(
    r2.indexDeltaBytes < r2.indexBytes,
    `delta ${r2.indexDeltaBytes} bytes, index ${r2.indexBytes}`,
  );
  const deltaFile = join(store.location, indexDeltaKey('os', '2', '1'));
  assert.equal((await readFile(deltaFile)).length, r2.indexDeltaBytes);

  const pull = async (out: string, seeds: string[]) => {
    const counting = new DirectoryStore(store.location);
    const keysRead: string[] = [];
    const read = counting.read.bind(counting);
    counting.read = (key, max) => {
      keysRead.push(key);
      return read(key, max);
    };
    const warnings: string[] = [];
    const r = await pullImage({
      store: counting,
      name: 'os',
      version: '2',
      trusted: keys.trusted,
      out: join(dir, out),
      seeds,
      onWarning: (m) => warnings.push(m),
    });
    assert.equal(await sha256Of(join(dir, out)), await sha256Of(v2));
    return { r, keysRead, warnings };
  };
  const withParent = await pull('a.raw', [v1]);
  assert.ok(withParent.keysRead.includes(indexDeltaKey('os', '2', '1')));
  assert.ok(
    !withParent.keysRead.some((k) => k.startsWith('indexes/')),
    'the whole index was not read',
  );
  assert.deepEqual(withParent.warnings, []);

  // A seed that is not the parent: the delta is not even fetched.
  const other = await pull('b.raw', [v2]);
  assert.ok(!other.keysRead.includes(indexDeltaKey('os', '2', '1')));
  assert.ok(other.keysRead.some((k) => k.startsWith('indexes/')));

  // A damaged delta: named, and the whole index read instead; verify names it too.
  const bytes = await readFile(deltaFile);
  bytes[bytes.length >> 1]! ^= 0xff;
  await writeFile(deltaFile, bytes);
  const damaged = await pull('c.raw', [v1]);
  assert.ok(damaged.keysRead.some((k) => k.startsWith('indexes/')));
  assert.equal(damaged.warnings.length, 1, damaged.warnings.join('\n'));
  assert.match(damaged.warnings[0]!, /from-1\.index .*does not rebuild the chunk index/);
  const report = await verifyImage(store, 'os', '2', keys.trusted);
  assert.equal(report.ok, false);
  assert.match(report.packs[0]?.problem ?? '', /does not rebuild the chunk index/);
});
