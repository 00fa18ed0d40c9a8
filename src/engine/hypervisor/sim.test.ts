import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IsolationPolicySchema } from '../../protocol/index.ts';
import { createSimDriver } from './sim.ts';
import type { VmEvent, VmSpec } from './types.ts';

const spec = (name: string): VmSpec => ({
  name,
  cpus: 1,
  memoryMib: 256,
  runDir: `/run/${name}`,
  disks: [],
  policy: IsolationPolicySchema.parse({}),
});

test('the simulated driver keeps the contract: boot delay, stop, crash, refusals', async () => {
  const driver = createSimDriver({
    bootDelayMs: 30,
    failStart: (s) => (s.name === 'broken' ? 'injected' : undefined),
  });
  const events: VmEvent[] = [];
  driver.onEvent((e) => events.push(e));
  assert.equal((await driver.start(spec('work'))).state, 'starting');
  await assert.rejects(driver.start(spec('work')), { code: 'ERR_IN_USE' });
  await new Promise((r) => setTimeout(r, 60));
  assert.equal((await driver.status('work')).state, 'running');
  const stopped = await driver.stop('work');
  assert.deepEqual(stopped, { name: 'work', state: 'stopped', lastExit: 'guest-shutdown' });

  await driver.start(spec('personal'));
  driver.crash('personal');
  assert.equal((await driver.status('personal')).state, 'crashed');
  assert.deepEqual(
    events.filter((e) => e.name === 'personal').map((e) => e.event),
    ['exited'],
  );
  await assert.rejects(driver.start(spec('broken')), /injected/);
  assert.equal((await driver.status('unknown')).state, 'stopped');

  await driver.start(spec('hung'));
  driver.ignoreNextPowerdown('hung');
  assert.equal((await driver.stop('hung', { timeoutMs: 10 })).lastExit, 'quit');
});
