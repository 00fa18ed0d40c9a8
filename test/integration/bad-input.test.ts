import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { ErrorCodes } from '../../src/protocol/index.ts';
import { DirectoryStore, importImage, pullImage } from '../../src/image/index.ts';
import { bytesFrom, exec, ext4Image, makeKeys, osFiles, tempDir } from '../support/fixtures.ts';

const code = (c: string) => (err: { code?: string }) => err.code === c;
const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

/** A small tmpfs, to fill up. Mounting needs root, as the test suite runs in CI. */
async function smallDisk(t: TestContext, size: string): Promise<string> {
  if (process.getuid?.() !== 0)
    throw new Error('the full-disk tests mount a tmpfs and must run as root');
  // Outside the test's temp dir: that one is removed while this may still be mounted.
  const mnt = await mkdtemp(join(tmpdir(), 'bulkhead-disk-'));
  await exec('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  t.after(async () => {
    await exec('umount', [mnt]);
    await rm(mnt, { recursive: true, force: true });
  });
  return mnt;
}

/** A publisher's key and image os@1, not yet imported: `importInto(store)` publishes it. */
async function publisher(t: TestContext) {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const v1 = await ext4Image(dir, 'v1', osFiles(1));
  const importInto = (store: DirectoryStore) =>
    importImage({
      file: v1,
      store,
      name: 'os',
      version: '1',
      key: keys.key,
      tempDir: join(dir, 'tmp'),
    });
  return { dir, keys, v1, importInto };
}

async function published(t: TestContext) {
  const p = await publisher(t);
  const store = new DirectoryStore(join(p.dir, 'store'));
  await p.importInto(store);
  return { ...p, store };
}

test('a full disk during pull: clear error, nothing left behind', async (t) => {
  const s = await published(t);
  const disk = await smallDisk(t, '1m');
  const out = join(disk, 'os.raw');
  await assert.rejects(
    pullImage({ store: s.store, name: 'os', version: '1', trusted: s.keys.trusted, out }),
    (err: { code?: string; message: string; hint?: string }) =>
      err.code === ErrorCodes.DISK_FULL && err.message.includes('no space left') && !!err.hint,
  );
  assert.deepEqual(await readdir(disk), []);
});

test('a full disk during import: clear error, no manifest published', async (t) => {
  const p = await publisher(t);
  const disk = await smallDisk(t, '1m');
  const store = new DirectoryStore(join(disk, 'store'));
  await assert.rejects(p.importInto(store), code(ErrorCodes.DISK_FULL));
  assert.equal(await exists(join(disk, 'store', 'manifests', 'os', '1.json')), false);
});

test('an unreadable input image is refused with ERR_INPUT_UNREADABLE', async (t) => {
  const dir = await tempDir(t);
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const badQcow = join(dir, 'bad.qcow2');
  await writeFile(
    badQcow,
    Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb]), bytesFrom('junk', 4000)]),
  );
  const inputs = {
    'missing file': join(dir, 'nope.raw'),
    'a directory': dir,
    'a corrupt qcow2': badQcow,
  };
  for (const [name, file] of Object.entries(inputs)) {
    await t.test(name, async () => {
      await assert.rejects(
        importImage({
          file,
          store,
          name: 'os',
          version: '1',
          key: keys.key,
          tempDir: join(dir, 'tmp'),
        }),
        code(ErrorCodes.INPUT_UNREADABLE),
      );
      assert.equal(await exists(join(store.location, 'manifests')), false);
    });
  }
});

test('signatures, names and manifests that must be refused are refused before anything is written', async (t) => {
  const s = await published(t);
  const manifestPath = join(s.store.location, 'manifests/os/1.json');
  const good = await readFile(manifestPath);
  const other = await makeKeys(s.dir, 'other');
  const cases: {
    name: string;
    manifest?: Buffer;
    image?: [string, string];
    trusted?: typeof s.keys.trusted;
    want: string;
  }[] = [
    {
      name: 'wrong signature',
      manifest: Buffer.from(good.toString().replace(/"size": \d+/, '"size": 4096')),
      want: ErrorCodes.MANIFEST_SIGNATURE,
    },
    {
      name: 'missing signature',
      manifest: Buffer.from(JSON.stringify({ ...JSON.parse(good.toString()), signatures: [] })),
      want: ErrorCodes.MANIFEST_UNSIGNED,
    },
    { name: 'key not trusted', trusted: other.trusted, want: ErrorCodes.UNTRUSTED_KEY },
    {
      name: 'truncated manifest',
      manifest: good.subarray(0, good.length / 2),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'garbage manifest',
      manifest: bytesFrom('garbage', 500),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    { name: 'image not there', image: ['os', '7'], want: ErrorCodes.IMAGE_NOT_FOUND },
    {
      name: 'name escaping the store',
      image: ['../../etc', 'passwd'],
      want: ErrorCodes.INVALID_NAME,
    },
    {
      name: 'version escaping the store',
      image: ['os', '../../../x'],
      want: ErrorCodes.INVALID_NAME,
    },
  ];
  for (const c of cases) {
    await t.test(c.name, async () => {
      await writeFile(manifestPath, c.manifest ?? good);
      const out = join(s.dir, `${c.name.replaceAll(' ', '-')}.raw`);
      const [name, version] = c.image ?? ['os', '1'];
      await assert.rejects(
        pullImage({ store: s.store, name, version, trusted: c.trusted ?? s.keys.trusted, out }),
        code(c.want),
      );
      assert.equal(await exists(out), false);
      assert.equal(await exists(`${out}.partial`), false);
    });
  }
  await writeFile(manifestPath, good);
});

test('an existing output is not replaced unless asked', async (t) => {
  const s = await published(t);
  const out = join(s.dir, 'taken.raw');
  await writeFile(out, 'precious');
  await assert.rejects(
    pullImage({ store: s.store, name: 'os', version: '1', trusted: s.keys.trusted, out }),
    code(ErrorCodes.OUTPUT_EXISTS),
  );
  assert.equal(await readFile(out, 'utf8'), 'precious');
  await pullImage({
    store: s.store,
    name: 'os',
    version: '1',
    trusted: s.keys.trusted,
    out,
    force: true,
  });
  assert.notEqual((await stat(out)).size, 8);
});

test('versions are immutable: importing one again is refused', async (t) => {
  const s = await published(t);
  await assert.rejects(
    importImage({ file: s.v1, store: s.store, name: 'os', version: '1', key: s.keys.key }),
    code(ErrorCodes.IMAGE_EXISTS),
  );
});
