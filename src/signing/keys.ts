import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  hash,
  sign,
  verify,
  type KeyObject,
} from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';

/** An Ed25519 public key with its id: SHA-256 of the raw 32-byte key, hex. */
export interface PublicKeyInfo {
  key: KeyObject;
  keyid: string;
}

export function generateKeyPair(): { privatePem: string; publicPem: string; keyid: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    keyid: keyIdOf(publicKey),
  };
}

export function keyIdOf(publicKey: KeyObject): string {
  const raw = publicKey.export({ type: 'spki', format: 'der' }).subarray(-32);
  return hash('sha256', raw);
}

async function readKeyFile(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new BulkheadError(
      ErrorCodes.KEY_INVALID,
      `cannot read ${what} ${path}: ${errnoCode(err) ?? String(err)}`,
      {
        cause: err,
        hint: 'check the path; `bulkhead keys generate --out DIR` makes a key pair',
      },
    );
  }
}

export function loadPrivateKey(path: string): Promise<{ key: KeyObject; keyid: string }> {
  return loadKey(path, 'private', 'Bulkhead signs with Ed25519');
}

export function loadPublicKey(path: string): Promise<PublicKeyInfo> {
  return loadKey(path, 'public', 'Bulkhead trusts Ed25519 keys');
}

async function loadKey(
  path: string,
  kind: 'private' | 'public',
  onlyEd25519: string,
): Promise<{ key: KeyObject; keyid: string }> {
  const pem = await readKeyFile(path, `${kind} key`);
  let key: KeyObject;
  try {
    key = kind === 'private' ? createPrivateKey(pem) : createPublicKey(pem);
  } catch (err) {
    throw new BulkheadError(ErrorCodes.KEY_INVALID, `${path} is not a ${kind} key in PEM form`, {
      cause: err,
    });
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new BulkheadError(
      ErrorCodes.KEY_INVALID,
      `${path} is a ${key.asymmetricKeyType} key; ${onlyEd25519}`,
    );
  }
  return { key, keyid: keyIdOf(kind === 'private' ? createPublicKey(key) : key) };
}

/** Domain-separated signing: a signature for one kind of document never verifies as another. */
function message(domain: string, payload: string): Buffer {
  return Buffer.from(`bulkhead:${domain}:v1\n${payload}`, 'utf8');
}

export function signPayload(domain: string, payload: string, key: KeyObject): string {
  return sign(null, message(domain, payload), key).toString('base64');
}

export function verifyPayload(
  domain: string,
  payload: string,
  signature: string,
  key: KeyObject,
): boolean {
  return verify(null, message(domain, payload), key, Buffer.from(signature, 'base64'));
}
