import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { ErrorCodes, type PublicKeyRef, type VolumeRef } from '../../protocol/index.ts';
import { publishPair, sha256Of, tempDir } from '../../../test/support/fixtures.ts';
import { startStaticServer } from '../../../test/support/static-server.ts';
import { GoldenStore } from './goldens.ts';
import { TokenBucket } from './throttle.ts';

// One published pair for the file: importing it is the slow part.
let shared: Promise<{ dir: string; pair: Awaited<ReturnType<typeof publishPair>> }> | undefined;
before(() => {
  shared = mkdtemp(join(tmpdir(), 'bulkhead-goldens-')).then(async (dir) => ({
    dir,
    pair: await publishPair(dir),
  }));
});
after(async () => {
  const s = await shared;
  if (s) await rm(s.dir, { recursive: true, force: true });
});

async function setup(t: TestContext) {
  const { pair } = (await shared)!;
  const dir = await tempDir(t);
  const server = await startStaticServer(join(pair.dir, 'store'));
  t.after(() => server.close());
  const publishers: PublicKeyRef[] = [
    { keyid: pair.keys.key.keyid, publicKey: await readFile(pair.keys.publicPath, 'utf8') },
  ];
  const ref = (r: typeof pair.r1): VolumeRef => ({
    image: 'os',
    imageId: 'img-os',
    version: r.version,
    versionId: `ver-${r.version}`,
    manifestId: r.manifest,
    size: r.size,
  });
  const goldens = new GoldenStore({ dir: join(dir, 'goldens') });
  return { dir, pair, server, publishers, v1: ref(pair.r1), v2: ref(pair.r2), goldens };
}

test('goldens: v1 is pulled whole, v2 only its new chunks; both read-only and verified', async (t) => {
  const { pair, server, publishers, v1, v2, goldens } = await setup(t);
  const mirrors = [server.url];
  const a = await goldens.ensure(v1, { mirrors, publishers });
  assert.equal(a.pulled, true);
  assert.equal(await sha256Of(a.golden.path), pair.r1.sha256);
  assert.equal((await stat(a.golden.path)).mode & 0o777, 0o444);
  const b = await goldens.ensure(v2, { mirrors, publishers });
  assert.equal(await sha256Of(b.golden.path), pair.r2.sha256);
  assert.ok(b.reusedBytes > 0, 'v1 seeds v2');
  assert.ok(
    b.downloadedBytes < a.downloadedBytes / 2,
    `v2 downloaded ${b.downloadedBytes} bytes, v1 ${a.downloadedBytes}`,
  );
  const again = await goldens.ensure(v2, { mirrors, publishers });
  assert.equal(again.pulled, false);
  assert.equal(again.downloadedBytes, 0);
  assert.deepEqual((await goldens.list()).map((g) => g.versionId).sort(), ['ver-1', 'ver-2']);
});

test('goldens: a manifest other than the one named is refused', async (t) => {
  const { server, publishers, v1, goldens } = await setup(t);
  await assert.rejects(
    goldens.ensure({ ...v1, manifestId: 'f'.repeat(64) }, { mirrors: [server.url], publishers }),
    (err: { code: string }) => err.code === ErrorCodes.MANIFEST_MISMATCH,
  );
  assert.deepEqual(await goldens.list(), []);
});

test('goldens: a manifest signed by an untrusted key is refused', async (t) => {
  const { server, v1, goldens } = await setup(t);
  await assert.rejects(
    goldens.ensure(v1, { mirrors: [server.url], publishers: [] }),
    (err: { code: string }) => err.code === ErrorCodes.UNTRUSTED_KEY,
  );
});

test('goldens: a mirror serving tampered chunks is passed over for the next', async (t) => {
  const { dir, pair, server, publishers, v1, goldens } = await setup(t);
  const bad = await startStaticServer(join(pair.dir, 'store'));
  t.after(() => bad.close());
  bad.fault = (path) =>
    path.startsWith('/chunks/') ? { kind: 'replace', body: Buffer.from('evil') } : { kind: 'none' };
  const warnings: string[] = [];
  const r = await goldens.ensure(v1, {
    mirrors: [bad.url, server.url],
    publishers,
    onWarning: (m) => warnings.push(m),
  });
  assert.equal(r.mirror, server.url);
  assert.equal(await sha256Of(r.golden.path), pair.r1.sha256);
  assert.match(warnings.join('\n'), /does not match its digest/);

  // With only the lying mirror, the pull fails, not retryable, and nothing is left as a golden.
  const only = new GoldenStore({ dir: join(dir, 'goldens2') });
  await assert.rejects(
    only.ensure(v1, { mirrors: [bad.url], publishers }),
    (err: { code: string; retryable: boolean }) =>
      err.code === ErrorCodes.CHUNK_CORRUPT && !err.retryable,
  );
  assert.deepEqual(await only.list(), []);
});

test('goldens: gc keeps what it is told to and removes the rest', async (t) => {
  const { server, publishers, v1, v2, goldens } = await setup(t);
  await goldens.ensure(v1, { mirrors: [server.url], publishers });
  await goldens.ensure(v2, { mirrors: [server.url], publishers });
  const removed = await goldens.gc([v2]);
  assert.equal(removed.length, 2);
  assert.deepEqual(await readdir(join(goldens.dir, 'os')), ['ver-2.json', 'ver-2.raw']);
});

test('token bucket: a debt is paid back at the configured rate', () => {
  let now = 0;
  const bucket = new TokenBucket(1000, { burstBytes: 1000, now: () => now });
  assert.equal(bucket.delayMs(), 0);
  bucket.take(3000);
  assert.equal(bucket.delayMs(), 2000);
  now = 1500;
  assert.equal(bucket.delayMs(), 500);
  now = 2000;
  assert.equal(bucket.delayMs(), 0);
});
