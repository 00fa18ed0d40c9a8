import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { test, type TestContext } from 'node:test';
import { createNetnsSandbox, NFT_TABLE, sandboxName } from '../../src/engine/hypervisor/netns.ts';
import { exec, tool } from '../support/fixtures.ts';

/*
 * The network sandbox of nat VMs (src/engine/hypervisor/netns.ts) without QEMU: processes in
 * two VMs' namespaces stand for the VMs' slirp. The QEMU test test/qemu/two-worlds.test.ts
 * shows the same with real guests.
 */

/** The VM-side address of a sandbox's uplink. */
async function insideAddress(ns: string): Promise<string> {
  const out = await tool('ip', ['-n', ns, '-4', '-o', 'addr', 'show', 'uplink'], 'iproute2');
  const m = /inet ([\d.]+)\//.exec(out);
  assert.ok(m, out);
  return m[1]!;
}

/** A greeting TCP server on 0.0.0.0:port, in namespace `ns` or (undefined) the host's. */
async function server(t: TestContext, ns: string | undefined, port: number, name: string) {
  const script = `require('node:net').createServer((s) => s.end('hello from ${name}\\n'))
    .listen(${port}, '0.0.0.0', () => process.stdout.write('ready\\n'));`;
  const argv = [...(ns ? ['ip', 'netns', 'exec', ns] : []), process.execPath, '-e', script];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => child.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.on('exit', (code) => reject(new Error(`server ${name} exited (${code})`)));
  });
}

/** What a connection from namespace `ns` to host:port reads, or `blocked`. */
async function connect(ns: string, host: string, port: number): Promise<string> {
  try {
    const { stdout } = await exec('ip', [
      'netns',
      'exec',
      ns,
      'busybox',
      'nc',
      '-w',
      '3',
      host,
      String(port),
    ]);
    return stdout.trim() || 'blocked';
  } catch {
    return 'blocked';
  }
}

function hostAddress(): string {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name.startsWith('bhd-')) continue;
    const a = addrs?.find((x) => x.family === 'IPv4' && !x.internal);
    if (a) return a.address;
  }
  throw new Error('the host has no non-loopback IPv4 address to test against');
}

test('a nat VM namespace reaches the outside, but neither the host nor another VM namespace; stale ones are removed', async (t) => {
  await tool('nft', ['--version'], 'nftables');
  await tool('busybox', ['true'], 'busybox-static');
  const forwarding = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
  t.after(() => writeFile('/proc/sys/net/ipv4/ip_forward', forwarding));
  t.after(() => exec('nft', ['delete', 'table', 'inet', NFT_TABLE]).catch(() => {}));
  const sandbox = createNetnsSandbox();
  const runDirs = [`/run/bulkhead-test-${process.pid}/a`, `/run/bulkhead-test-${process.pid}/b`];
  t.after(async () => {
    for (const dir of runDirs) await sandbox.leave(dir);
  });
  const [a, b] = runDirs.map(sandboxName) as [string, string];
  assert.deepEqual(await sandbox.enter(runDirs[0]!), ['ip', 'netns', 'exec', a]);
  await sandbox.enter(runDirs[1]!);
  // Entering again finds the namespace as it is.
  await sandbox.enter(runDirs[0]!);

  // "The outside": a third namespace behind a veth pair of its own, not one of the VMs'.
  const outside = `bhd-t${process.pid % 100000}`;
  t.after(async () => {
    await exec('ip', ['netns', 'delete', outside]).catch(() => {});
    await exec('ip', ['link', 'delete', outside]).catch(() => {});
  });
  for (const args of [
    ['netns', 'add', outside],
    ['link', 'add', outside, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', outside],
    ['addr', 'add', '10.214.1.1/30', 'dev', outside],
    ['link', 'set', outside, 'up'],
    ['-n', outside, 'addr', 'add', '10.214.1.2/30', 'dev', 'eth0'],
    ['-n', outside, 'link', 'set', 'eth0', 'up'],
  ]) {
    await tool('ip', args, 'iproute2');
  }
  const port = 30000 + (process.pid % 10000);
  await server(t, outside, port, 'outside');
  await server(t, b, port, 'vm-b');
  await server(t, undefined, port, 'host');

  assert.equal(await connect(a, '10.214.1.2', port), 'hello from outside');
  assert.equal(await connect(a, await insideAddress(b), port), 'blocked');
  assert.equal(await connect(a, hostAddress(), port), 'blocked');
  // The host's side of its own uplink and of the other VM's are the host too.
  assert.equal(
    await connect(
      a,
      (await insideAddress(a)).replace(/\d+$/, (n) => String(Number(n) - 1)),
      port,
    ),
    'blocked',
  );
  assert.equal(await connect(a, '127.0.0.1', port), 'blocked');

  // The rules are what blocks: without them the host answers the VM's namespace.
  await tool('nft', ['delete', 'table', 'inet', NFT_TABLE], 'nftables');
  assert.equal(await connect(a, hostAddress(), port), 'hello from host');
  await sandbox.enter(runDirs[0]!);
  assert.equal(await connect(a, hostAddress(), port), 'blocked');

  // b has a process in it (its server), a has none: only a is stale.
  assert.deepEqual(await sandbox.removeStale(), [a]);
  const list = (await exec('ip', ['netns', 'list'])).stdout;
  assert.doesNotMatch(list, new RegExp(`^${a}\\b`, 'm'));
  assert.match(list, new RegExp(`^${b}\\b`, 'm'));
  assert.doesNotMatch((await exec('ip', ['-o', 'link', 'show'])).stdout, new RegExp(`${a}@`));
  await sandbox.leave(runDirs[1]!);
  assert.doesNotMatch((await exec('ip', ['-o', 'link', 'show'])).stdout, new RegExp(`${b}@`));
});
