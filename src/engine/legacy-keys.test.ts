import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { recordingLog } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { removeLegacyKeyFiles } from './legacy-keys.ts';

test('a desired state an older Engine kept with a data key inside is overwritten and removed at start; today’s stays', async (t) => {
  const dataDir = await tempDir(t);
  const clear = randomBytes(32).toString('base64');
  const wrapped = `bhwk1.${randomBytes(60).toString('base64url')}`;
  const vm = (fields: object) => JSON.stringify({ state: { vms: [{ name: 'work', ...fields }] } });
  // Before wrapped keys: the key in the clear; then the wrapped key inside the document.
  await writeFile(join(dataDir, 'desired-state.json'), vm({ wrappedDataKey: wrapped }));
  await writeFile(join(dataDir, 'desired-state.json.bak'), vm({ dataKey: clear }));
  await writeFile(
    join(dataDir, 'desired-state.json.corrupt-1700000000000'),
    `{"dataKey":"${clear}`,
  );
  // What today's Engine keeps (digests only) and another file that merely mentions the word.
  const today = vm({ wrappedDataKeyDigest: 'a'.repeat(64) });
  await writeFile(join(dataDir, 'engine-state.json'), '{"note":"dataKey"}');
  const log = recordingLog();

  const removed = await removeLegacyKeyFiles(dataDir, log);
  assert.deepEqual(removed, [
    'desired-state.json',
    'desired-state.json.bak',
    'desired-state.json.corrupt-1700000000000',
  ]);
  assert.deepEqual(await readdir(dataDir), ['engine-state.json']);
  assert.match(log.warnings.join('\n'), /older Engine kept with a data key inside/);
  assert.doesNotMatch(JSON.stringify(log.entries), new RegExp(clear.slice(0, 16)));

  // Today's document is left alone, and a second start removes nothing.
  await writeFile(join(dataDir, 'desired-state.json'), today);
  assert.deepEqual(await removeLegacyKeyFiles(dataDir, log), []);
  assert.equal(await readFile(join(dataDir, 'desired-state.json'), 'utf8'), today);
  // No data directory yet (before enrolment): nothing to do.
  assert.deepEqual(await removeLegacyKeyFiles(join(dataDir, 'none'), log), []);
});
