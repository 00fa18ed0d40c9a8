import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BULKHEAD_VERSION, ErrorCodes, InventorySchema } from '../protocol/index.ts';
import { createPublicKey } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tempDir } from '../../test/support/fixtures.ts';
import { generateKeyPair, keyIdOf, parseEncryptionPublicKey, rawX25519 } from '../signing/index.ts';
import { loadEncryptionKey } from './device-keys.ts';
import { enroll, gatherInventory, loadIdentity } from './identity.ts';
import { engineFiles } from './state.ts';

test('the inventory an Engine enrols with names its version', async () => {
  const inventory = await gatherInventory();
  assert.equal(inventory.engineVersion, BULKHEAD_VERSION);
  assert.ok(InventorySchema.safeParse(inventory).success);
});

test('enrolment sends an X25519 encryption key beside the signing key, kept sealed or in a key file', async (t) => {
  const dataDir = await tempDir(t);
  const center = generateKeyPair();
  let sent: Record<string, unknown> | undefined;
  const fetch = (async (_url: string, init?: RequestInit) => {
    sent = JSON.parse(String(init?.body)) as Record<string, unknown>;
    return new Response(
      JSON.stringify({
        deviceId: '01890000-0000-7000-8000-0000000000aa',
        centerKey: {
          keyid: keyIdOf(createPublicKey(center.publicPem)),
          publicKey: center.publicPem,
        },
      }),
      { status: 200, headers: { 'content-type': 'application/json' } },
    );
  }) as typeof globalThis.fetch;
  await enroll({
    centerUrl: 'http://center.test',
    token: 'tok',
    dataDir,
    fetch,
    tpm: 'off',
    inventory: { hostname: 'pc' },
  });
  const stored = await loadEncryptionKey(dataDir, 'off');
  assert.equal(stored?.protection, 'file');
  assert.deepEqual(
    rawX25519(parseEncryptionPublicKey(String(sent?.['encryptionKey']))),
    rawX25519(stored!.publicKey),
    'Center gets the public half of the key Engine keeps',
  );

  // Killed: Center's notice on disk and the identity key destroyed. The device says so.
  await engineFiles(dataDir).killNotice.write({
    notice: {
      notice: { deviceId: 'x', killedAt: 1, issuedAt: 1, commandId: null },
      keyid: 'k',
      signature: 's',
    },
    verifiedAt: 1,
  });
  await rm(engineFiles(dataDir).privateKeyPath);
  await assert.rejects(loadIdentity(dataDir), {
    code: ErrorCodes.DEVICE_KILLED,
    message: /this device was killed by Center/,
  });
});
