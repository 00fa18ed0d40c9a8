import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

test('engine screenshot: a VM that does not run is one line and exit 1; missing flags exit 2', async (t) => {
  const dir = await tempDir(t);
  const out = join(dir, 'shot.png');
  const r = await runCli(['engine', 'screenshot', '--vm', 'work', '--out', out, '--data', dir]);
  assert.equal(r.code, 1, r.stderr);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    'bulkhead engine screenshot: VM work is not running, so it has no screen — see `bulkhead engine status` for the VMs of this PC\n',
  );
  await assert.rejects(access(out), 'no file is written');

  const usage = await runCli(['engine', 'screenshot', '--vm', 'work', '--data', dir]);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--out/);
  const badName = await runCli([
    'engine',
    'screenshot',
    '--vm',
    '../x',
    '--out',
    out,
    '--data',
    dir,
  ]);
  assert.equal(badName.code, 1);
  assert.match(badName.stderr, /VM name "..\/x" is not valid/);
});
