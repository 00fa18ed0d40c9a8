// `engine run` and `center serve` as systemd or a shell runs them: through `bin/bulkhead.js`
// on a system Node older than 24, so that the launcher re-runs itself on the pinned Node. A
// SIGTERM to the launcher stops the real process behind it, within seconds, and the launcher
// exits with its status; a second `engine run` on the same data directory is refused while
// the first runs; a lock left by a dead Engine is taken over.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { isAlive } from '../../src/engine/hypervisor/alive.ts';
import { BIN, runCli, startCenterProcess } from '../support/cli.ts';
import { ext4Image, osFiles, tempDir } from '../support/fixtures.ts';
import { waitFor, withTimeout } from '../support/wait.ts';

/** A Node older than 24 (Debian's), so that `bin/bulkhead.js` re-runs itself on the pinned one. */
const SYSTEM_NODE = '/usr/bin/node';
/** How long a stop may take on a machine busy with other work: "a few seconds" with room. */
const STOP_BOUND_MS = 30_000;

function requireOldNode(): void {
  const r = spawnSync(SYSTEM_NODE, ['-p', 'process.versions.node'], { encoding: 'utf8' });
  if (r.status !== 0)
    throw new Error(`${SYSTEM_NODE} is missing: install the Debian package nodejs`);
  assert.ok(Number(r.stdout.split('.')[0]) < 24, `${SYSTEM_NODE} must be older than 24 here`);
}

/** The one child process of `pid` (the launcher's real Bulkhead), once it exists. */
function childOf(pid: number): Promise<number> {
  return waitFor(`a child of ${pid}`, () => {
    const path = `/proc/${pid}/task/${pid}/children`;
    const pids = existsSync(path) ? readFileSync(path, 'utf8').trim().split(/\s+/) : [];
    return pids[0] ? Number(pids[0]) : undefined;
  });
}

