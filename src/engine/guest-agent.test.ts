import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { PATIENCE_MS, waitFor } from '../../test/support/wait.ts';
import { GuestAgent, GuestAgentError } from './guest-agent.ts';

/*
 * Against Debian's real qemu-ga, listening on a unix socket on the host (`-m unix-listen`):
 * the same protocol as over virtio-serial, without booting a VM. Commands that would touch the
 * host's power state or file systems are blocked.
 */

const QEMU_GA = '/usr/sbin/qemu-ga';
const BLOCKED = [
  'guest-shutdown',
  'guest-suspend-disk',
  'guest-suspend-ram',
  'guest-suspend-hybrid',
  'guest-fsfreeze-freeze',
  'guest-fsfreeze-freeze-list',
  'guest-fstrim',
  'guest-set-time',
  'guest-set-user-password',
  'guest-set-vcpus',
  'guest-set-memory-blocks',
].join(',');

async function startAgent(
  t: TestContext,
): Promise<{ dir: string; socket: string; child: ChildProcess }> {
  try {
    await access(QEMU_GA);
  } catch {
    throw new Error(
      `${QEMU_GA} was not found: install the Debian package qemu-guest-agent (apt-get install qemu-guest-agent)`,
    );
  }
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-qga-'));
  const socket = join(dir, 'qga.sock');
  const child = spawn(
    QEMU_GA,
    ['-m', 'unix-listen', '-p', socket, '-t', dir, '-f', join(dir, 'pid'), '-b', BLOCKED],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.after(async () => {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  await waitFor('qemu-ga to create its socket', () =>
    access(socket).then(
      () => true,
      () => child.exitCode !== null && assert.fail(`qemu-ga exited with ${child.exitCode}`),
    ),
  );
  return { dir, socket, child };
}

test('syncs, pings, runs commands with exit codes, output and input, reads and writes files', async (t) => {
  const { dir, socket } = await startAgent(t);
  const agent = await GuestAgent.waitUntilResponsive(socket, PATIENCE_MS);
  t.after(() => agent.close());
  await agent.ping(PATIENCE_MS);

  const r = await agent.exec(['/bin/sh', '-c', 'echo out; echo err >&2; exit 3'], {
    timeoutMs: PATIENCE_MS,
  });
  assert.equal(r.exitCode, 3);
  assert.equal(r.stdout.toString(), 'out\n');
  assert.equal(r.stderr.toString(), 'err\n');

  const cat = await agent.exec(['/bin/cat'], {
    input: Buffer.from('piped'),
    timeoutMs: PATIENCE_MS,
  });
  assert.equal(cat.stdout.toString(), 'piped');
  // Engine's health check passes a bare timeout.
  assert.equal((await agent.exec(['/bin/true'], PATIENCE_MS)).exitCode, 0);

  const killed = await agent.exec(['/bin/sh', '-c', 'kill -9 $$'], PATIENCE_MS);
  assert.equal(killed.signal, 9);
  assert.equal(killed.exitCode, 137);

  const big = Buffer.alloc(150 * 1024, 7);
  big.write('head');
  const path = join(dir, 'file.bin');
  await agent.writeFile(path, big);
  assert.deepEqual(await readFile(path), big);
  await writeFile(path, 'from the host');
  assert.equal((await agent.readFile(path)).toString(), 'from the host');

  await assert.rejects(agent.readFile(join(dir, 'missing')), (err: unknown) => {
    assert.ok(err instanceof GuestAgentError);
    assert.equal(err.code, 'ERR_GUEST_AGENT_COMMAND');
    return true;
  });
  await assert.rejects(agent.readFile(path, { maxBytes: 4 }), /larger than 4 bytes/);
  await assert.rejects(agent.exec(['/no/such/program'], PATIENCE_MS), {
    code: 'ERR_GUEST_AGENT_COMMAND',
  });
  // The agent still answers after refusals.
  await agent.ping(PATIENCE_MS);
});

test('a command that runs too long times out, and the connection stays usable', async (t) => {
  const { socket } = await startAgent(t);
  const agent = await GuestAgent.waitUntilResponsive(socket, PATIENCE_MS);
  t.after(() => agent.close());
  const started = Date.now();
  await assert.rejects(agent.exec(['/bin/sleep', '30'], { timeoutMs: 300 }), {
    code: 'ERR_GUEST_AGENT_TIMEOUT',
  });
  // Long before the command would have finished, however busy the machine.
  assert.ok(Date.now() - started < 15_000);
  assert.equal(
    (await agent.exec(['/bin/echo', 'again'], PATIENCE_MS)).stdout.toString(),
    'again\n',
  );
});

test('a client after one that left requests unanswered gets only its own replies', async (t) => {
  const { socket, child } = await startAgent(t);
  const first = await waitFor('qemu-ga to accept a client', () => connectedSocket(socket));
  // Requests whose replies the first client never reads. It leaves once qemu-ga has written
  // them: qemu-ga (unix-listen) ends itself when a reply finds its client gone, which a busy
  // machine made happen.
  let unread = '';
  first.on('data', (b: Buffer) => (unread += b.toString()));
  first.write('{"execute":"guest-info"}\n{"execute":"guest-ping"}\n');
  await waitFor('qemu-ga to answer the first client', () => unread.split('\n').length > 2);
  first.destroy();
  const second = await GuestAgent.waitUntilResponsive(socket, PATIENCE_MS);
  t.after(() => second.close());
  const info = (await second.command('guest-info')) as { version: string };
  assert.match(info.version, /^\d+\.\d+/);
  assert.equal(child.exitCode, null, 'qemu-ga still runs');
});

/** A socket connected to `path`, or undefined while nothing accepts there. */
function connectedSocket(path: string): Promise<Socket | undefined> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => resolve(socket));
    socket.once('error', () => resolve(undefined));
  });
}

