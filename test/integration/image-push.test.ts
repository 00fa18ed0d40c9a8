import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { after, test, type TestContext } from 'node:test';
import { pino } from 'pino';
import { resolveConfig } from '../../src/center/config.ts';
import { migrateToLatest, openDatabase } from '../../src/center/db/index.ts';
import { createCenterApp } from '../../src/center/server.ts';
import { runMain as cli } from '../support/cli.ts';
import { DirectoryStore, importImage, readIndex, readManifest } from '../../src/image/index.ts';
import { insertSession } from '../support/center.ts';
import { ext4Image, makeKeys, osFiles, tempDir, type Keys } from '../support/fixtures.ts';

let shared: Promise<{ keys: Keys; store: DirectoryStore }> | undefined;
const sharedDirs: string[] = [];
after(() => Promise.all(sharedDirs.map((d) => rm(d, { recursive: true, force: true }))));

/**
 * A local store holding os@1 and os@2 (a patch of it, rebuilt as ext4), as `bulkhead image
 * import` makes it; built once for this file (no packs: the push does not send them).
 */
function localPair(): Promise<{ keys: Keys; store: DirectoryStore }> {
  shared ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bulkhead-push-local-'));
    sharedDirs.push(dir);
    const keys = await makeKeys(dir);
    const store = new DirectoryStore(join(dir, 'store'));
    const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp'), pack: false };
    for (const v of [1, 2] as const) {
      const file = await ext4Image(dir, `v${v}`, osFiles(v), '32M');
      await importImage({ ...common, file, version: String(v) });
    }
    return { keys, store };
  })();
  return shared;
}

/** A Center listening on a free port, with an operator and an admin holding API tokens. */
async function listeningCenter(t: TestContext) {
  const dir = await tempDir(t, 'bulkhead-push-center-');
  const config = resolveConfig([{ dataDir: dir, listen: '127.0.0.1:0' }]);
  const database = await openDatabase({ url: `sqlite:${join(dir, 'center.db')}` });
  await migrateToLatest(database.db);
  const at = Date.now();
  const tokens: Record<string, string> = {};
  for (const role of ['admin', 'operator'] as const) {
    tokens[role] = await insertSession(database.db, role, role, at);
  }
  const app = await createCenterApp({
    config,
    log: pino({ level: 'silent' }),
    database,
    signingKey: { key: generateKeyPairSync('ed25519').privateKey, keyid: 'test' },
    now: () => new Date(),
  });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  t.after(async () => {
    await app.close();
    await database.close();
  });
  return { url, tokens, config, database };
}

