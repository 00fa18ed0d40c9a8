// Lock as an administrator uses it: a real Center process (`center serve --demo`, demo-os@1
// released with its chunks), the CLI as a real process, and a real Engine (engine run's own
// composition root) on the simulated hypervisor. The lock reaches the online PC over the push
// channel and stops its work VM; the VM does not start while locked, not even after an Engine
// restart, and starts again on unlock.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { createSimDriver, type VmEvent } from '../../src/engine/hypervisor/index.ts';
import { resolveEngineConfig, startEngineRun } from '../../src/engine/index.ts';
import { freePort, runCli, startCenterProcess } from '../support/cli.ts';
import { recordingLog } from '../support/engine.ts';
import { tempDir } from '../support/fixtures.ts';
import { waitFor, withTimeout } from '../support/wait.ts';

test('lock: an online PC stops its work VM over the push channel; locked, it does not start (also after an Engine restart) until unlock', async (t) => {
  const dir = await tempDir(t);
  // A fixed port: the mirror URL Center gives devices names it.
  const port = await freePort();
  const center = await startCenterProcess(t, [
    '--demo',
    '--listen',
    `127.0.0.1:${port}`,
    '--data',
    join(dir, 'center'),
  ]);
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'credentials.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const cli = async (args: string[], input?: string) => {
    const r = await runCli(args, { env, ...(input !== undefined ? { input } : {}) });
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await cli(
    ['login', '--center', center.info.url, '--username', 'admin', '--password-stdin'],
    `${center.info.initialAdmin!.password}\n`,
  );
  await cli(['groups', 'create', '--name', 'lab']);
  await cli(['profiles', 'create', '--name', 'work', '--image', 'demo-os']);
  const { token } = JSON.parse(await cli(['tokens', 'create', '--group', 'lab', '--json']));
  const dataDir = join(dir, 'engine');
  await cli([
    'engine',
    'enroll',
    '--center',
    center.info.url,
    '--token',
    token,
    '--name',
    'lab-pc',
    '--data',
    dataDir,
  ]);
  await cli(['devices', 'assign', 'lab-pc', '--profile', 'work']);

  // Engine as `engine run` builds it; a long poll interval, so only push makes it quick.
  const config = resolveEngineConfig([{ dataDir, hypervisor: 'sim', pollIntervalSeconds: 3600 }]);
  const start = async () => {
    const hypervisor = createSimDriver();
    const events: VmEvent[] = [];
    hypervisor.onEvent((e) => events.push(e));
    const starts: number[] = [];
    const realStart = hypervisor.start.bind(hypervisor);
    hypervisor.start = async (spec) => {
      starts.push(Date.now());
      return realStart(spec);
    };
    const running = await startEngineRun(config, { hypervisor, log: recordingLog() });
    t.after(() => running.stop().catch(() => {}));
    return { running, hypervisor, events, starts };
  };
  let engine = await start();
  const stateOf = async () => (await engine.hypervisor.status('work')).state;
  await waitFor('the work VM to run', async () => (await stateOf()) === 'running');

  // The lock: the time from the CLI's answer to Engine's stop of the VM.
  const issued = Date.now();
  await cli(['devices', 'lock', 'lab-pc']);
  const answered = Date.now();
  await waitFor('the work VM to stop', async () => (await stateOf()) === 'stopped');
  const shutdown = engine.events.find((e) => e.name === 'work' && e.event === 'SHUTDOWN');
  assert.ok(shutdown, 'a graceful power-down');
  // The order: the command issued, then the VM's stop (on push, not the hour-long poll).
  assert.ok(shutdown.at >= issued);
  assert.ok(shutdown.at - issued < 3_600_000);
  t.diagnostic(
    `lock: VM stopped ${shutdown.at - answered} ms after the CLI answered (${shutdown.at - issued} ms after it was run)`,
  );
  await waitFor('the lock to be reported done', async () => {
    const out = await cli(['devices', 'commands', 'lab-pc']);
    return /lock +- +done/.test(out) ? out : undefined;
  });

  // Engine restarts while locked: a whole reconcile pass later, nothing started.
  await withTimeout('engine run to stop', engine.running.stop());
  engine = await start();
  await engine.running.engine.idle();
  await engine.running.reconciler.pass();
  assert.equal(await stateOf(), 'stopped');
  assert.deepEqual(engine.starts, [], 'not started while locked');

  // Unlock: it starts again.
  await cli(['devices', 'unlock', 'lab-pc']);
  await waitFor('the work VM to run again', async () => (await stateOf()) === 'running');
  await withTimeout('engine run to stop', engine.running.stop());
});
