import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { test } from 'node:test';
import { isBulkheadError } from '../../protocol/index.ts';
import { displayUrl, parseDatabaseUrl } from './open.ts';

test('database URLs name SQLite files or PostgreSQL servers', () => {
  const cases: [string, ReturnType<typeof parseDatabaseUrl>][] = [
    [
      'sqlite:/var/lib/bulkhead/center.db',
      { dialect: 'sqlite', path: '/var/lib/bulkhead/center.db' },
    ],
    ['sqlite:///var/lib/center.db', { dialect: 'sqlite', path: '/var/lib/center.db' }],
    ['SQLite:/x.db', { dialect: 'sqlite', path: '/x.db' }],
    ['sqlite:data/center.db', { dialect: 'sqlite', path: resolve('data/center.db') }],
    ['sqlite::memory:', { dialect: 'sqlite', path: ':memory:' }],
    ['/srv/center.db', { dialect: 'sqlite', path: '/srv/center.db' }],
    ['./center.db', { dialect: 'sqlite', path: resolve('center.db') }],
    [
      'postgres://u:p@db:5432/center',
      { dialect: 'postgres', url: 'postgres://u:p@db:5432/center' },
    ],
    [
      'postgresql://db/center?sslmode=require',
      { dialect: 'postgres', url: 'postgresql://db/center?sslmode=require' },
    ],
  ];
  for (const [url, expected] of cases) assert.deepEqual(parseDatabaseUrl(url), expected, url);
});

test('a database URL of another form is refused, naming it without its password', () => {
  for (const url of [
    '',
    'sqlite:',
    'sqlite://host/center.db',
    'mysql://root:secret@db/center',
    'postgres:center',
    'postgres://[bad',
  ]) {
    assert.throws(
      () => parseDatabaseUrl(url),
      (err) =>
        isBulkheadError(err, 'ERR_DATABASE_URL') &&
        err.message.includes(`"${displayUrl(url)}"`) &&
        !err.message.includes('secret'),
      url,
    );
  }
});

test('displayUrl masks only the password', () => {
  assert.equal(displayUrl('postgres://u:secret@db/center'), 'postgres://u:***@db/center');
  assert.equal(displayUrl('postgres://u@db/center'), 'postgres://u@db/center');
  assert.equal(displayUrl('/srv/center.db'), '/srv/center.db');
});