test('a lost connection rejects pending calls at once with a clear error', async (t) => {
  const { dir, socket, child } = await startAgent(t);
  const agent = await GuestAgent.waitUntilResponsive(socket, PATIENCE_MS);
  const running = join(dir, 'running');
  const pending = agent.exec(['/bin/sh', '-c', `touch ${running}; sleep 30`], {
    timeoutMs: PATIENCE_MS,
  });
  // Killed while the command is known to run in the agent.
  await waitFor('the command to start', () =>
    access(running).then(
      () => true,
      () => false,
    ),
  );
  child.kill('SIGKILL');
  const started = Date.now();
  await assert.rejects(pending, (err: unknown) => {
    assert.ok(err instanceof GuestAgentError);
    assert.equal(err.code, 'ERR_GUEST_AGENT_CLOSED');
    assert.match(err.message, /connection/);
    return true;
  });
  // At once, not at the call's timeout.
  assert.ok(Date.now() - started < 30_000);
  await assert.rejects(agent.ping(1000), { code: 'ERR_GUEST_AGENT_CLOSED' });
});

test('a socket nobody answers on: sync times out; a missing socket is unreachable', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-qga-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'silent.sock');
  const server = createServer(() => {});
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.after(() => server.close());
  const agent = await GuestAgent.connect(path);
  t.after(() => agent.close());
  await assert.rejects(agent.ping(200), { code: 'ERR_GUEST_AGENT_TIMEOUT' });
  await assert.rejects(GuestAgent.connect(join(dir, 'none.sock')), {
    code: 'ERR_GUEST_AGENT_UNREACHABLE',
  });
  const started = Date.now();
  await assert.rejects(GuestAgent.waitUntilResponsive(path, 600, { attemptMs: 200 }), {
    code: 'ERR_GUEST_AGENT_TIMEOUT',
  });
  // It gives up at its deadline; the bound only leaves room for a busy machine.
  assert.ok(Date.now() - started < 30_000);
});
