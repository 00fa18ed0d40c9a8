import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../test/support/fixtures.ts';
import { ErrorCodes } from '../protocol/index.ts';
import {
  DEFAULT_SWITCHER_PORT,
  engineConfigFromEnv,
  engineConfigValue,
  readEngineConfigFile,
  resolveEngineConfig,
} from './config.ts';
import { DEFAULT_ENGINE_DATA_DIR } from './state.ts';

test('defaults: QEMU on the default data directory, 30 s to stop a VM, Center sets the poll', () => {
  const c = resolveEngineConfig([]);
  assert.equal(c.dataDir, DEFAULT_ENGINE_DATA_DIR);
  assert.equal(c.hypervisor, 'qemu');
  assert.equal(c.stopTimeoutSeconds, 30);
  assert.equal(c.switchDeadlineSeconds, 0);
  assert.equal(c.reconcileIntervalSeconds, 5);
  assert.equal(c.dataVolumeBytes, 1024 ** 3);
  assert.equal(c.logLevel, 'info');
  assert.equal(c.pollIntervalSeconds, undefined, 'absent: the interval Center sends is used');
  assert.equal(c.kernel, undefined);
  assert.equal(c.switcherPort, DEFAULT_SWITCHER_PORT);
  assert.ok(Object.isFrozen(c));
});

test("the switcher's port: from BULKHEAD_SWITCHER_PORT, 0 for any free one, never beyond 65535", () => {
  const env = engineConfigFromEnv({ BULKHEAD_SWITCHER_PORT: '0' });
  assert.equal(resolveEngineConfig([env]).switcherPort, 0);
  assert.throws(
    () => resolveEngineConfig([{ switcherPort: 70_000 }]),
    (err: Error & { code?: string }) =>
      err.code === ErrorCodes.CONFIG_INVALID && /switcherPort/.test(err.message),
  );
});

test('later sources win: file, then environment, then flags; a relative data dir is resolved', async (t) => {
  const dir = await tempDir(t, 'bulkhead-engine-config-');
  const file = join(dir, 'engine.json');
  await writeFile(
    file,
    JSON.stringify({ dataDir: 'state', pollIntervalSeconds: 600, logLevel: 'debug' }),
  );
  const env = engineConfigFromEnv({
    BULKHEAD_POLL_INTERVAL_SECONDS: '120',
    BULKHEAD_HYPERVISOR: 'sim',
    BULKHEAD_STOP_TIMEOUT_SECONDS: '12',
    BULKHEAD_LOG_LEVEL: '',
  });
  const flags = { pollIntervalSeconds: engineConfigValue('pollIntervalSeconds', '7') };
  const c = resolveEngineConfig([await readEngineConfigFile(file), env, flags as never], '/srv');
  assert.equal(c.dataDir, '/srv/state');
  assert.equal(c.pollIntervalSeconds, 7);
  assert.equal(c.hypervisor, 'sim');
  assert.equal(c.stopTimeoutSeconds, 12);
  assert.equal(c.logLevel, 'debug', 'an empty variable sets nothing');
});

test('a bad value fails start-up naming its key', async (t) => {
  const cases: [string, Record<string, unknown>][] = [
    ['hypervisor', { hypervisor: 'xen' }],
    ['pollIntervalSeconds', { pollIntervalSeconds: 0 }],
    [
      'pollIntervalSeconds',
      { pollIntervalSeconds: engineConfigValue('pollIntervalSeconds', 'soon') },
    ],
    ['stopTimeoutSeconds', { stopTimeoutSeconds: 1.5 }],
    ['bandwidthBytesPerSec', { bandwidthBytesPerSec: 10 }],
    ['switchDeadlineSeconds', { switchDeadlineSeconds: -1 }],
    ['logLevel', { logLevel: 'loud' }],
    ['initrd', { initrd: '/boot/initrd.img' }],
    ['cmdline', { cmdline: 'console=ttyS0' }],
    ['(root)', { pollSeconds: 5 }],
  ];
  for (const [key, input] of cases) {
    await t.test(key, () => {
      assert.throws(
        () => resolveEngineConfig([input as never]),
        (err: { code?: string; message: string }) =>
          err.code === ErrorCodes.CONFIG_INVALID && err.message.includes(`"${key}"`),
      );
    });
  }
});

test('a configuration file that is missing or not JSON is refused with its path', async (t) => {
  const dir = await tempDir(t, 'bulkhead-engine-config-');
  const bad = join(dir, 'bad.json');
  await writeFile(bad, '{ nope');
  for (const path of [bad, join(dir, 'missing.json')]) {
    await assert.rejects(
      readEngineConfigFile(path),
      (err: { code?: string; message: string }) =>
        err.code === ErrorCodes.CONFIG_INVALID && err.message.includes(path),
    );
  }
});