test('image push sends only the chunks Center lacks, and a repeated push sends nothing', async (t) => {
  const local = await localPair();
  const center = await listeningCenter(t);
  const storeDir = local.store.location;
  const digestsOf = async (version: string) => {
    const { body } = await readManifest(local.store, 'os', version, local.keys.trusted);
    return new Set((await readIndex(local.store, body)).flatMap((e) => e.digest ?? []));
  };
  const v1 = await digestsOf('1');
  const v2 = await digestsOf('2');
  const newInV2 = [...v2].filter((d) => !v1.has(d)).length;
  assert.ok(newInV2 > 0 && newInV2 < v2.size);

  const base = ['image', 'push', '--center', center.url, '--store', storeDir, '--json'];
  const trust = await fetch(`${center.url}/api/v1/admin/publishers`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${center.tokens.admin}`,
      'content-type': 'application/json',
    },
    body: JSON.stringify({
      name: 'build',
      publicKey: local.keys.trusted[0]!.key.export({ type: 'spki', format: 'pem' }),
    }),
  });
  assert.equal(trust.status, 201);

  const first = await cli([...base, 'os', '1'], { BULKHEAD_TOKEN: center.tokens.operator! });
  assert.equal(first.code, 0, first.err);
  const r1 = JSON.parse(first.out);
  assert.equal(r1.created, true);
  assert.equal(r1.state, 'draft');
  assert.equal(r1.chunks.total, v1.size);
  assert.equal(r1.chunks.sent, v1.size, 'every chunk of the first version');
  assert.equal(r1.chunks.skipped, 0);

  const second = await cli([...base, '--token', center.tokens.operator!, '--publish', 'os', '2']);
  assert.equal(second.code, 0, second.err);
  const r2 = JSON.parse(second.out);
  assert.equal(r2.created, true);
  assert.equal(r2.state, 'published');
  assert.equal(r2.chunks.sent, newInV2, 'only the chunks of v2 that v1 lacks');
  assert.equal(r2.chunks.skipped, v2.size - newInV2);
  assert.equal(r2.indexSent, true);

  const again = await cli([...base, '--token', center.tokens.operator!, 'os', '1']);
  assert.equal(again.code, 0, again.err);
  const r3 = JSON.parse(again.out);
  assert.equal(r3.created, false);
  assert.equal(r3.chunks.sent, 0);
  assert.equal(r3.indexSent, false);

  // What Center holds is a store any device can pull from and verify.
  const centerStore = new DirectoryStore(center.config.storeDir);
  const pulled = await readManifest(centerStore, 'os', '2', local.keys.trusted);
  assert.equal(pulled.id, r2.manifest);
  const versions = await center.database.db
    .selectFrom('image_versions')
    .select(['version', 'state'])
    .orderBy('version')
    .execute();
  assert.deepEqual(versions, [
    { version: '1', state: 'draft' },
    { version: '2', state: 'published' },
  ]);
});

test('image push refuses bad usage and bad credentials with one line', async (t) => {
  const dir = await tempDir(t);
  const noToken = await cli(
    ['image', 'push', '--center', 'http://127.0.0.1:9', '--store', dir, 'os', '1'],
    { BULKHEAD_CREDENTIALS: join(dir, 'no-session.json'), BULKHEAD_TOKEN: '' },
  );
  assert.equal(noToken.code, 2);
  assert.match(noToken.err, /not logged in to any Center .*bulkhead login/);
  const oneArg = await cli(['image', 'push', '--center', 'http://x', '--store', dir, 'os']);
  assert.equal(oneArg.code, 2);
  const badKind = await cli([
    'image',
    'push',
    '--center',
    'http://x',
    '--store',
    dir,
    '--kind',
    'disk',
    'os',
    '1',
  ]);
  assert.equal(badKind.code, 2);
  const absent = await cli(
    ['image', 'push', '--center', 'http://127.0.0.1:9', '--store', dir, 'os', '1'],
    { BULKHEAD_TOKEN: 'bh_x' },
  );
  assert.equal(absent.code, 1);
  assert.match(absent.err, /os@1 is not in the store/);

  const local = await localPair();
  const center = await listeningCenter(t);
  const wrongToken = await cli(
    ['image', 'push', '--center', center.url, '--store', local.store.location, 'os', '1'],
    { BULKHEAD_TOKEN: 'bh_wrongwrongwrong' },
  );
  assert.equal(wrongToken.code, 1);
  assert.match(wrongToken.err, /unknown, revoked or expired — give a valid token/);
  assert.ok(!wrongToken.err.includes('bh_wrongwrongwrong'), 'the token is never printed');
  const untrusted = await cli([
    'image',
    'push',
    '--center',
    center.url,
    '--store',
    local.store.location,
    '--token',
    center.tokens.operator!,
    'os',
    '1',
  ]);
  assert.equal(untrusted.code, 1);
  assert.match(untrusted.err, /^bulkhead image push: .*not trusted/);
  assert.equal(untrusted.err.split('\n').length, 1, 'one line');
  const unreachable = await cli(
    ['image', 'push', '--center', 'http://127.0.0.1:9', '--store', local.store.location, 'os', '1'],
    { BULKHEAD_TOKEN: 'bh_x' },
  );
  assert.equal(unreachable.code, 1);
  assert.match(unreachable.err, /cannot reach Center at http:\/\/127\.0\.0\.1:9/);
});
