import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { DEFAULT_ENGINE_DATA_DIR, engineFiles } from '../../src/engine/state.ts';

const exec = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));

test('the host image systemd unit runs a real engine command on the default data directory', async () => {
  const unit = await readFile(join(root, 'host/bulkhead-engine.service'), 'utf8');
  const value = (key: string) => {
    const line = unit.split('\n').find((l) => l.startsWith(`${key}=`));
    assert.ok(line, `the unit sets ${key}`);
    return line.slice(key.length + 1);
  };
  const [bin, ...args] = value('ExecStart').split(' ');
  assert.equal(bin, '/opt/bulkhead/bin/bulkhead.js');
  assert.deepEqual(args.slice(0, 2), ['engine', 'run']);
  assert.equal(args[args.indexOf('--data') + 1], DEFAULT_ENGINE_DATA_DIR);
  assert.equal(
    value('ConditionPathExists'),
    engineFiles(DEFAULT_ENGINE_DATA_DIR).identity.path,
    'the unit waits for the identity `engine enroll` writes',
  );
  // Stopping Engine must not stop the VMs it owns: they are attached again on restart.
  assert.equal(value('KillMode'), 'process');
  // The command line the unit runs is one the CLI accepts.
  const help = await exec(process.execPath, [join(root, 'bin/bulkhead.js'), ...args, '--help']);
  assert.match(help.stdout, /Usage: bulkhead engine run/);
});
