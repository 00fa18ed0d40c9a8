// The wrapped data keys beside the signed desired state (docs/keys.md): a key is taken only if
// the signed body's digest vouches for it, Engine stores the document (digests only) and each
// key in its own file, the stored document verifies alone, and a key file that is missing or
// does not match is not used (and brings a whole document at the next contact).
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { recordingLog, fixedClock } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import { TEST_DEVICE_KEYS, wrapForTest } from '../../test/support/keys.ts';
import {
  DEVICE_SIGNATURE_DOMAINS,
  HealthCheckSchema,
  IsolationPolicySchema,
  type DesiredState,
  type DesiredVm,
  type SignedDesiredState,
} from '../protocol/index.ts';
import {
  canonicalJson,
  generateKeyPair,
  signPayload,
  verifyPayload,
  wrappedKeyDigest,
} from '../signing/index.ts';
import { verifyDesiredState } from './center-client.ts';
import { keyRing } from './device-keys.ts';
import { EventQueue } from './queue.ts';
import { engineFiles } from './state.ts';
import { createSyncLoop, type SyncLoopDeps } from './sync.ts';
import { wrappedKeyFiles } from './wrapped-keys.ts';

const NOW = Date.parse('2026-03-02T09:15:00Z');
const DEVICE = '0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const center = generateKeyPair();
const centerKey = { keyid: center.keyid, key: createPublicKey(center.publicPem) };
const KEY_A = Buffer.alloc(32, 0xa1);
const KEY_B = Buffer.alloc(32, 0xb2);
const WRAPPED_A = wrapForTest(KEY_A, 'profile-a', DEVICE);
const WRAPPED_B = wrapForTest(KEY_B, 'profile-b', DEVICE);

function vm(name: string, profileId: string, wrapped: string): DesiredVm {
  return {
    name,
    profileId,
    system: {
      image: 'os',
      imageId: 'img-os',
      version: '1',
      versionId: 'ver-1',
      manifestId: '1'.repeat(64),
      size: 65536,
    },
    apps: [],
    policy: IsolationPolicySchema.parse({ encryptData: true }),
    healthCheck: HealthCheckSchema.parse({}),
    resources: { cpus: 1, memoryMib: 256 },
    resetPolicy: 'on-update',
    wrappedDataKeyDigest: wrappedKeyDigest(wrapped),
  };
}

function state(revision = 1): DesiredState {
  return {
    deviceId: DEVICE,
    revision,
    generatedAt: NOW - 1000,
    expiresAt: NOW + 86_400_000,
    device: { state: 'active' },
    mirrors: [],
    publishers: [],
    vms: [vm('work', 'profile-a', WRAPPED_A), vm('lab', 'profile-b', WRAPPED_B)],
    commands: [],
  };
}

/** The envelope as Center sends it: the signed body, then the wrapped keys beside it. */
function envelope(wrappedKeys: Record<string, string>, s = state()): SignedDesiredState {
  return {
    state: s,
    keyid: center.keyid,
    signature: signPayload(
      DEVICE_SIGNATURE_DOMAINS.desiredState,
      canonicalJson(s),
      createPrivateKey(center.privatePem),
    ),
    wrappedKeys,
  };
}

const verify = (raw: unknown) => verifyDesiredState(raw, { centerKey, deviceId: DEVICE, now: NOW });

test('a wrapped key the signed digest vouches for is taken; a forged, swapped, extra or missing one refuses the document', () => {
  const good = { 'profile-a': WRAPPED_A, 'profile-b': WRAPPED_B };
  assert.deepEqual(verify(envelope(good)).wrappedKeys, good);
  // Anyone can wrap a key of their own to the device's public key: it opens, but is refused.
  const forged = wrapForTest(Buffer.alloc(32, 0x66), 'profile-a', DEVICE);
  const cases: [string, Record<string, string>, RegExp][] = [
    ['forged', { ...good, 'profile-a': forged }, /wrapped key of VM work does not match/],
    [
      'swapped',
      { 'profile-a': WRAPPED_B, 'profile-b': WRAPPED_A },
      /wrapped key of VM work does not match/,
    ],
    ['extra', { ...good, 'profile-x': forged }, /profile profile-x, which none of its signed VMs/],
    ['missing', { 'profile-a': WRAPPED_A }, /names a wrapped key for VM lab but carries none/],
  ];
  for (const [name, keys, message] of cases) {
    assert.throws(
      () => verify(envelope(keys)),
      { code: 'ERR_DESIRED_STATE_WRAPPED_KEY', message },
      name,
    );
  }
});

