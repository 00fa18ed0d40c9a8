import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { ErrorCodes } from '../protocol/index.ts';
import { parseEncryptionPublicKey, unwrapDataKey, wrapDataKey } from './index.ts';

const device = () => generateKeyPairSync('x25519');
const ctx = { deviceId: 'dev-1', profileId: 'prof-work' };
const refused = (err: { code?: string; message?: string }) =>
  err.code === ErrorCodes.DATA_KEY_UNWRAP && /does not open on this device/.test(err.message ?? '');

test('a wrapped data key opens with the device key and gives the same 32 bytes', () => {
  const { publicKey, privateKey } = device();
  const key = randomBytes(32);
  const wrapped = wrapDataKey(publicKey, key, ctx);
  assert.match(wrapped, /^bhwk1\.[\w-]+\.[\w-]+\.[\w-]+$/);
  assert.ok(!wrapped.includes(key.toString('base64url')));
  assert.ok(!wrapped.includes(key.toString('base64')));
  assert.deepEqual(unwrapDataKey(privateKey, wrapped, ctx), key);
  assert.notEqual(wrapDataKey(publicKey, key, ctx), wrapped, 'fresh randomness each time');
});

test('fixed randomness wraps the same key to the same text (stable documents)', () => {
  const { publicKey, privateKey } = device();
  const key = randomBytes(32);
  const r = { ephemeralSeed: Buffer.alloc(32, 9), nonce: Buffer.alloc(12, 4) };
  const a = wrapDataKey(publicKey, key, ctx, r);
  assert.equal(wrapDataKey(publicKey, key, ctx, r), a);
  assert.deepEqual(unwrapDataKey(privateKey, a, ctx), key);
});

test('a tampered, misdirected or malformed wrapped key is refused with ERR_DATA_KEY_UNWRAP', () => {
  const { publicKey, privateKey } = device();
  const wrapped = wrapDataKey(publicKey, randomBytes(32), ctx);
  const [p, eph, nonce, ct] = wrapped.split('.') as [string, string, string, string];
  const flipped = Buffer.from(ct, 'base64url');
  flipped[0] = (flipped[0] ?? 0) ^ 1;
  assert.throws(
    () => unwrapDataKey(privateKey, [p, eph, nonce, flipped.toString('base64url')].join('.'), ctx),
    refused,
    'tampered ciphertext',
  );
  assert.throws(() => unwrapDataKey(device().privateKey, wrapped, ctx), refused, 'another device');
  assert.throws(
    () => unwrapDataKey(privateKey, wrapped, { ...ctx, deviceId: 'dev-2' }),
    refused,
    'wrapped for another device id',
  );
  assert.throws(
    () => unwrapDataKey(privateKey, wrapped, { ...ctx, profileId: 'prof-personal' }),
    refused,
    'another profile',
  );
  assert.throws(() => unwrapDataKey(privateKey, 'not-a-key', ctx), refused, 'malformed');
  assert.throws(() => unwrapDataKey(privateKey, `${p}.AA.${nonce}.${ct}`, ctx), refused);
});

test('an encryption public key parses from PEM or raw base64 and must be X25519', () => {
  const { publicKey } = device();
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString();
  assert.equal(parseEncryptionPublicKey(pem).asymmetricKeyType, 'x25519');
  const raw = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32).toString('base64');
  assert.equal(parseEncryptionPublicKey(raw).asymmetricKeyType, 'x25519');
  const ed = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' });
  assert.throws(() => parseEncryptionPublicKey(ed.toString()), { code: ErrorCodes.KEY_INVALID });
  assert.throws(() => parseEncryptionPublicKey('nope'), { code: ErrorCodes.KEY_INVALID });
});