function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: string | null }> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  }
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** `bulkhead engine run` through the launcher on the system Node; resolves once it runs. */
async function engineRun(t: TestContext, dataDir: string) {
  const child = spawn(
    SYSTEM_NODE,
    [BIN, 'engine', 'run', '--hypervisor', 'sim', '--data', dataDir, '--log-level', 'info'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  child.stdout.resume();
  const real = await childOf(child.pid!);
  t.after(() => {
    for (const pid of [real, child.pid!]) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  });
  await waitFor('engine run to run', () => {
    if (child.exitCode !== null) throw new Error(`engine run exited: ${stderr}`);
    return stderr.includes('"engine running"');
  });
  return { launcher: child, real, stderr: () => stderr };
}

test('engine run and center serve stop on SIGTERM through the launcher; one Engine per data directory', async (t) => {
  requireOldNode();
  const dir = await tempDir(t);
  const center = await startCenterProcess(t, ['--data', join(dir, 'center')], {
    node: SYSTEM_NODE,
  });
  const realCenter = await childOf(center.child.pid!);
  t.after(() => {
    if (isAlive(realCenter)) process.kill(realCenter, 'SIGKILL');
  });

  // An enrolled Engine: the CLI as an administrator and a PC run it.
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'credentials.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const cli = async (args: string[], input?: string) => {
    const r = await runCli(args, { env, ...(input !== undefined ? { input } : {}) });
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  await cli(
    ['login', '--center', center.info.url, '--username', 'admin', '--password-stdin'],
    `${center.info.initialAdmin!.password}\n`,
  );
  await cli(['groups', 'create', '--name', 'lab']);
  const { token } = JSON.parse(await cli(['tokens', 'create', '--group', 'lab', '--json']));
  const dataDir = join(dir, 'engine');
  await cli(['engine', 'enroll', '--center', center.info.url, '--token', token, '--data', dataDir]);

  await t.test('a PC not enrolled is told so, not about the lock', async () => {
    const none = await runCli(['engine', 'run', '--hypervisor', 'sim', '--data', join(dir, 'no')]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no device identity in .* enrol the device first/);
  });

  await t.test('a lock left by an Engine that died is taken over', async () => {
    const dead = spawnSync(process.execPath, ['-e', '0']);
    assert.equal(dead.status, 0);
    await writeFile(join(dataDir, 'engine.lock'), `${dead.pid}\n`);
    const engine = await engineRun(t, dataDir);
    assert.equal((await readFile(join(dataDir, 'engine.lock'), 'utf8')).trim(), `${engine.real}`);
    engine.launcher.kill('SIGTERM');
    await withTimeout('engine run to stop', exitOf(engine.launcher), STOP_BOUND_MS);
  });

  await t.test(
    'a second engine run on the same data directory is refused, naming the first',
    async () => {
      const engine = await engineRun(t, dataDir);
      const second = await runCli(['engine', 'run', '--hypervisor', 'sim', '--data', dataDir]);
      assert.equal(second.code, 1, second.stderr);
      assert.match(
        second.stderr,
        new RegExp(
          `another engine run \\(pid ${engine.real}\\) is using the data directory ${dataDir}`,
        ),
      );
      assert.ok(isAlive(engine.real), 'the first one runs on');

      // SIGTERM to the launcher, as systemd sends it: both processes are gone within the bound.
      engine.launcher.kill('SIGTERM');
      const exit = await withTimeout('engine run to stop', exitOf(engine.launcher), STOP_BOUND_MS);
      assert.deepEqual(exit, { code: 0, signal: null }, engine.stderr());
      await waitFor('the real Engine to be gone', () => !isAlive(engine.real), {
        timeoutMs: STOP_BOUND_MS,
      });
      assert.match(engine.stderr(), /engine stopping; VMs keep running/);
      assert.ok(!existsSync(join(dataDir, 'engine.lock')), 'the lock is released');
    },
  );

  await t.test('center serve stopped through the launcher leaves no Center behind', async () => {
    center.child.kill('SIGTERM');
    const exit = await withTimeout('center serve to stop', exitOf(center.child), STOP_BOUND_MS);
    assert.deepEqual(exit, { code: 0, signal: null }, center.stderr());
    await waitFor('the real Center to be gone', () => !isAlive(realCenter), {
      timeoutMs: STOP_BOUND_MS,
    });
  });
});

test('engine run stops on SIGTERM while a download is under way', async (t) => {
  requireOldNode();
  const dir = await tempDir(t);
  // Where PCs fetch chunks: Center's public URL, here a server that takes every request and
  // never answers, so the download is under way for as long as the test wants.
  const stalled: ServerResponse[] = [];
  const mirror = createServer((req, res) => {
    stalled.push(res);
  });
  await new Promise<void>((resolve) => mirror.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    stalled.forEach((res) => res.destroy());
    mirror.close();
  });
  const mirrorUrl = `http://127.0.0.1:${(mirror.address() as AddressInfo).port}`;
  const center = await startCenterProcess(t, [
    '--data',
    join(dir, 'center'),
    '--public-url',
    mirrorUrl,
  ]);
  const env = {
    BULKHEAD_CREDENTIALS: join(dir, 'credentials.json'),
    BULKHEAD_CENTER: '',
    BULKHEAD_TOKEN: '',
  };
  const cli = async (args: string[], input?: string) => {
    const r = await runCli(args, { env, ...(input !== undefined ? { input } : {}) });
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout.trim();
  };
  await cli(
    ['login', '--center', center.info.url, '--username', 'admin', '--password-stdin'],
    `${center.info.initialAdmin!.password}\n`,
  );
  // An image published at Center, a profile with it, and a PC that is given the profile.
  await cli(['keys', 'generate', '--out', join(dir, 'keys')]);
  const image = await ext4Image(dir, 'os', osFiles(1), '16M');
  const store = join(dir, 'store');
  await cli([
    'image',
    'import',
    image,
    '--store',
    store,
    '--name',
    'os',
    '--version',
    '1',
    '--key',
    join(dir, 'keys', 'publisher.key'),
  ]);
  await cli(['publishers', 'trust', '--key', join(dir, 'keys', 'publisher.pub')]);
  await cli(['image', 'push', '--store', store, 'os', '1', '--publish']);
  await cli(['profiles', 'create', '--name', 'work', '--image', 'os']);
  await cli(['groups', 'create', '--name', 'lab']);
  const token = await cli(['tokens', 'create', '--group', 'lab']);
  const dataDir = join(dir, 'engine');
  await cli([
    'engine',
    'enroll',
    '--center',
    center.info.url,
    '--token',
    token,
    '--data',
    dataDir,
    '--name',
    'pc-lab',
  ]);
  await cli(['devices', 'assign', 'pc-lab', '--profile', 'work']);

  const engine = await engineRun(t, dataDir);
  await waitFor('the download to start', () =>
    engine.stderr().includes('download of os@1 started') && stalled.length > 0 ? true : undefined,
  );
  engine.launcher.kill('SIGTERM');
  const exit = await withTimeout('engine run to stop', exitOf(engine.launcher), STOP_BOUND_MS);
  assert.deepEqual(exit, { code: 0, signal: null }, engine.stderr());
  await waitFor('the real Engine to be gone', () => !isAlive(engine.real), {
    timeoutMs: STOP_BOUND_MS,
  });
  // The download stopped; it did not fail, and the update waits for the next start.
  assert.match(engine.stderr(), /work: download of os@1 stopped/);
  assert.doesNotMatch(engine.stderr(), /download failed|update to os@1 failed/);
  const status = await runCli(['engine', 'status', '--data', dataDir]);
  assert.match(status.stdout, /^work: updating to os@1 — downloading/m, status.stdout);
  assert.ok(!existsSync(join(dataDir, 'engine.lock')), `the lock is released\n${engine.stderr()}`);
});
