import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';

test("engine personal keeps the user's choice on the PC; mistakes are usage errors naming the flag", async (t) => {
  const data = await tempDir(t);
  const choice = join(data, 'personal', 'choice.json');

  const both = await runCli([
    'engine',
    'personal',
    '--image',
    'debian',
    '--disk',
    '/x',
    '--data',
    data,
  ]);
  assert.equal(both.code, 2, both.stderr);
  assert.match(both.stderr, /give --image or --disk, not both/);
  const none = await runCli(['engine', 'personal', '--data', data]);
  assert.equal(none.code, 2);
  assert.match(none.stderr, /give --image NAME or --disk FILE/);
  const badName = await runCli(['engine', 'personal', '--image', 'no/such', '--data', data]);
  assert.equal(badName.code, 2);
  assert.match(badName.stderr, /--image "no\/such": not an image name/);
  const missing = await runCli([
    'engine',
    'personal',
    '--disk',
    join(data, 'nope.qcow2'),
    '--data',
    data,
  ]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /nope\.qcow2: no such file/);
  assert.doesNotMatch(missing.stderr, /\n\s+at /, 'no stack trace');

  const chosen = await runCli(['engine', 'personal', '--image', 'debian-next', '--data', data]);
  assert.equal(chosen.code, 0, chosen.stderr);
  assert.match(chosen.stdout, /The personal VM will boot the image debian-next/);
  assert.deepEqual(JSON.parse(await readFile(choice, 'utf8')), { image: 'debian-next' });

  const disk = join(data, 'mine.qcow2');
  await writeFile(disk, 'a disk');
  const own = await runCli(['engine', 'personal', '--disk', disk, '--data', data, '--json']);
  assert.equal(own.code, 0, own.stderr);
  assert.deepEqual(JSON.parse(own.stdout), { disk });
  assert.deepEqual(JSON.parse(await readFile(choice, 'utf8')), { disk });

  // enroll checks a brought disk before it spends the token (no Center is contacted here).
  const enrol = await runCli([
    'engine',
    'enroll',
    '--center',
    'http://127.0.0.1:9',
    '--token',
    'x',
    '--personal-disk',
    join(data, 'nope.qcow2'),
    '--data',
    data,
  ]);
  assert.equal(enrol.code, 1);
  assert.match(enrol.stderr, /nope\.qcow2: no such file/);
  const enrolBoth = await runCli([
    'engine',
    'enroll',
    '--center',
    'http://127.0.0.1:9',
    '--token',
    'x',
    '--personal-disk',
    disk,
    '--personal-image',
    'debian',
    '--data',
    data,
  ]);
  assert.equal(enrolBoth.code, 2);
  assert.match(enrolBoth.stderr, /--personal-image or --personal-disk, not both/);
});
