import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../test/support/fixtures.ts';
import { exists, removeFile, replaceFile, replaceFileByCopy, replaceJsonFile } from './index.ts';

/** A temporary directory and a path in it named `name`. */
async function place(t: Parameters<typeof tempDir>[0], name: string) {
  const dir = await tempDir(t, 'bulkhead-durable-');
  return { dir, path: join(dir, name) };
}

test('replaceFile creates and replaces a file with its mode, leaving no temporary file', async (t) => {
  const { dir, path } = await place(t, 'a.bin');
  await replaceFile(path, 'one');
  assert.equal(await readFile(path, 'utf8'), 'one');
  assert.equal((await stat(path)).mode & 0o777, 0o600);
  await replaceFile(path, Buffer.from('two'), { mode: 0o644, durable: false });
  assert.equal(await readFile(path, 'utf8'), 'two');
  assert.equal((await stat(path)).mode & 0o777, 0o644);
  assert.deepEqual(await readdir(dir), ['a.bin']);
});

test('keepPreviousAs keeps the replaced content under a second name', async (t) => {
  const { dir, path } = await place(t, 'state.json');
  const bak = join(dir, 'state.json.bak');
  await replaceJsonFile(path, { n: 1 }, { keepPreviousAs: bak });
  assert.equal(await exists(bak), false, 'nothing to keep the first time');
  await replaceJsonFile(path, { n: 2 }, { keepPreviousAs: bak });
  await replaceJsonFile(path, { n: 3 }, { keepPreviousAs: bak });
  assert.deepEqual(JSON.parse(await readFile(path, 'utf8')), { n: 3 });
  assert.deepEqual(JSON.parse(await readFile(bak, 'utf8')), { n: 2 });
  assert.equal(await readFile(path, 'utf8'), '{\n  "n": 3\n}\n');
  assert.deepEqual((await readdir(dir)).sort(), ['state.json', 'state.json.bak']);
});

test('a failed replacement leaves the old file and no temporary file', async (t) => {
  const { dir, path } = await place(t, 'target');
  await replaceFile(path, 'old');
  // A directory in the way of the rename: the new content cannot land.
  const blocked = join(dir, 'blocked');
  await mkdir(join(blocked, 'inside'), { recursive: true });
  await assert.rejects(replaceFile(blocked, 'new'));
  await assert.rejects(replaceFileByCopy(path, join(dir, 'no-such-source')));
  assert.equal(await readFile(path, 'utf8'), 'old');
  assert.deepEqual((await readdir(dir)).sort(), ['blocked', 'target']);
});

test('replaceFileByCopy copies a file into place; removeFile removes it, absent or not', async (t) => {
  const { dir, path } = await place(t, 'copy');
  const source = join(dir, 'source');
  await writeFile(source, 'copied bytes');
  await replaceFileByCopy(path, source);
  assert.equal(await readFile(path, 'utf8'), 'copied bytes');
  assert.equal(await exists(path), true);
  await removeFile(path);
  await removeFile(path);
  assert.equal(await exists(path), false);
  assert.equal(await exists(dir), true);
});
