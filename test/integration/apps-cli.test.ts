import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { createApiClient, endpoints } from '../../src/protocol/index.ts';
import { loadPrivateKey } from '../../src/signing/index.ts';
import { runCli, startCenterProcess, type CliRun } from '../support/cli.ts';
import { ext4Image, tempDir } from '../support/fixtures.ts';
import { encryptionKeyPem } from '../support/keys.ts';

// Optional apps from the CLI as a real process against a real `bulkhead center serve --demo`:
// an app image pushed and put in the catalog with `apps create`, offered by profiles, and
// chosen per device with `devices apps`, by name, with errors in the user's terms.

/** A failure as a person sees it: the exit code, and one line on stderr matching `message`. */
function assertFails(r: CliRun, code: number, message: RegExp): void {
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr, message);
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, 'no stack trace');
}

test('apps: created from an app image, offered by profiles, added to and removed from a device', async (t) => {
  const dir = await tempDir(t);
  const { info } = await startCenterProcess(t, ['--demo', '--data', join(dir, 'data')]);
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'admin.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const cli = (args: string[], input?: string) => runCli(args, { env, input });
  const ok = async (args: string[]) => {
    const r = await cli(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const json = async (args: string[]) => JSON.parse(await ok([...args, '--json']));
  const login = await cli(
    ['login', '--center', info.url, '--username', 'admin', '--password-stdin'],
    `${info.initialAdmin!.password}\n`,
  );
  assert.equal(login.code, 0, login.stderr);

  // An app image, pushed as kind app and released.
  await ok(['keys', 'generate', '--out', join(dir, 'keys')]);
  await ok(['publishers', 'trust', '--key', join(dir, 'keys', 'publisher.pub')]);
  const storeDir = join(dir, 'store');
  const file = await ext4Image(
    dir,
    'editor',
    { 'bin/editor': Buffer.from('#!/bin/sh\necho editor\n') },
    '4M',
  );
  await importImage({
    store: new DirectoryStore(storeDir),
    name: 'editor',
    version: '1',
    file,
    key: await loadPrivateKey(join(dir, 'keys', 'publisher.key')),
    pack: false,
  });
  await ok(['image', 'push', '--store', storeDir, 'editor', '1', '--kind', 'app', '--release']);

  assertFails(await cli(['apps', 'create', '--image', 'editor']), 2, /--name is required/);
  assertFails(
    await cli(['apps', 'create', '--name', 'editor', '--image', 'office']),
    1,
    /--image: no image "office"/,
  );
  assertFails(
    await cli(['apps', 'create', '--name', 'editor', '--image', 'demo-os']),
    2,
    /--image: .*demo-os.* holds system volumes, not app/,
  );
  assert.equal(
    await ok(['apps', 'create', '--name', 'editor', '--image', 'editor', '--title', 'Editor']),
    'Created app editor (image editor).\n',
  );
  const listed = await ok(['apps', 'list']);
  assert.match(listed, /^NAME\s+TITLE\s+IMAGE\s+RELEASED$/m);
  assert.match(listed, /^editor\s+Editor\s+editor\s+editor@1$/m);
  assert.doesNotMatch(listed, /[0-9a-f]{8}-[0-9a-f]{4}-7/, 'no ids');

  // Two profiles offer it as optional; a third every device of it gets.
  for (const name of ['work', 'lab']) {
    await ok([
      'profiles',
      'create',
      '--name',
      name,
      '--image',
      'demo-os',
      '--optional-app',
      'editor',
    ]);
  }
  await ok(['profiles', 'create', '--name', 'kiosk', '--image', 'demo-os', '--app', 'editor']);
  assertFails(
    await cli(['profiles', 'edit', 'lab', '--user-chooses-apps', 'maybe']),
    2,
    /--user-chooses-apps must be on or off, not "maybe"/,
  );
  assert.match(await ok(['profiles', 'show', 'lab']), /^ {2}app choice +administrators$/m);
  const lab = await json(['profiles', 'edit', 'lab', '--user-chooses-apps', 'on']);
  assert.equal(lab.userChoosesApps, true);
  assert.match(
    await ok(['profiles', 'show', 'lab']),
    /^ {2}app choice +administrators and the PC's user$/m,
  );
  await ok(['groups', 'create', '--name', 'finance']);
  const token = await json(['tokens', 'create', '--group', 'finance', '--uses', '3']);
  const device = createApiClient({ baseUrl: info.url });
  for (const name of ['pc-a', 'pc-b', 'pc-c']) {
    const { publicKey } = generateKeyPairSync('ed25519');
    await device.call(endpoints.enrol, {
      body: {
        token: token.token,
        name,
        publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
        encryptionKey: encryptionKeyPem(),
        inventory: { hostname: name },
      },
    });
  }
  await ok(['devices', 'assign', 'pc-a', '--profile', 'work']);
  await ok(['devices', 'assign', 'pc-b', '--profile', 'work', '--profile', 'lab']);
  await ok(['devices', 'assign', 'pc-c', '--profile', 'kiosk']);

  assert.equal(await ok(['devices', 'apps', 'pc-a']), 'pc-a: optional apps none\n');
  assert.equal(
    await ok(['devices', 'apps', 'pc-a', '--add', 'editor']),
    'pc-a: optional apps editor (work)\n',
  );
  const shown = await json(['devices', 'apps', 'pc-a']);
  assert.deepEqual(
    shown.apps.map((a: { name: string }) => a.name),
    ['editor'],
  );
  assert.match(
    await ok(['devices', 'show', 'pc-a']),
    /^ {2}work .*demo-os@1, app editor@1 .* editor$/m,
  );
  // Adding it again changes nothing.
  assert.equal(
    await ok(['devices', 'apps', 'pc-a', '--add', 'editor']),
    'pc-a: optional apps editor (work)\n',
  );

  assertFails(await cli(['devices', 'apps', 'pc-a', '--add', 'cad']), 1, /--add: no app "cad"/);
  assertFails(
    await cli(['devices', 'apps', 'pc-a', '--add', 'editor', '--vm', 'lab']),
    2,
    /--vm: pc-a runs no profile "lab"/,
  );
  assertFails(
    await cli(['devices', 'apps', 'pc-b', '--add', 'editor']),
    2,
    /--add: profiles lab, work all offer app "editor"; name one with --vm/,
  );
  assert.equal(
    await ok(['devices', 'apps', 'pc-b', '--add', 'editor', '--vm', 'lab']),
    'pc-b: optional apps editor (lab)\n',
  );
  assertFails(
    await cli(['devices', 'apps', 'pc-c', '--add', 'editor']),
    1,
    /--add: app "editor" is a default app of pc-c's profile; it has it already/,
  );
  assertFails(await cli(['devices', 'apps', 'nope', '--add', 'editor']), 1, /no device.*nope/);

  assert.equal(
    await ok(['devices', 'apps', 'pc-a', '--remove', 'editor']),
    'pc-a: optional apps none\n',
  );
  assertFails(
    await cli(['devices', 'apps', 'pc-a', '--remove', 'editor']),
    1,
    /--remove: pc-a has not chosen app "editor"/,
  );
  assert.equal(
    await ok(['devices', 'apps', 'pc-b']),
    'pc-b: optional apps editor (lab)\n',
    'the other device keeps its choice',
  );
});
