import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, appendFile, chown, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type { Cleanups } from './fixtures.ts';

const exec = promisify(execFile);

/** Where Debian's `postgresql` package puts the server binaries, one folder per major version. */
const DEBIAN_POSTGRES_ROOT = '/usr/lib/postgresql';

const MISSING =
  'install the Debian package postgresql (apt-get install postgresql), ' +
  'or set BULKHEAD_TEST_DATABASE_URL to a server the tests may create databases on';

/**
 * A URL to an empty PostgreSQL database of this test's own, dropped when the test ends.
 *
 * Without `BULKHEAD_TEST_DATABASE_URL`, it starts a throwaway cluster from Debian's binaries in
 * a temp dir, listening on a free port on 127.0.0.1, and stops and removes it when the test
 * ends. With it, it creates the database on that server instead (the URL's role needs
 * CREATEDB). Call `createDatabase` with the returned URL for more databases on the same server.
 *
 * Fails (never skips) when PostgreSQL is missing, naming the package to install.
 */
export async function startPostgres(t: Cleanups): Promise<string> {
  const given = process.env['BULKHEAD_TEST_DATABASE_URL'];
  if (given !== undefined && given !== '') return createDatabase(t, given);
  // No drop: the whole cluster goes when the test ends.
  return newDatabase(await startCluster(t));
}

/**
 * A new empty database on the server `url` points at, dropped when the test `t` ends. Give it
 * a subtest of the one that started the server: the hooks of a test run before its parent's,
 * so the drop comes before the server stops.
 */
export async function createDatabase(t: Cleanups, url: string): Promise<string> {
  const created = await newDatabase(url);
  const name = new URL(created).pathname.slice(1);
  t.after(() =>
    // `with (force)` ends connections a failed test left open, so the drop cannot hang.
    withClient(url, (client) => client.query(`drop database if exists ${name} with (force)`)),
  );
  return created;
}

async function newDatabase(url: string): Promise<string> {
  const name = `bulkhead_test_${randomBytes(6).toString('hex')}`;
  await withClient(url, (client) => client.query(`create database ${name}`));
  const created = new URL(url);
  created.pathname = `/${name}`;
  return created.href;
}

async function withClient(url: string, use: (client: pg.Client) => Promise<unknown>) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await use(client);
  } finally {
    await client.end();
  }
}

/** Starts a cluster for this test; returns a URL to its `postgres` database. */
async function startCluster(t: Cleanups): Promise<string> {
  const bin = await findServerBinaries();
  const owner = await clusterOwner();
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-pg-'));
  const run = (command: string, args: string[]) => {
    const [file, argv] = owner
      ? ['runuser', ['-u', 'postgres', '--', join(bin, command), ...args]]
      : [join(bin, command), args];
    // The working directory must be one the cluster's owner may enter.
    return exec(file, argv, { cwd: dir });
  };

  const data = join(dir, 'data');
  let isRunning = false;
  // One hook, so the server stops before its files go (a test's hooks run in the order added).
  t.after(async () => {
    if (isRunning) {
      // Immediate: nothing here is worth a clean shutdown, and the files are removed next.
      await run('pg_ctl', ['--pgdata', data, '--mode=immediate', '--wait', 'stop']).catch(
        () => undefined,
      );
    }
    await rm(dir, { recursive: true, force: true });
  });
  // PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system
  // user that Debian's package creates, and its commands run as that user.
  if (owner) await chown(dir, owner.uid, owner.gid);
  // --no-sync and the settings below trade durability, which a throwaway cluster does not
  // need, for speed: no fsync at all.
  await run('initdb', [
    '--pgdata',
    data,
    '--username=postgres',
    '--auth=trust',
    '--encoding=UTF8',
    '--no-locale',
    '--no-sync',
    '--no-instructions',
  ]).catch((err: unknown) => {
    throw new Error(`initdb failed: ${stderrOf(err)}`, { cause: err });
  });
  await appendFile(
    join(data, 'postgresql.conf'),
    [
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      'fsync = off',
      'synchronous_commit = off',
      'full_page_writes = off',
      '',
    ].join('\n'),
  );

  const log = join(dir, 'server.log');
  // Another process may take the free port between choosing it and the server binding it;
  // then try another.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      await run('pg_ctl', [
        '--pgdata',
        data,
        `--log=${log}`,
        '--wait',
        // Minutes: a machine busy with other work may take long to start a server.
        '--timeout=300',
        `--options=-p ${port}`,
        'start',
      ]);
      isRunning = true;
      return `postgres://postgres@127.0.0.1:${port}/postgres`;
    } catch (err) {
      const serverLog = await readFile(log, 'utf8').catch(() => '');
      if (attempt < 3 && /could not bind|already in use/i.test(serverLog)) continue;
      // pg_ctl may have timed out waiting for a server that did start.
      isRunning = true;
      throw new Error(`PostgreSQL did not start: ${stderrOf(err)}\n${serverLog}`, { cause: err });
    }
  }
}

async function findServerBinaries(): Promise<string> {
  const versions = await readdir(DEBIAN_POSTGRES_ROOT).catch(() => []);
  // Newest major version first.
  versions.sort((a, b) => Number(b) - Number(a));
  for (const version of versions) {
    const bin = join(DEBIAN_POSTGRES_ROOT, version, 'bin');
    const present = await Promise.all(
      ['initdb', 'pg_ctl', 'postgres'].map((tool) =>
        access(join(bin, tool)).then(
          () => true,
          () => false,
        ),
      ),
    );
    if (present.every(Boolean)) return bin;
  }
  throw new Error(
    `PostgreSQL server binaries (initdb, pg_ctl, postgres) not found under ` +
      `${DEBIAN_POSTGRES_ROOT}/*/bin: ${MISSING}`,
  );
}

/** The `postgres` user's ids when running as root; undefined when the tests run as a user. */
async function clusterOwner(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const [uid, gid] = await Promise.all([
      exec('id', ['-u', 'postgres']),
      exec('id', ['-g', 'postgres']),
    ]);
    return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
  } catch (err) {
    throw new Error(`there is no postgres system user to run PostgreSQL as: ${MISSING}`, {
      cause: err,
    });
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function stderrOf(err: unknown): string {
  if (err !== null && typeof err === 'object' && 'stderr' in err && err.stderr) {
    return String(err.stderr).trim();
  }
  return err instanceof Error ? err.message : String(err);
}
