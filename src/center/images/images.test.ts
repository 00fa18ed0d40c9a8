import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { zstdCompressSync } from 'node:zlib';
import {
  CENTER_TARGETS,
  insertProfile,
  insertSession,
  startTestCenter,
} from '../../../test/support/center.ts';
import { bytesFrom, makeKeys, tempDir, type Keys } from '../../../test/support/fixtures.ts';
import { keyIdOf } from '../../signing/index.ts';
import {
  DirectoryStore,
  chunkKey,
  encodeManifest,
  importImage,
  indexKey,
  manifestKey,
  parseManifest,
  readIndex,
  signManifest,
} from '../../image/index.ts';
import type { ManifestBody } from '../../protocol/index.ts';

/** A local store holding os@1 and os@2 (a few chunks changed), signed by `keys`. */
async function localStore(t: TestContext) {
  const dir = await tempDir(t, 'bulkhead-images-src-');
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const v1 = Buffer.concat([bytesFrom('os', 256 * 1024), Buffer.alloc(64 * 1024)]);
  const v2 = Buffer.from(v1);
  bytesFrom('patch', 8192).copy(v2, 64 * 1024);
  await writeFile(join(dir, 'v1.raw'), v1);
  await writeFile(join(dir, 'v2.raw'), v2);
  const common = { store, name: 'os', key: keys.key, tempDir: join(dir, 'tmp') };
  await importImage({ ...common, file: join(dir, 'v1.raw'), version: '1' });
  await importImage({ ...common, file: join(dir, 'v2.raw'), version: '2' });
  return { dir, keys, store };
}

type Local = Awaited<ReturnType<typeof localStore>>;

async function center(t: TestContext, url: string) {
  const c = await startTestCenter(t, url, { start: Date.UTC(2026, 10, 23, 12) });
  const tokens = {
    admin: await insertSession(c.db, 'root', 'admin', c.clock.ms),
    operator: await insertSession(c.db, 'otto', 'operator', c.clock.ms),
    viewer: await insertSession(c.db, 'vera', 'viewer', c.clock.ms),
  };
  return { ...c, storeDir: c.config.storeDir, tokens };
}

type Center = Awaited<ReturnType<typeof center>>;

async function trust(c: Center, keys: Keys, name = 'build') {
  const res = await c.call('POST', '/publishers', {
    token: c.tokens.admin,
    body: { name, publicKey: keys.trusted[0]!.key.export({ type: 'spki', format: 'pem' }) },
  });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.keyid as string;
}

/** Uploads the index and every chunk of a local version; returns its manifest bytes. */
async function uploadObjects(c: Center, local: Local, version: string): Promise<Buffer> {
  const bytes = await local.store.read(manifestKey('os', version), 1 << 20);
  const body = parseManifest(bytes).signed;
  const index = await local.store.read(indexKey(body.index.digest), 1 << 24);
  const put = await c.call('PUT', `/store/indexes/${body.index.digest}`, {
    token: c.tokens.operator,
    raw: index,
  });
  assert.ok(put.status === 201 || put.status === 200, JSON.stringify(put.body));
  const digests = new Set((await readIndex(local.store, body)).flatMap((e) => e.digest ?? []));
  for (const d of digests) {
    const res = await c.call('PUT', `/store/chunks/${d}`, {
      token: c.tokens.operator,
      raw: await local.store.read(chunkKey(d), 1 << 21),
    });
    assert.ok(res.status === 201 || res.status === 200, JSON.stringify(res.body));
  }
  return bytes;
}

function resigned(bytes: Buffer, keys: Keys, change: (b: ManifestBody) => void = () => {}) {
  const body = structuredClone(parseManifest(bytes).signed);
  change(body);
  return encodeManifest(signManifest(body, keys.key));
}

