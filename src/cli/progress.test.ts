import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ProgressBar, formatBytes } from './progress.ts';

function fakeStream() {
  const writes: string[] = [];
  const stream = { columns: 80, isTTY: true, write: (s: string) => writes.push(s) > 0 };
  return { writes, stream: stream as unknown as NodeJS.WriteStream };
}

test('the progress bar draws on a terminal and clears its line when done', () => {
  const { writes, stream } = fakeStream();
  const bar = new ProgressBar(stream, true);
  bar.update('download', 512 * 1024, 1024 * 1024);
  const first = writes[0]!;
  assert.ok(first.startsWith('\r') && first.endsWith('\u001b[K'), JSON.stringify(first));
  assert.match(first, /download +█+░+ +50% +512\.0 KiB \/ 1\.0 MiB/);
  bar.update('download', 1024 * 1024, 1024 * 1024);
  assert.match(writes.at(-1)!, /100%/);
  bar.done();
  assert.equal(writes.at(-1), '\r\x1b[K');
});

test('the progress bar stays silent off a terminal (pipes, logs, CI)', () => {
  const { writes, stream } = fakeStream();
  const bar = new ProgressBar(stream, false);
  bar.update('scan', 1, 2);
  bar.done();
  assert.deepEqual(writes, []);
});

test('byte counts are shown in binary units', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(2 * 1024 ** 3), '2.0 GiB');
});