/** A Center holding `document`: a 304 to a poll with its ETag, the whole envelope otherwise. */
function scriptedCenter(document: SignedDesiredState) {
  const polls: (string | null)[] = [];
  const etag = `"r${document.state.revision}"`;
  const client: SyncLoopDeps['client'] = {
    sendKillResult: () => Promise.reject(new Error('not killed')),
    async getDesiredState(current = { etag: null }) {
      polls.push(current.etag ?? null);
      return current.etag === etag
        ? { changed: false, etag }
        : { changed: true, etag, document: verify(document) };
    },
    sendReports: async () => ({ accepted: 0, duplicates: 0 }),
    subscribePush: () => ({ state: 'open', close() {} }),
  };
  return { client, polls };
}

async function syncOn(t: TestContext, dataDir: string, document: SignedDesiredState) {
  const clock = fixedClock(NOW);
  const files = engineFiles(dataDir, { clock });
  const queue = await EventQueue.open({ dir: files.queueDir, clock });
  t.after(() => queue.close());
  const center = scriptedCenter(document);
  const handed: DesiredState[] = [];
  const loop = createSyncLoop({
    client: center.client,
    queue,
    store: files,
    clock,
    log: recordingLog(),
    onDesiredState: (d) => void handed.push(d),
    push: false,
  });
  return { loop, files, polls: center.polls, handed };
}

test('Engine stores the signed document with digests only, each key in its own 0600 file; the stored document verifies alone', async (t) => {
  const dataDir = await tempDir(t);
  const e = await syncOn(t, dataDir, envelope({ 'profile-a': WRAPPED_A, 'profile-b': WRAPPED_B }));
  await e.loop.syncNow();

  const stored = await readFile(join(dataDir, 'desired-state.json'), 'utf8');
  assert.ok(!stored.includes(WRAPPED_A) && !stored.includes(WRAPPED_B), 'no wrapped key');
  assert.ok(stored.includes(wrappedKeyDigest(WRAPPED_A)), 'the digest is there');
  const { document } = JSON.parse(stored) as { document: SignedDesiredState };
  assert.equal(document.wrappedKeys, undefined);
  assert.ok(
    verifyPayload(
      DEVICE_SIGNATURE_DOMAINS.desiredState,
      canonicalJson(document.state),
      document.signature,
      centerKey.key,
    ),
    'the stored document verifies without its keys',
  );

  const dir = join(dataDir, 'keys', 'wrapped');
  assert.deepEqual((await readdir(dir)).sort(), ['profile-a', 'profile-b']);
  assert.equal(await readFile(join(dir, 'profile-a'), 'utf8'), WRAPPED_A);
  assert.equal((await stat(join(dir, 'profile-a'))).mode & 0o777, 0o600);

  // The key ring opens a VM's key from its file, through the stored document's digest.
  const ring = keyRing(DEVICE, TEST_DEVICE_KEYS, wrappedKeyFiles(dataDir));
  const [work, lab] = document.state.vms as [DesiredVm, DesiredVm];
  assert.deepEqual(ring.dataKey(work), KEY_A);
  // A key file swapped on the disk is as good as none.
  await writeFile(join(dir, 'profile-b'), WRAPPED_A);
  assert.throws(() => ring.dataKey(lab), {
    code: 'ERR_DATA_KEY_UNAVAILABLE',
    message: /VM lab needs its data key and this PC holds none .* next contact with Center/,
  });
});

test('a key file gone (destroyed at lease expiry): the next poll asks for the whole document, which brings it back', async (t) => {
  const dataDir = await tempDir(t);
  const keys = { 'profile-a': WRAPPED_A, 'profile-b': WRAPPED_B };
  const e = await syncOn(t, dataDir, envelope(keys));
  await e.loop.syncNow();
  await e.loop.syncNow();
  const files = wrappedKeyFiles(dataDir);
  assert.equal(await files.destroy('profile-a'), true);
  assert.equal(await files.destroy('profile-a'), false, 'idempotent');
  await assert.rejects(stat(join(dataDir, 'keys', 'wrapped', 'profile-a')), { code: 'ENOENT' });
  assert.equal(files.isComplete(e.loop.current()!.document.state), false);
  await e.loop.syncNow();
  // With every key the ETag goes along (a 304 costs Center nothing); without one, it does not.
  assert.deepEqual(e.polls, [null, '"r1"', null]);
  assert.equal(await readFile(join(dataDir, 'keys', 'wrapped', 'profile-a'), 'utf8'), WRAPPED_A);
  assert.equal(files.isComplete(e.loop.current()!.document.state), true);
});
