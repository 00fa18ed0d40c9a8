import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, open, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../../test/support/fixtures.ts';
import { capGuestLog, consoleLogName, listConsoleLogs, pruneConsoleLogs } from './consoles.ts';
import { guestLogsOf } from './qemu.ts';

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

test('a flooded guest log is cut at its cap, and the writer (appending, as QEMU does) starts it over', async (t) => {
  const dir = await tempDir(t);
  const path = join(dir, 'console.log');
  // QEMU's chardev: a file opened for appending and kept open (append=on, qemu-args.ts).
  const writer = await open(path, 'a');
  t.after(() => writer.close());
  const flood = Buffer.alloc(64 * 1024, 0x41);
  for (let i = 0; i < 20; i++) await writer.write(flood);
  assert.equal(await capGuestLog(path, 1024 * 1024), true, 'over the cap: emptied');
  assert.equal((await stat(path)).size, 0);
  await writer.write(Buffer.from('after the cut\n'));
  const after = await stat(path);
  assert.equal(after.size, 14, 'the next write starts the file over, no hole before it');
  assert.equal(await readFile(path, 'utf8'), 'after the cut\n');
  assert.equal(await capGuestLog(path, 1024 * 1024), false, 'under the cap: left alone');
  assert.equal(await capGuestLog(join(dir, 'missing.log')), false);
});

test("an attached VM's logs are found on its QEMU's command line, commas unescaped", async (t) => {
  const dir = await tempDir(t);
  // A process whose command line has QEMU's log chardevs (sleep ignores the extra words).
  const child = spawn(
    'sh',
    [
      '-c',
      'sleep 30',
      'x',
      '-chardev',
      `file,id=console,path=${dir}/boot,,1.log,append=on`,
      '-chardev',
      `file,id=fwlog,path=${dir}/firmware.log,append=on`,
      '-chardev',
      'socket,id=qga,path=/tmp/qga.sock',
    ],
    { stdio: 'ignore' },
  );
  t.after(() => child.kill('SIGKILL'));
  assert.deepEqual(await guestLogsOf(child.pid!), [`${dir}/boot,1.log`, `${dir}/firmware.log`]);
  assert.deepEqual(await guestLogsOf(2 ** 22 + 12345), [], 'no such process: none');
});