for (const target of CENTER_TARGETS) {
  test(`image admin API on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);
    const local = await localStore(t);

    await t.test(
      'roles: no token 401, viewer reads but cannot upload, operator cannot trust keys',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const digest = 'a'.repeat(64);
        const anon = await c.call('PUT', `/store/chunks/${digest}`, { raw: Buffer.from('x') });
        assert.equal(anon.status, 401);
        assert.equal(anon.body.error.code, 'ERR_UNAUTHENTICATED');
        const viewerPut = await c.call('PUT', `/store/chunks/${digest}`, {
          token: c.tokens.viewer,
          raw: Buffer.from('x'),
        });
        assert.equal(viewerPut.status, 403);
        assert.equal(viewerPut.body.error.code, 'ERR_FORBIDDEN');
        const viewerMissing = await c.call('POST', '/store/missing', {
          token: c.tokens.viewer,
          body: { chunks: [digest] },
        });
        assert.equal(viewerMissing.status, 403);
        const viewerManifest = await c.call('PUT', '/store/images/os/1', {
          token: c.tokens.viewer,
          raw: Buffer.from('{}'),
        });
        assert.equal(viewerManifest.status, 403);
        assert.equal((await c.call('GET', '/images', { token: c.tokens.viewer })).status, 200);
        assert.equal((await c.call('GET', '/publishers', { token: c.tokens.viewer })).status, 200);
        const opTrust = await c.call('POST', '/publishers', {
          token: c.tokens.operator,
          body: { name: 'x', publicKey: 'x' },
        });
        assert.equal(opTrust.status, 403);
        const viewerCreate = await c.call('POST', '/images', {
          token: c.tokens.viewer,
          body: { name: 'x', kind: 'system' },
        });
        assert.equal(viewerCreate.status, 403);
      },
    );

    await t.test(
      'publisher keys: Ed25519 PEM only, ids as the image format computes them, revocation',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const bad = await c.call('POST', '/publishers', {
          token: c.tokens.admin,
          body: { name: 'build', publicKey: 'not a key' },
        });
        assert.equal(bad.status, 400);
        assert.equal(bad.body.error.code, 'ERR_VALIDATION');
        assert.match(bad.body.error.message, /body\.publicKey/);
        const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({
          type: 'spki',
          format: 'pem',
        });
        const notEd = await c.call('POST', '/publishers', {
          token: c.tokens.admin,
          body: { name: 'build', publicKey: rsa },
        });
        assert.equal(notEd.status, 400);
        assert.match(notEd.body.error.message, /body\.publicKey: a rsa key/);
        const unknownField = await c.call('POST', '/publishers', {
          token: c.tokens.admin,
          body: { name: 'build', publicKey: 'x', extra: 1 },
        });
        assert.equal(unknownField.status, 400);

        const keyid = await trust(c, local.keys);
        assert.equal(keyid, keyIdOf(local.keys.trusted[0]!.key));
        const again = await c.call('POST', '/publishers', {
          token: c.tokens.admin,
          body: {
            name: 'other',
            publicKey: local.keys.trusted[0]!.key.export({ type: 'spki', format: 'pem' }),
          },
        });
        assert.equal(again.status, 409);
        assert.equal(again.body.error.code, 'ERR_KEY_EXISTS');
        const list = await c.call('GET', '/publishers', { token: c.tokens.viewer });
        assert.deepEqual(
          list.body.publishers.map((p: { keyid: string; revokedAt: null }) => [
            p.keyid,
            p.revokedAt,
          ]),
          [[keyid, null]],
        );
        const revoked = await c.call('DELETE', `/publishers/${keyid}`, { token: c.tokens.admin });
        assert.equal(revoked.status, 200);
        assert.equal(typeof revoked.body.revokedAt, 'number');
        assert.equal(
          (await c.call('DELETE', `/publishers/${'0'.repeat(64)}`, { token: c.tokens.admin }))
            .status,
          404,
        );
        assert.equal(
          (await c.call('DELETE', '/publishers/xyz', { token: c.tokens.admin })).status,
          400,
        );
        const audit = await c.call('GET', '/audit', { token: c.tokens.admin });
        const actions = audit.body.entries.map((e: { action: string }) => e.action);
        assert.ok(actions.includes('publisher.create') && actions.includes('publisher.revoke'));
      },
    );

    await t.test(
      'chunks: missing query, digest checked over the content, bad digests refused',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const raw = bytesFrom('chunk', 16384);
        const digest = createHash('sha256').update(raw).digest('hex');
        const other = 'b'.repeat(64);
        const before = await c.call('POST', '/store/missing', {
          token: c.tokens.operator,
          body: { chunks: [digest, other, digest] },
        });
        assert.equal(before.status, 200);
        assert.deepEqual(before.body, { missing: [digest, other], missingIndexes: [] });
        for (const chunks of [['ABC'], ['A'.repeat(64)], ['a'.repeat(63)]]) {
          const res = await c.call('POST', '/store/missing', {
            token: c.tokens.operator,
            body: { chunks },
          });
          assert.equal(res.status, 400, JSON.stringify(chunks));
          assert.match(res.body.error.message, /body\.chunks\.0/);
        }
        const tooMany = await c.call('POST', '/store/missing', {
          token: c.tokens.operator,
          body: { chunks: Array.from({ length: 100_001 }, () => other) },
        });
        assert.equal(tooMany.status, 400);

        const compressed = zstdCompressSync(raw);
        const mismatch = await c.call('PUT', `/store/chunks/${other}`, {
          token: c.tokens.operator,
          raw: compressed,
        });
        assert.equal(mismatch.status, 400);
        assert.equal(mismatch.body.error.code, 'ERR_CHUNK_DIGEST_MISMATCH');
        const notZstd = await c.call('PUT', `/store/chunks/${digest}`, {
          token: c.tokens.operator,
          raw,
        });
        assert.equal(notZstd.status, 400);
        assert.equal(notZstd.body.error.code, 'ERR_CHUNK_DIGEST_MISMATCH');
        const tooBig = bytesFrom('big', 2 * 1024 * 1024);
        const bomb = await c.call(
          'PUT',
          `/store/chunks/${createHash('sha256').update(tooBig).digest('hex')}`,
          {
            token: c.tokens.operator,
            raw: zstdCompressSync(tooBig),
          },
        );
        assert.ok(bomb.status === 400 || bomb.status === 413, String(bomb.status));
        const asJson = await c.call('PUT', `/store/chunks/${digest}`, {
          token: c.tokens.operator,
          body: { data: 'x' },
        });
        assert.equal(asJson.status, 415, 'an upload takes bytes, not JSON');
        assert.equal(asJson.body.error.code, 'ERR_UNSUPPORTED_MEDIA_TYPE');
        const put = await c.call('PUT', `/store/chunks/${digest}`, {
          token: c.tokens.operator,
          raw: compressed,
        });
        assert.equal(put.status, 201);
        assert.deepEqual(put.body, { digest, created: true });
        const again = await c.call('PUT', `/store/chunks/${digest}`, {
          token: c.tokens.operator,
          raw: compressed,
        });
        assert.equal(again.status, 200);
        const after = await c.call('POST', '/store/missing', {
          token: c.tokens.operator,
          body: { chunks: [digest, other] },
        });
        assert.deepEqual(after.body.missing, [other]);
        // The store serves it read-only, as any mirror would.
        const served = await c.app.inject({ method: 'GET', url: `/store/${chunkKey(digest)}` });
        assert.equal(served.statusCode, 200);
        assert.deepEqual(served.rawPayload, compressed);
      },
    );

    await t.test(
      'manifests: unsigned, unknown key, revoked key, tampered, wrong name, missing chunks are refused',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const bytes = await local.store.read(manifestKey('os', '1'), 1 << 20);
        const push = (raw: Buffer, path = '/store/images/os/1') =>
          c.call('PUT', path, { token: c.tokens.operator, raw });

        const unknown = await push(bytes);
        assert.equal(unknown.status, 403);
        assert.equal(unknown.body.error.code, 'ERR_UNTRUSTED_KEY');
        assert.match(unknown.body.error.message, /not trusted/);

        const keyid = await trust(c, local.keys);
        const missing = await push(bytes);
        assert.equal(missing.status, 409);
        assert.equal(missing.body.error.code, 'ERR_CHUNKS_MISSING');
        assert.match(missing.body.error.message, /index/);
        const body = parseManifest(bytes).signed;
        const index = await local.store.read(indexKey(body.index.digest), 1 << 24);
        await c.call('PUT', `/store/indexes/${body.index.digest}`, {
          token: c.tokens.operator,
          raw: index,
        });
        const chunksMissing = await push(bytes);
        assert.equal(chunksMissing.status, 409);
        const total = body.stats.uniqueChunks;
        assert.match(
          chunksMissing.body.error.message,
          new RegExp(`${total} of the ${total} chunks`),
        );

        await uploadObjects(c, local, '1');
        const unsigned = Buffer.from(JSON.stringify({ ...parseManifest(bytes), signatures: [] }));
        const u = await push(unsigned);
        assert.equal(u.status, 400);
        assert.equal(u.body.error.code, 'ERR_MANIFEST_UNSIGNED');

        const tampered = JSON.parse(bytes.toString());
        tampered.signed.size += 4096;
        const tam = await push(Buffer.from(JSON.stringify(tampered)));
        assert.equal(tam.status, 400);
        assert.equal(tam.body.error.code, 'ERR_MANIFEST_SIGNATURE');

        const stranger = await makeKeys(await tempDir(t), 'stranger');
        const foreign = await push(resigned(bytes, stranger));
        assert.equal(foreign.status, 403);
        assert.equal(foreign.body.error.code, 'ERR_UNTRUSTED_KEY');

        const garbage = await push(Buffer.from('{"signed":'));
        assert.equal(garbage.status, 400);
        assert.equal(garbage.body.error.code, 'ERR_MANIFEST_MALFORMED');

        const wrongName = await push(bytes, '/store/images/other/1');
        assert.equal(wrongName.status, 400);
        assert.equal(wrongName.body.error.code, 'ERR_MANIFEST_MISMATCH');

        assert.equal(
          (await c.call('DELETE', `/publishers/${keyid}`, { token: c.tokens.admin })).status,
          200,
        );
        const revoked = await push(bytes);
        assert.equal(revoked.status, 403);
        assert.equal(revoked.body.error.code, 'ERR_UNTRUSTED_KEY');
        assert.match(revoked.body.error.message, /revoked/);

        const rows = await c.database.db.selectFrom('image_versions').selectAll().execute();
        assert.equal(rows.length, 0, 'nothing refused was recorded');
        assert.deepEqual(await readdir(c.storeDir).then((d) => d.includes('manifests')), false);
      },
    );

    await t.test(
      'a good push records a draft once; another manifest for the version is a conflict',
      async (t) => {
        const c = await center(t, await newUrl(t));
        await trust(c, local.keys);
        const bytes = await uploadObjects(c, local, '1');
        const first = await c.call('PUT', '/store/images/os/1?kind=app', {
          token: c.tokens.operator,
          raw: bytes,
        });
        assert.equal(first.status, 201, JSON.stringify(first.body));
        assert.equal(first.body.created, true);
        assert.equal(first.body.image.kind, 'app');
        assert.equal(first.body.version.state, 'draft');
        assert.equal(first.body.version.manifestId.length, 64);
        const again = await c.call('PUT', '/store/images/os/1', {
          token: c.tokens.operator,
          raw: bytes,
        });
        assert.equal(again.status, 200);
        assert.equal(again.body.created, false);
        assert.equal(again.body.version.id, first.body.version.id);

        const changed = resigned(bytes, local.keys, (b) => {
          b.created = new Date(Date.UTC(2027, 0, 1)).toISOString();
        });
        const conflict = await c.call('PUT', '/store/images/os/1', {
          token: c.tokens.operator,
          raw: changed,
        });
        assert.equal(conflict.status, 409);
        assert.equal(conflict.body.error.code, 'ERR_IMAGE_EXISTS');
        const wrongKind = await c.call('PUT', '/store/images/os/2?kind=system', {
          token: c.tokens.operator,
          raw: await uploadObjects(c, local, '2'),
        });
        assert.equal(wrongKind.status, 409);

        const served = await c.app.inject({ method: 'GET', url: '/store/manifests/os/1.json' });
        assert.equal(served.statusCode, 200);
        assert.equal(parseManifest(served.rawPayload).signed.version, '1');
        const catalog = await c.app.inject({ method: 'GET', url: '/store/catalog.json' });
        assert.deepEqual(
          catalog.json().images.map((i: { version: string }) => i.version),
          ['1'],
        );
        const detail = await c.call('GET', '/images/os', { token: c.tokens.viewer });
        assert.equal(detail.status, 200);
        assert.equal(detail.body.versions.length, 1);
        const audit = await c.call('GET', '/audit', { token: c.tokens.admin });
        const uploads = audit.body.entries.filter(
          (e: { action: string }) => e.action === 'image.version.upload',
        );
        assert.equal(uploads.length, 1);
        assert.equal(uploads[0].actor, 'user:otto');
      },
    );

    await t.test('each version counts its chunks and what it adds over its parent', async (t) => {
      const c = await center(t, await newUrl(t));
      await trust(c, local.keys);
      const digestsOf = async (version: string) => {
        const body = parseManifest(await local.store.read(manifestKey('os', version), 1 << 20));
        return new Set((await readIndex(local.store, body.signed)).flatMap((e) => e.digest ?? []));
      };
      const [one, two] = [await digestsOf('1'), await digestsOf('2')];
      const added = [...two].filter((d) => !one.has(d));
      assert.ok(added.length > 0 && added.length < two.size, 'os@2 changes a few chunks');
      let addedBytes = 0;
      for (const d of added) addedBytes += (await local.store.read(chunkKey(d), 1 << 21)).length;
      for (const version of ['1', '2']) {
        const manifest = await uploadObjects(c, local, version);
        const res = await c.call('PUT', `/store/images/os/${version}`, {
          token: c.tokens.operator,
          raw: manifest,
        });
        assert.equal(res.status, 201, JSON.stringify(res.body));
      }
      const { versions } = (await c.call('GET', '/images/os/versions', { token: c.tokens.viewer }))
        .body;
      const counts = (v: { chunks: number; addedChunks: number; addedBytes: number }) => [
        v.chunks,
        v.addedChunks,
        v.addedBytes,
      ];
      const v1 = versions.find((v: { version: string }) => v.version === '1');
      const v2 = versions.find((v: { version: string }) => v.version === '2');
      let allBytes = 0;
      for (const d of one) allBytes += (await local.store.read(chunkKey(d), 1 << 21)).length;
      // Without a parent, a PC downloads every chunk.
      assert.deepEqual(counts(v1), [one.size, one.size, allBytes]);
      assert.deepEqual(counts(v2), [two.size, added.length, addedBytes]);

      // A version counted before Center kept counts is counted at its first listing.
      await c.db
        .updateTable('image_versions')
        .set({ chunks: null, added_chunks: null, added_bytes: null })
        .execute();
      const image = (await c.call('GET', '/images/os', { token: c.tokens.viewer })).body;
      // By version: two versions pushed within one millisecond list in either order.
      const listed = (version: string) =>
        counts(image.versions.find((v: { version: string }) => v.version === version));
      assert.deepEqual([listed('1'), listed('2')], [v1, v2].map(counts));
      const stored = await c.db.selectFrom('image_versions').select('chunks').execute();
      assert.ok(stored.every((r) => r.chunks !== null));
    });

    await t.test('publish, release and retire follow the version states', async (t) => {
      const c = await center(t, await newUrl(t));
      await trust(c, local.keys);
      for (const v of ['1', '2']) {
        const res = await c.call('PUT', `/store/images/os/${v}`, {
          token: c.tokens.operator,
          raw: await uploadObjects(c, local, v),
        });
        assert.equal(res.status, 201);
      }
      const img = (await c.call('GET', '/images/os', { token: c.tokens.viewer })).body;
      const versionsOf = img.versions as { id: string; version: string }[];
      const v1 = versionsOf.find((v) => v.version === '1');
      const v2 = versionsOf.find((v) => v.version === '2');
      assert.equal(img.release, null);
      const draftRelease = await c.call('POST', `/images/${img.id}/release`, {
        token: c.tokens.operator,
        body: { versionId: v1!.id },
      });
      assert.equal(draftRelease.status, 409);
      assert.equal(draftRelease.body.error.code, 'ERR_VERSION_STATE');

      const pub1 = await c.call('POST', `/images/${img.id}/versions/1/publish`, {
        token: c.tokens.operator,
      });
      assert.equal(pub1.status, 200, JSON.stringify(pub1.body));
      assert.equal(pub1.body.state, 'published');
      assert.equal(pub1.body.released, true, 'the first published version is released');
      const pub2 = await c.call('POST', `/images/${img.id}/versions/2/publish`, {
        token: c.tokens.operator,
        body: {},
      });
      assert.equal(pub2.body.released, false);
      const retireReleased = await c.call('POST', `/images/${img.id}/versions/1/retire`, {
        token: c.tokens.operator,
      });
      assert.equal(retireReleased.status, 409);
      const release2 = await c.call('POST', `/images/${img.id}/release`, {
        token: c.tokens.operator,
        body: { versionId: v2!.id },
      });
      assert.equal(release2.status, 200);
      assert.deepEqual(release2.body.release, { id: v2!.id, version: '2' });
      const retire1 = await c.call('POST', `/images/${img.id}/versions/1/retire`, {
        token: c.tokens.operator,
      });
      assert.equal(retire1.status, 200);
      assert.equal(retire1.body.state, 'retired');
      const republish = await c.call('POST', `/images/${img.id}/versions/1/publish`, {
        token: c.tokens.operator,
      });
      assert.equal(republish.status, 409);
      assert.equal(republish.body.error.code, 'ERR_VERSION_STATE');
      const releaseRetired = await c.call('POST', `/images/${img.id}/release`, {
        token: c.tokens.operator,
        body: { versionId: v1!.id },
      });
      assert.equal(releaseRetired.status, 409);
      const unknownVersion = await c.call('POST', `/images/${img.id}/versions/9/publish`, {
        token: c.tokens.operator,
      });
      assert.equal(unknownVersion.status, 404);
      const viewerPublish = await c.call('POST', `/images/${img.id}/versions/2/publish`, {
        token: c.tokens.viewer,
      });
      assert.equal(viewerPublish.status, 403);
      const versions = await c.call('GET', `/images/${img.id}/versions`, {
        token: c.tokens.viewer,
      });
      assert.deepEqual(
        versions.body.versions
          .sort((a: { version: string }, b: { version: string }) =>
            a.version.localeCompare(b.version),
          )
          .map((v: { version: string; state: string; released: boolean }) => [
            v.version,
            v.state,
            v.released,
          ]),
        [
          ['1', 'retired', false],
          ['2', 'published', true],
        ],
      );
      const listed = await c.call('GET', '/images?kind=system', { token: c.tokens.viewer });
      assert.deepEqual(listed.body.images[0].release, { id: v2!.id, version: '2' });
    });

    await t.test(
      'a version signed only by keys revoked since cannot be published, released or rolled out',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const second = await makeKeys(await tempDir(t), 'second');
        const first = await trust(c, local.keys);
        const other = await trust(c, second, 'second');
        const as = (token: string) => (method: 'POST' | 'DELETE', path: string, body?: object) =>
          c.call(method, path, { token, ...(body === undefined ? {} : { body }) });
        const operator = as(c.tokens.operator);
        const push = async (version: string, raw: Buffer) => {
          const res = await c.call('PUT', `/store/images/os/${version}`, {
            token: c.tokens.operator,
            raw,
          });
          assert.equal(res.status, 201, JSON.stringify(res.body));
          return res.body.version as { id: string; signatures: { keyid: string }[] };
        };
        const v1 = await push('1', await uploadObjects(c, local, '1'));
        const v2bytes = await uploadObjects(c, local, '2');
        await push('2', v2bytes);
        // Version 3: signed by both keys. Version 4: by the first, with a signature that claims
        // the second key but does not verify, so it vouches for nothing.
        const body = (version: string) => {
          const b = structuredClone(parseManifest(v2bytes).signed);
          b.version = version;
          return b;
        };
        const both = signManifest(body('3'), local.keys.key);
        both.signatures.push(...signManifest(body('3'), second.key).signatures);
        const v3 = await push('3', encodeManifest(both));
        const bogus = signManifest(body('4'), local.keys.key);
        bogus.signatures.push({ keyid: other, sig: `${'A'.repeat(86)}==` });
        const v4 = await push('4', encodeManifest(bogus));
        assert.deepEqual(
          v4.signatures.map((s) => s.keyid),
          [first],
          'only the signatures that verify are kept',
        );
        const published = await operator('POST', '/images/os/versions/1/publish');
        assert.equal(published.status, 200, JSON.stringify(published.body));
        const group = await as(c.tokens.admin)('POST', '/groups', { name: 'office' });
        assert.equal(group.status, 201, JSON.stringify(group.body));

        assert.equal((await as(c.tokens.admin)('DELETE', `/publishers/${first}`)).status, 200);
        for (const release of [false, true]) {
          const refused = await operator('POST', '/images/os/versions/2/publish', { release });
          assert.equal(refused.status, 403, JSON.stringify(refused.body));
          assert.equal(refused.body.error.code, 'ERR_UNTRUSTED_KEY');
          assert.equal(
            refused.body.error.message,
            `os@2 is signed only by publisher key ${first.slice(0, 16)}… ("build", revoked ` +
              `${new Date(c.clock.ms).toISOString()}), so it cannot be published: sign the ` +
              'image with a trusted publisher key and push it as a new version',
          );
          assert.deepEqual(refused.body.error.details, { revokedKeys: [first] });
        }
        const bogusOnly = await operator('POST', '/images/os/versions/4/publish');
        assert.equal(bogusOnly.status, 403, 'a signature that did not verify vouches for nothing');
        const rollout = await operator('POST', '/rollouts', {
          imageVersionId: v1.id,
          groupId: group.body.id,
        });
        assert.equal(rollout.status, 403, JSON.stringify(rollout.body));
        assert.equal(rollout.body.error.code, 'ERR_UNTRUSTED_KEY');
        assert.match(rollout.body.error.message, /^os@1 .* cannot be rolled out/);
        const states = (await c.call('GET', '/images/os', { token: c.tokens.viewer })).body
          .versions as { version: string; state: string; released: boolean }[];
        assert.deepEqual(
          states
            .map((v) => [v.version, v.state, v.released])
            .sort((a, b) => String(a[0]).localeCompare(String(b[0]))),
          [
            ['1', 'published', true],
            ['2', 'draft', false],
            ['3', 'draft', false],
            ['4', 'draft', false],
          ],
          'what was released before stays; nothing refused changed',
        );

        // Another key Center still trusts vouches for version 3: it goes out.
        const ok = await operator('POST', '/images/os/versions/3/publish', { release: true });
        assert.equal(ok.status, 200, JSON.stringify(ok.body));
        assert.equal(ok.body.released, true);
        const back = await operator('POST', '/images/os/release', { versionId: v1.id });
        assert.equal(back.status, 403, 'nor can the revoked-only version be released again');
        assert.match(back.body.error.message, /cannot be released/);
        assert.equal(v3.signatures.length, 2);
      },
    );

    await t.test(
      'images: create, list by kind, update, delete only when unreferenced',
      async (t) => {
        const c = await center(t, await newUrl(t));
        const bad = await c.call('POST', '/images', {
          token: c.tokens.operator,
          body: { name: '../x', kind: 'system' },
        });
        assert.equal(bad.status, 400);
        assert.match(bad.body.error.message, /body\.name/);
        const office = await c.call('POST', '/images', {
          token: c.tokens.operator,
          body: { name: 'office', kind: 'app', description: 'Office suite' },
        });
        assert.equal(office.status, 201);
        const base = await c.call('POST', '/images', {
          token: c.tokens.operator,
          body: { name: 'base', kind: 'system' },
        });
        assert.equal(base.status, 201);
        const dup = await c.call('POST', '/images', {
          token: c.tokens.operator,
          body: { name: 'base', kind: 'app' },
        });
        assert.equal(dup.status, 409);
        const apps = await c.call('GET', '/images?kind=app', { token: c.tokens.viewer });
        assert.deepEqual(
          apps.body.images.map((i: { name: string }) => i.name),
          ['office'],
        );
        const badKind = await c.call('GET', '/images?kind=disk', { token: c.tokens.viewer });
        assert.equal(badKind.status, 400);
        const patched = await c.call('PATCH', `/images/${office.body.id}`, {
          token: c.tokens.operator,
          body: { description: 'Office, 2026 edition' },
        });
        assert.equal(patched.body.description, 'Office, 2026 edition');
        const empty = await c.call('PATCH', `/images/${office.body.id}`, {
          token: c.tokens.operator,
          body: {},
        });
        assert.equal(empty.status, 400);

        const profile = { name: 'work', systemImageId: base.body.id, leaseDays: 30 };
        await insertProfile(c.db, { ...profile, healthCheck: { timeoutSeconds: 60 } }, Date.now());
        const inUse = await c.call('DELETE', `/images/${base.body.id}`, {
          token: c.tokens.operator,
        });
        assert.equal(inUse.status, 409);
        assert.match(inUse.body.error.message, /profile work/);
        const kindChange = await c.call('PATCH', '/images/base', {
          token: c.tokens.operator,
          body: { kind: 'app' },
        });
        assert.equal(kindChange.status, 409);

        // An uploaded image whose versions nothing references goes, manifests and all.
        await trust(c, local.keys);
        const pushed = await c.call('PUT', '/store/images/os/1', {
          token: c.tokens.operator,
          raw: await uploadObjects(c, local, '1'),
        });
        assert.equal(pushed.status, 201);
        const removed = await c.call('DELETE', '/images/os', { token: c.tokens.operator });
        assert.equal(removed.status, 204);
        assert.equal((await c.call('GET', '/images/os', { token: c.tokens.viewer })).status, 404);
        const gone = await c.app.inject({ method: 'GET', url: '/store/manifests/os/1.json' });
        assert.equal(gone.statusCode, 404);
      },
    );

    await t.test('path traversal in names, versions and digests is refused', async (t) => {
      const c = await center(t, await newUrl(t));
      await trust(c, local.keys);
      const bytes = await uploadObjects(c, local, '1');
      const before = (await readdir(c.dir)).sort();
      for (const path of [
        '/store/images/../1',
        '/store/images/%2e%2e/1',
        '/store/images/os/%2e%2e',
        '/store/images/..%2f..%2fetc/1',
        '/store/images/%2Fetc%2Fpasswd/1',
        '/store/images/os/..%2F..%2F..%2Fx',
        '/store/images/.hidden/1',
      ]) {
        const res = await c.call('PUT', path, { token: c.tokens.operator, raw: bytes });
        assert.ok(res.status >= 400 && res.status < 500, `${path}: ${res.status}`);
      }
      for (const path of [
        '/store/chunks/..%2f..%2fcenter.key',
        '/store/chunks/%2e%2e',
        '/store/indexes/..',
      ]) {
        const res = await c.call('PUT', path, { token: c.tokens.operator, raw: Buffer.from('x') });
        assert.ok(res.status >= 400 && res.status < 500, `${path}: ${res.status}`);
      }
      assert.deepEqual(
        (await readdir(c.dir)).sort(),
        before,
        'nothing was written beside the store',
      );
      const rows = await c.database.db.selectFrom('image_versions').selectAll().execute();
      assert.equal(rows.length, 0);
    });
  });
}
