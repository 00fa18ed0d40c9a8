import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto';

const PARAMS = { N: 1 << 15, r: 8, p: 1 } as const;
export const KEY_BYTES = 32;
/** N·r·128 bytes plus headroom; the default 32 MiB is exactly too small for N=2^15. */
export const SCRYPT_MAXMEM = 128 * 1024 * 1024;

/** What deriving one key takes: the password, its salt and the cost parameters. */
export interface ScryptInput {
  password: string;
  salt: Buffer;
  params: { N: number; r: number; p: number };
}

/** Derives a key (on libuv's threadpool, shared with file I/O: see password-hasher.ts). */
function deriveOnThreadpool(input: ScryptInput): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const options: ScryptOptions = { ...input.params, maxmem: SCRYPT_MAXMEM };
    scrypt(input.password, input.salt, KEY_BYTES, options, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

/** What to derive for a new hash of `password`: fresh salt, current parameters. */
export function newHashInput(password: string): ScryptInput {
  return { password, salt: randomBytes(16), params: { ...PARAMS } };
}

/** A self-describing scrypt hash: `scrypt$N$r$p$salt$key` (base64url). */
export function formatHash(input: ScryptInput, key: Buffer): string {
  const { N, r, p } = input.params;
  return ['scrypt', N, r, p, input.salt.toString('base64url'), key.toString('base64url')].join('$');
}

/**
 * A stored hash taken apart: what to derive from the password tried, and the key it must give.
 * Undefined for a malformed hash or one whose parameters would cost too much (a hostile row).
 */
export function parseHash(
  password: string,
  stored: string,
): { input: ScryptInput; expected: Buffer } | undefined {
  const parts = stored.split('$');
  if (parts.length !== 6 || parts[0] !== 'scrypt') return undefined;
  const [N, r, p] = parts.slice(1, 4).map(Number) as [number, number, number];
  if (![N, r, p].every(Number.isSafeInteger) || N > 1 << 20 || r > 32 || p > 16) return undefined;
  const expected = Buffer.from(parts[5]!, 'base64url');
  if (expected.length !== KEY_BYTES) return undefined;
  return {
    input: { password, salt: Buffer.from(parts[4]!, 'base64url'), params: { N, r, p } },
    expected,
  };
}

/** Whether a derived key is the expected one, in constant time. */
export function keysMatch(actual: Buffer, expected: Buffer): boolean {
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}

/**
 * Hashes on libuv's threadpool: for the CLI and Center's start-up, where nothing else waits.
 * Center's routes use a `PasswordHasher` instead.
 */
export async function hashPassword(password: string): Promise<string> {
  const input = newHashInput(password);
  return formatHash(input, await deriveOnThreadpool(input));
}

/** Checks a password against a stored hash in constant time; false for any malformed hash. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const parsed = parseHash(password, stored);
  if (parsed === undefined) return false;
  return keysMatch(await deriveOnThreadpool(parsed.input), parsed.expected);
}

/**
 * A valid hash of a random password nobody knows: a login for a username that does not exist
 * is checked against it, so that it takes as long as one that does.
 */
export const UNKNOWN_USER_HASH =
  'scrypt$32768$8$1$3q2vQmYw8wX9r1rXcZ2Zlg$1XQ9pE8rPpO6b1vE0m6f2s8qk3bqv0tQ1XWcJd3kZ1A';

/** A password to hand to a person once: 128 bits, typeable. */
export function generatePassword(): string {
  return randomBytes(16).toString('base64url');
}
