// Signing and canonical encoding (DESIGN §4): Ed25519 keys and their ids, domain-separated
// signatures, and the one byte form of a JSON document that signatures cover. Image manifests,
// desired states, device tokens and challenges are all signed through here.
export {
  generateKeyPair,
  loadPrivateKey,
  loadPublicKey,
  keyIdOf,
  signPayload,
  verifyPayload,
  type PublicKeyInfo,
} from './keys.ts';
export { canonicalJson } from './canonical.ts';
export {
  parseEncryptionPublicKey,
  rawX25519,
  unwrapDataKey,
  wrapDataKey,
  wrappedKeyDigest,
  x25519PrivateFromSeed,
  type WrapContext,
  type WrapRandomness,
} from './wrap.ts';
