import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fixedClock } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { consoleLogName } from './hypervisor/consoles.ts';
import { engineFiles } from './state.ts';
import { formatEngineStatus, readEngineStatus } from './status.ts';
import { VmRecords } from './update/records.ts';

test('engine status names where each VM’s console logs are, and the latest one', async (t) => {
  const dataDir = await tempDir(t);
  const clock = fixedClock();
  await new VmRecords(engineFiles(dataDir).engineState, clock).update('work', (r) => r);
  const before = await readEngineStatus(dataDir);
  const consoleDir = join(dataDir, 'vms', 'work', 'consoles');
  assert.deepEqual(
    before.vms.map((v) => [v.name, v.consoleDir, v.consoleLogs]),
    [['work', consoleDir, []]],
  );

  await mkdir(consoleDir, { recursive: true });
  const failed = consoleLogName(clock.ms, 'os@3');
  const rollback = consoleLogName(clock.ms + 30_000, 'os@2');
  for (const n of [failed, rollback]) await writeFile(join(consoleDir, n), 'boot\n');
  const after = await readEngineStatus(dataDir);
  assert.deepEqual(after.vms[0]!.consoleLogs, [failed, rollback]);
  // Human output: as if enrolled, the VM's line is followed by where its consoles are.
  const lines = formatEngineStatus(
    { ...after, enrolled: true, deviceId: 'd', centerUrl: 'http://c' },
    clock.ms,
  );
  assert.ok(
    lines.includes(`  console logs  ${consoleDir} (last 2 boots; latest ${rollback})`),
    lines.join('\n'),
  );
});
