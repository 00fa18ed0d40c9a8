import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { test } from 'node:test';
import { generateKeyPair, signPayload, canonicalJson } from '../signing/index.ts';
import { DEVICE_SIGNATURE_DOMAINS, isBulkheadError, type DesiredState } from '../protocol/index.ts';
import { verifyDesiredState } from './center-client.ts';
import { normalizeCenterUrl } from './identity.ts';

const NOW = Date.parse('2026-03-02T09:15:00Z');
const DEVICE = '0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const center = generateKeyPair();
const centerKey = { keyid: center.keyid, key: createPublicKey(center.publicPem) };
const other = generateKeyPair();

function state(over: Partial<DesiredState> = {}): DesiredState {
  return {
    deviceId: DEVICE,
    revision: 100,
    generatedAt: NOW - 1000,
    expiresAt: NOW + 86_400_000,
    device: { state: 'active' },
    mirrors: [],
    publishers: [],
    vms: [],
    commands: [],
    ...over,
  };
}

function signed(s: object, by = center, domain: string = DEVICE_SIGNATURE_DOMAINS.desiredState) {
  return {
    state: s,
    keyid: by.keyid,
    signature: signPayload(domain, canonicalJson(s), createPrivateKey(by.privatePem)),
  };
}

const verify = (raw: unknown, minRevision?: number) =>
  verifyDesiredState(raw, { centerKey, deviceId: DEVICE, now: NOW, minRevision });

test('a document signed by the pinned key, for this device, current and fresh, verifies', () => {
  assert.equal(verify(signed(state()), 100).state.revision, 100);
  // A field a newer Center adds is covered by the signature and then ignored.
  const extended = { ...state(), colour: 'blue' };
  assert.equal(verify(signed(extended)).state.deviceId, DEVICE);
});

const refusals: [string, () => unknown, string][] = [
  ['not a document', () => 'hello', 'ERR_DESIRED_STATE_MALFORMED'],
  ['no signature', () => ({ state: state(), keyid: center.keyid }), 'ERR_DESIRED_STATE_MALFORMED'],
  ['another key', () => signed(state(), other), 'ERR_DESIRED_STATE_KEY'],
  [
    'another key claiming the pinned id',
    () => ({ ...signed(state(), other), keyid: center.keyid }),
    'ERR_DESIRED_STATE_SIGNATURE',
  ],
  [
    'the signature of another domain',
    () => signed(state(), center, DEVICE_SIGNATURE_DOMAINS.token),
    'ERR_DESIRED_STATE_SIGNATURE',
  ],
  [
    'content changed after signing',
    () => ({ ...signed(state()), state: state({ device: { state: 'locked' } }) }),
    'ERR_DESIRED_STATE_SIGNATURE',
  ],
  [
    'a garbage signature',
    () => ({ ...signed(state()), signature: '!!' }),
    'ERR_DESIRED_STATE_SIGNATURE',
  ],
  [
    'signed but not the protocol',
    () => signed({ ...state(), revision: 'new' }),
    'ERR_DESIRED_STATE_MALFORMED',
  ],
  [
    'for another device',
    () => signed(state({ deviceId: '0195a1b2-c3d4-7e5f-8a9b-000000000000' })),
    'ERR_DESIRED_STATE_DEVICE',
  ],
  ['expired', () => signed(state({ expiresAt: NOW - 1 })), 'ERR_DESIRED_STATE_EXPIRED'],
];

for (const [label, make, code] of refusals) {
  test(`refused: ${label} (${code})`, () => {
    assert.throws(
      () => verify(make()),
      (err) => isBulkheadError(err, code as never) && !err.retryable,
    );
  });
}

test('refused: a revision older than the one the device has (ERR_DESIRED_STATE_ROLLBACK)', () => {
  assert.throws(
    () => verify(signed(state({ revision: 99 })), 100),
    (err) => isBulkheadError(err, 'ERR_DESIRED_STATE_ROLLBACK'),
  );
});

test('center URLs: normalised, or a usage error naming --center', () => {
  assert.equal(normalizeCenterUrl('https://center.example.org/'), 'https://center.example.org');
  assert.equal(normalizeCenterUrl('http://10.0.0.1:8080/base//'), 'http://10.0.0.1:8080/base');
  for (const bad of ['ftp://x', 'not a url', 'https://c.example.org/?a=1']) {
    assert.throws(
      () => normalizeCenterUrl(bad),
      (err) => isBulkheadError(err, 'ERR_USAGE') && /--center/.test(err.message),
    );
  }
});
