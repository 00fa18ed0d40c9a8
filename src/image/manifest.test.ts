import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generateKeyPair, keyIdOf } from '../signing/index.ts';
import { ErrorCodes, type ManifestBody } from '../protocol/index.ts';
import { encodeManifest, manifestId, signManifest, verifyManifest } from './manifest.ts';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { DEFAULT_CHUNKER } from './chunker.ts';

function keys() {
  const pair = generateKeyPair();
  const priv = createPrivateKey(pair.privatePem);
  const pub = createPublicKey(pair.publicPem);
  return { signer: { key: priv, keyid: pair.keyid }, trusted: { key: pub, keyid: keyIdOf(pub) } };
}

const body: ManifestBody = {
  type: 'bulkhead.image-manifest',
  formatVersion: 1,
  name: 'debian',
  version: '12.1',
  size: 1 << 30,
  sha256: 'a'.repeat(64),
  created: '2026-11-23T10:00:00.000Z',
  chunker: DEFAULT_CHUNKER,
  index: { digest: 'b'.repeat(64), bytes: 1234, entries: 40 },
  stats: { chunks: 30, uniqueChunks: 29, dataBytes: 1 << 20, zeroBytes: (1 << 30) - (1 << 20) },
  parent: null,
};

const code = (c: string) => (err: { code?: string }) => err.code === c;

test('a signed manifest verifies and has a stable id', () => {
  const k = keys();
  const bytes = encodeManifest(signManifest(body, k.signer));
  const v = verifyManifest(bytes, [k.trusted], { name: 'debian', version: '12.1' });
  assert.deepEqual(v.body, body);
  assert.equal(v.id, manifestId(body));
  // Key order does not change the id: it is over canonical JSON.
  const reordered = Object.fromEntries(Object.entries(body).reverse()) as ManifestBody;
  assert.equal(manifestId(reordered), v.id);
});

test('manifests that must be refused are refused with a stable code', async (t) => {
  const k = keys();
  const other = keys();
  const signed = signManifest(body, k.signer);
  const json = (m: unknown) => Buffer.from(JSON.stringify(m));
  const cases: {
    name: string;
    bytes: Buffer;
    want: string;
    expect?: { name: string; version: string };
  }[] = [
    {
      name: 'body altered after signing',
      bytes: json({ ...signed, signed: { ...body, size: body.size + 1 } }),
      want: ErrorCodes.MANIFEST_SIGNATURE,
    },
    {
      name: 'signature bytes altered',
      bytes: json({
        ...signed,
        signatures: [{ ...signed.signatures[0]!, sig: Buffer.alloc(64, 7).toString('base64') }],
      }),
      want: ErrorCodes.MANIFEST_SIGNATURE,
    },
    {
      name: 'no signature',
      bytes: json({ ...signed, signatures: [] }),
      want: ErrorCodes.MANIFEST_UNSIGNED,
    },
    {
      name: 'signed by a key not trusted',
      bytes: encodeManifest(signManifest(body, other.signer)),
      want: ErrorCodes.UNTRUSTED_KEY,
    },
    {
      name: 'truncated',
      bytes: encodeManifest(signed).subarray(0, 100),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'garbage',
      bytes: Buffer.from([0xff, 0x00, 0x13, 0x37]),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'unknown field',
      bytes: json({ ...signed, extra: 1 }),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'bad digest field',
      bytes: json({ ...signed, signed: { ...body, sha256: 'nothex' } }),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'name with a path in it',
      bytes: json({ ...signed, signed: { ...body, name: '../etc' } }),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'too large',
      bytes: Buffer.alloc(70 * 1024, 0x20),
      want: ErrorCodes.MANIFEST_MALFORMED,
    },
    {
      name: 'another version passed off as the one asked for',
      bytes: encodeManifest(signed),
      want: ErrorCodes.MANIFEST_MISMATCH,
      expect: { name: 'debian', version: '12.2' },
    },
  ];
  for (const c of cases) {
    await t.test(c.name, () => {
      assert.throws(() => verifyManifest(c.bytes, [k.trusted], c.expect), code(c.want));
    });
  }
});

test('a second signature by a trusted key is enough', () => {
  const a = keys();
  const b = keys();
  const m = signManifest(body, a.signer);
  m.signatures.push(signManifest(body, b.signer).signatures[0]!);
  assert.equal(verifyManifest(encodeManifest(m), [b.trusted]).id, manifestId(body));
});
