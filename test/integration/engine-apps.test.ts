import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { join } from 'node:path';
import { test } from 'node:test';
import { localApiSocket } from '../../src/engine/local-api.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { loadPrivateKey } from '../../src/signing/index.ts';
import { BIN, freePort, killProcess, runCli, startCenterProcess } from '../support/cli.ts';
import { ext4Image, tempDir } from '../support/fixtures.ts';
import { waitFor } from '../support/wait.ts';

// The PC user's choice of optional apps end to end, with Center and Engine (simulated
// hypervisor) as real processes: the switcher's request on Engine's local socket reaches
// Center's device route, which takes it because the profile lets the user choose; the device's
// VM then runs the app; the administrator sees the choice and the audit trail names the device;
// once the profile leaves the choice to administrators, the same request is refused with why.

/** A request on Engine's unix socket; the answer's status and JSON body. */
function local(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (p: Buffer) => parts.push(p));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString();
          resolve({ status: res.statusCode ?? 0, json: text ? JSON.parse(text) : null });
        });
      },
    );
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

test("the PC's user chooses an optional app through Engine, where the profile allows it", async (t) => {
  const dir = await tempDir(t);
  // Engine fetches the images from Center's store, at its public URL.
  const port = await freePort();
  const { info } = await startCenterProcess(t, [
    '--demo',
    '--data',
    join(dir, 'center'),
    '--listen',
    `127.0.0.1:${port}`,
    '--public-url',
    `http://127.0.0.1:${port}`,
  ]);
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'admin.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const ok = async (args: string[], input?: string) => {
    const r = await runCli(args, { env, input });
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const json = async (args: string[]) => JSON.parse(await ok([...args, '--json']));
  await ok(
    ['login', '--center', info.url, '--username', 'admin', '--password-stdin'],
    `${info.initialAdmin!.password}\n`,
  );

  // App image `editor`, in the catalog, offered by profile `work`, which lets the user choose.
  await ok(['keys', 'generate', '--out', join(dir, 'keys')]);
  await ok(['publishers', 'trust', '--key', join(dir, 'keys', 'publisher.pub')]);
  const storeDir = join(dir, 'store');
  await importImage({
    store: new DirectoryStore(storeDir),
    name: 'editor',
    version: '1',
    file: await ext4Image(dir, 'editor', { 'bin/editor': Buffer.from('editor\n') }, '4M'),
    key: await loadPrivateKey(join(dir, 'keys', 'publisher.key')),
    pack: false,
  });
  await ok(['image', 'push', '--store', storeDir, 'editor', '1', '--kind', 'app', '--release']);
  await ok(['apps', 'create', '--name', 'editor', '--image', 'editor']);
  await ok([
    'profiles',
    'create',
    '--name',
    'work',
    '--image',
    'demo-os',
    '--optional-app',
    'editor',
    '--user-chooses-apps',
    'on',
  ]);
  await ok(['groups', 'create', '--name', 'lab']);
  const token = await json(['tokens', 'create', '--group', 'lab']);
  const engineData = join(dir, 'engine');
  const enrolled = JSON.parse(
    await ok([
      'engine',
      'enroll',
      '--center',
      info.url,
      '--token',
      token.token,
      '--data',
      engineData,
      '--json',
    ]),
  ) as { deviceId: string };
  await ok(['devices', 'assign', enrolled.deviceId, '--profile', 'work']);

  const engine = spawn(
    process.execPath,
    [BIN, 'engine', 'run', '--hypervisor', 'sim', '--data', engineData, '--poll-interval', '1'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  engine.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  t.after(() => killProcess(engine));
  const socket = localApiSocket(engineData);
  const detail = async () =>
    (await json(['devices', 'show', enrolled.deviceId])) as {
      profiles: { name: string; current: { apps: { image: string; version: string }[] } | null }[];
      apps: { name: string }[];
    };
  await waitFor('Center to see the VM on demo-os', async () => {
    if (engine.exitCode !== null) throw new Error(`engine run exited: ${stderr}`);
    return (await detail()).profiles[0]?.current !== null;
  });

  const chosen = await local(socket, 'POST', '/v1/vms/work/apps', { apps: ['editor'] });
  assert.equal(chosen.status, 200, JSON.stringify(chosen.json));
  assert.deepEqual((chosen.json as { chosen: string[] }).chosen, ['editor']);
  assert.deepEqual(
    (await detail()).apps.map((a) => a.name),
    ['editor'],
    'the administrator sees the choice',
  );
  await waitFor('the VM to run editor@1', async () =>
    (await detail()).profiles[0]?.current?.apps.some(
      (a) => `${a.image}@${a.version}` === 'editor@1',
    ),
  );
  const audit = (await json(['audit'])) as {
    entries: { actor: string; action: string }[];
  };
  assert.ok(
    audit.entries.some(
      (e) => e.action === 'device.apps.choose' && e.actor === `device:${enrolled.deviceId}`,
    ),
    'the audit trail names the device',
  );

  const unknown = await local(socket, 'POST', '/v1/vms/work/apps', { apps: ['cad'] });
  assert.equal(unknown.status, 400);
  assert.match(
    (unknown.json as { error: { message: string } }).error.message,
    /"cad" is not an optional app of profile "work"; it offers editor/,
  );
  await ok(['profiles', 'edit', 'work', '--user-chooses-apps', 'off']);
  const refused = await local(socket, 'POST', '/v1/vms/work/apps', { apps: [] });
  assert.equal(refused.status, 403);
  assert.deepEqual(refused.json, {
    error: {
      code: 'ERR_FORBIDDEN',
      message: 'profile "work" leaves the choice of apps to administrators',
    },
  });
  assert.deepEqual(
    (await detail()).apps.map((a) => a.name),
    ['editor'],
    'a refused choice changes nothing',
  );
});
