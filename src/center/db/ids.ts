import { randomBytes } from 'node:crypto';

/**
 * A new row id: a UUIDv7 (RFC 9562) in its usual lower-case text form. Its first 48 bits are
 * the creation time in milliseconds, so ids made later sort later: B-tree inserts land at the
 * right edge of the index (no random page splits on a 100,000-row devices table), and id is
 * a stable tie-breaker for keyset pagination that roughly follows creation order. The other
 * 74 bits are random, so ids are unguessable enough to appear in URLs without leaking counts.
 *
 * `nowMs` comes from the caller's clock so that tests control it.
 */
export function newId(nowMs: number): string {
  if (!Number.isSafeInteger(nowMs) || nowMs < 0 || nowMs >= 2 ** 48) {
    throw new RangeError(`newId: ${nowMs} is not a time in milliseconds since the epoch`);
  }
  const bytes = randomBytes(16);
  bytes.writeUIntBE(nowMs, 0, 6);
  bytes[6] = 0x70 | (bytes[6]! & 0x0f); // version 7
  bytes[8] = 0x80 | (bytes[8]! & 0x3f); // RFC 9562 variant
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
