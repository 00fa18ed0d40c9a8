import assert from 'node:assert/strict';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { z } from 'zod';
import { tempDir } from '../../test/support/fixtures.ts';
import { isBulkheadError } from '../protocol/index.ts';
import { AtomicJsonFile } from './json-file.ts';

const Schema = z.strictObject({ revision: z.number().int(), name: z.string() });
const clock = { now: () => Date.parse('2026-03-02T09:15:00Z') };

function recorder() {
  const warnings: string[] = [];
  return { warnings, warn: (_obj: object, msg: string) => void warnings.push(msg) };
}

async function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = await tempDir(t, 'bulkhead-atomic-');
  const log = recorder();
  const file = new AtomicJsonFile({
    path: join(dir, 'state.json'),
    schema: Schema,
    what: 'the test state',
    hint: 'remove it',
    clock,
    log,
  });
  return { dir, log, file };
}

test('a missing file reads as undefined; writes replace it and keep the previous as .bak', async (t) => {
  const { dir, file } = await setup(t);
  assert.equal(await file.read(), undefined);
  await file.write({ revision: 1, name: 'a' });
  assert.deepEqual(await file.read(), { revision: 1, name: 'a' });
  assert.equal((await stat(file.path)).mode & 0o777, 0o600);
  await file.write({ revision: 2, name: 'b' });
  assert.deepEqual(await file.read(), { revision: 2, name: 'b' });
  assert.deepEqual(JSON.parse(await readFile(file.backupPath, 'utf8')), { revision: 1, name: 'a' });
  // No temporary files are left behind.
  assert.deepEqual((await readdir(dir)).sort(), ['state.json', 'state.json.bak']);
});

test('a value that fails the schema is never written', async (t) => {
  const { file } = await setup(t);
  await file.write({ revision: 1, name: 'a' });
  await assert.rejects(file.write({ revision: 1.5, name: 'a' }));
  assert.deepEqual(await file.read(), { revision: 1, name: 'a' });
});

for (const [label, content] of [
  ['torn JSON', '{"revision": 2, "na'],
  ['a schema mismatch', '{"revision": "two", "name": "b"}'],
  ['an empty file', ''],
] as const) {
  test(`${label}: kept as .corrupt-<time>, the previous good copy is restored`, async (t) => {
    const { dir, file, log } = await setup(t);
    await file.write({ revision: 1, name: 'a' });
    await file.write({ revision: 2, name: 'b' });
    await writeFile(file.path, content);
    assert.deepEqual(await file.read(), { revision: 1, name: 'a' });
    const names = await readdir(dir);
    const corrupt = names.find((n) => n.startsWith('state.json.corrupt-2026-03-02T09-15-00'));
    assert.ok(corrupt, `corrupt copy kept: ${names.join(', ')}`);
    assert.equal(await readFile(join(dir, corrupt), 'utf8'), content);
    // Restored on disk too, so the next read needs no repair.
    assert.deepEqual(JSON.parse(await readFile(file.path, 'utf8')), { revision: 1, name: 'a' });
    assert.ok(log.warnings.some((w) => /corrupt/.test(w)));
  });
}

test('corrupt with no backup: an error naming the file, the kept copy and what to do', async (t) => {
  const { dir, file } = await setup(t);
  await writeFile(file.path, 'garbage');
  await assert.rejects(file.read(), (err) => {
    assert.ok(isBulkheadError(err, 'ERR_STATE_CORRUPT'));
    assert.match(err.message, /the test state in .*state\.json is corrupt \(not JSON\)/);
    assert.match(err.message, /kept as state\.json\.corrupt-/);
    assert.match(err.message, /no backup/);
    assert.equal(err.hint, 'remove it');
    return true;
  });
  assert.ok((await readdir(dir)).some((n) => n.startsWith('state.json.corrupt-')));
});

test('a read without repair changes nothing on disk', async (t) => {
  const { dir, file } = await setup(t);
  await file.write({ revision: 1, name: 'a' });
  await file.write({ revision: 2, name: 'b' });
  await writeFile(file.path, '{');
  assert.deepEqual(await file.read({ repair: false }), { revision: 1, name: 'a' });
  assert.deepEqual((await readdir(dir)).sort(), ['state.json', 'state.json.bak']);
  assert.equal(await readFile(file.path, 'utf8'), '{');
});
