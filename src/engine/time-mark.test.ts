import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { recordingLog } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { createTimeMark, TIME_MARK_FILE } from './time-mark.ts';

const T0 = Date.parse('2026-05-01T08:00:00Z');
const HOUR = 3_600_000;

/** A wall clock the test sets (forward or back) and a running-time clock it advances. */
function clocks() {
  const c = { wall: T0, running: 0 };
  return {
    c,
    clock: { now: () => c.wall, sleep: async () => {} },
    monotonic: () => c.running,
  };
}

test('the mark only moves forward: the clock set back while Engine runs does not move time back', async (t) => {
  const dataDir = await tempDir(t);
  const { c, clock, monotonic } = clocks();
  const mark = createTimeMark({ dataDir, clock, log: recordingLog(), monotonic });
  await mark.load();
  assert.equal(mark.now(), T0);
  c.wall += HOUR;
  c.running += HOUR;
  await mark.observe(clock.now(), 'clock');
  // Set back by a day, while 10 minutes of running time pass: time goes on from the mark.
  c.wall -= 24 * HOUR;
  c.running += 10 * 60_000;
  assert.equal(mark.now(), T0 + HOUR + 10 * 60_000);
  // Nor does a pass with the set-back clock move it back.
  await mark.observe(clock.now(), 'clock');
  assert.equal(mark.now(), T0 + HOUR + 10 * 60_000);
});

test('a verified document moves the mark to its generatedAt and is written at once; the clock at most once a minute', async (t) => {
  const dataDir = await tempDir(t);
  const { c, clock, monotonic } = clocks();
  const mark = createTimeMark({ dataDir, clock, log: recordingLog(), monotonic });
  await mark.load();
  const stored = async () =>
    JSON.parse(await readFile(join(dataDir, TIME_MARK_FILE), 'utf8')) as { mark: number };

  await mark.observe(T0 + 2 * HOUR, 'center');
  assert.equal(mark.now(), T0 + 2 * HOUR);
  assert.equal((await stored()).mark, T0 + 2 * HOUR);

  c.wall = T0 + 2 * HOUR + 30_000;
  await mark.observe(clock.now(), 'clock');
  assert.equal((await stored()).mark, T0 + 2 * HOUR, 'not written for 30 s');
  c.wall = T0 + 2 * HOUR + 61_000;
  await mark.observe(clock.now(), 'clock');
  assert.equal((await stored()).mark, T0 + 2 * HOUR + 61_000, 'written after a minute');
});

test('the mark survives a restart: the clock set back while Engine was off does not move time back', async (t) => {
  const dataDir = await tempDir(t);
  const { c, clock, monotonic } = clocks();
  const before = createTimeMark({ dataDir, clock, log: recordingLog(), monotonic });
  await before.load();
  await before.observe(T0 + 5 * HOUR, 'center');

  // Engine restarts with the clock set back a week; running time starts afresh.
  c.wall = T0 - 7 * 24 * HOUR;
  c.running = 0;
  const after = createTimeMark({ dataDir, clock, log: recordingLog(), monotonic });
  await after.load();
  assert.equal(after.now(), T0 + 5 * HOUR);
  c.running = 1000;
  assert.equal(after.now(), T0 + 5 * HOUR + 1000);
});

test('a corrupt mark file with no backup: the error names the file, every lease counts as expired until Center renews', async (t) => {
  const dataDir = await tempDir(t);
  const { clock, monotonic } = clocks();
  await writeFile(join(dataDir, TIME_MARK_FILE), '{"version":1,"mark":');
  const log = recordingLog();
  const mark = createTimeMark({ dataDir, clock, log, monotonic });
  await mark.load();
  assert.equal(mark.isUnknown(), true);
  assert.equal(mark.now(), Number.POSITIVE_INFINITY);
  const error = log.entries.find((e) => e.level === 'error');
  assert.ok(error, 'an error is logged');
  assert.match(error.msg, new RegExp(`${TIME_MARK_FILE}`));
  assert.match(error.msg, /every lease counts as expired until a desired state from Center/);
  // The corrupt file is kept aside for inspection.
  assert.ok((await readdir(dataDir)).some((n) => n.startsWith(`${TIME_MARK_FILE}.corrupt-`)));

  // A document read from the PC's own disk does not end it; one from Center does.
  await mark.observe(T0 - HOUR, 'disk');
  assert.equal(mark.now(), Number.POSITIVE_INFINITY);
  await mark.observe(T0 + HOUR, 'center');
  assert.equal(mark.isUnknown(), false);
  assert.equal(mark.now(), T0 + HOUR);
});
