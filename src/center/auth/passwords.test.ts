import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generatePassword, hashPassword, verifyPassword } from './passwords.ts';

test('a password verifies against its hash and nothing else does', async () => {
  const password = generatePassword();
  const hash = await hashPassword(password);
  assert.match(hash, /^scrypt\$32768\$8\$1\$[\w-]{22}\$[\w-]{43}$/);
  assert.ok(!hash.includes(password));
  assert.equal(await verifyPassword(password, hash), true);
  assert.equal(await verifyPassword(`${password}x`, hash), false);
  assert.notEqual(
    await hashPassword(password),
    hash,
    'salted: the same password hashes differently',
  );
});

test('malformed or hostile hashes are refused, not crashed on', async () => {
  for (const stored of [
    '',
    'plain',
    'scrypt$1$2$3',
    'bcrypt$a$b$c$d$e',
    'scrypt$1099511627776$8$1$AAAA$AAAA',
    'scrypt$32768$8$1$AAAA$short',
  ]) {
    assert.equal(await verifyPassword('x', stored), false, stored);
  }
});
