import assert from 'node:assert/strict';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../../test/support/fixtures.ts';
import { consoleLogName, listConsoleLogs, pruneConsoleLogs } from './consoles.ts';

test('console log names sort by boot time and name the version', () => {
  const at = Date.parse('2026-11-27T19:20:00.123Z');
  assert.equal(consoleLogName(at, 'os@2'), '2026-11-27T19-20-00-123Z-os@2.log');
  assert.equal(consoleLogName(at, 'os@2+tools@3'), '2026-11-27T19-20-00-123Z-os@2+tools@3.log');
  assert.equal(consoleLogName(at, undefined), '2026-11-27T19-20-00-123Z-unknown.log');
  assert.equal(consoleLogName(at, '../x y'), '2026-11-27T19-20-00-123Z-.._x_y.log');
  assert.ok(consoleLogName(at, 'os@9') < consoleLogName(at + 1, 'os@1'));
});

test('pruning keeps the newest console logs and nothing else is touched', async (t) => {
  const dir = await tempDir(t);
  assert.deepEqual(await listConsoleLogs(join(dir, 'missing')), []);
  assert.deepEqual(await pruneConsoleLogs(join(dir, 'missing'), 5), []);
  const consoles = join(dir, 'consoles');
  await mkdir(consoles);
  const start = Date.parse('2026-11-27T19:20:00Z');
  // Written out of order: the names, not the writing order, say which boot came first.
  const names = [3, 0, 6, 1, 5, 2, 4].map((i) => consoleLogName(start + i * 60_000, `os@${i}`));
  for (const n of names) await writeFile(join(consoles, n), `boot ${n}\n`);
  await writeFile(join(consoles, 'notes.txt'), 'not a console log');

  const removed = await pruneConsoleLogs(consoles, 5);
  assert.deepEqual(removed, [
    consoleLogName(start, 'os@0'),
    consoleLogName(start + 60_000, 'os@1'),
  ]);
  const kept = await listConsoleLogs(consoles);
  assert.deepEqual(
    kept.map((n) => n.replace(/^.*Z-/, '')),
    ['os@2.log', 'os@3.log', 'os@4.log', 'os@5.log', 'os@6.log'],
  );
  assert.ok((await readdir(consoles)).includes('notes.txt'));
  assert.deepEqual(await pruneConsoleLogs(consoles, 5), []);
});
