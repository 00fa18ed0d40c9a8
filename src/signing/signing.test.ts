import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../test/support/fixtures.ts';
import { ErrorCodes } from '../protocol/index.ts';
import {
  canonicalJson,
  generateKeyPair,
  keyIdOf,
  loadPrivateKey,
  loadPublicKey,
  signPayload,
  verifyPayload,
} from './index.ts';

const code = (c: string) => (err: { code?: string }) => err.code === c;

test('canonical JSON sorts keys and refuses what has no single text form', () => {
  assert.equal(
    canonicalJson({ b: 1, a: [true, null, 'x'], c: { z: 1, y: 2 } }),
    '{"a":[true,null,"x"],"b":1,"c":{"y":2,"z":1}}',
  );
  assert.equal(canonicalJson({ a: undefined, b: 'x' }), '{"b":"x"}');
  assert.throws(() => canonicalJson({ a: 1.5 }), TypeError);
  assert.throws(() => canonicalJson({ a: 2 ** 60 }), TypeError);
});

test('a signature verifies in its own domain only, and only for its payload and key', () => {
  const pair = generateKeyPair();
  const priv = createPrivateKey(pair.privatePem);
  const pub = createPublicKey(pair.publicPem);
  const sig = signPayload('image-manifest', '{"a":1}', priv);
  assert.equal(verifyPayload('image-manifest', '{"a":1}', sig, pub), true);
  assert.equal(verifyPayload('desired-state', '{"a":1}', sig, pub), false);
  assert.equal(verifyPayload('image-manifest', '{"a":2}', sig, pub), false);
  const other = createPublicKey(generateKeyPair().publicPem);
  assert.equal(verifyPayload('image-manifest', '{"a":1}', sig, other), false);
});

test('a key id is the SHA-256 of the raw public key, the same from either half', async (t) => {
  const dir = await tempDir(t);
  const pair = generateKeyPair();
  assert.match(pair.keyid, /^[0-9a-f]{64}$/);
  assert.equal(keyIdOf(createPublicKey(pair.publicPem)), pair.keyid);
  await writeFile(join(dir, 'p.key'), pair.privatePem, { mode: 0o600 });
  await writeFile(join(dir, 'p.pub'), pair.publicPem);
  assert.equal((await loadPrivateKey(join(dir, 'p.key'))).keyid, pair.keyid);
  assert.equal((await loadPublicKey(join(dir, 'p.pub'))).keyid, pair.keyid);
});

test('loading refuses a missing file, text that is no key and a key of another kind', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(loadPrivateKey(join(dir, 'none.key')), code(ErrorCodes.KEY_INVALID));
  await writeFile(join(dir, 'junk'), 'not a key');
  await assert.rejects(loadPrivateKey(join(dir, 'junk')), code(ErrorCodes.KEY_INVALID));
  await assert.rejects(loadPublicKey(join(dir, 'junk')), code(ErrorCodes.KEY_INVALID));
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 });
  await writeFile(join(dir, 'rsa.key'), rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await writeFile(join(dir, 'rsa.pub'), rsa.publicKey.export({ type: 'spki', format: 'pem' }));
  await assert.rejects(loadPrivateKey(join(dir, 'rsa.key')), code(ErrorCodes.KEY_INVALID));
  await assert.rejects(loadPublicKey(join(dir, 'rsa.pub')), code(ErrorCodes.KEY_INVALID));
});
