import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import {
  createQemuDriver,
  probeKvm,
  type QemuDriver,
  type VmEvent,
  type VmSpec,
} from '../../src/engine/hypervisor/index.ts';
import { listConsoleLogs } from '../../src/engine/hypervisor/consoles.ts';
import { ensureDataVolume } from '../../src/engine/volumes/overlays.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import { tempDir, tool } from '../support/fixtures.ts';
import { requireQemu, testGuest, type GuestArtifacts } from '../support/guest.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

/*
 * The QEMU driver against real QEMU (TCG here) booting the test guest (guest/). Boots are the
 * cost, so each one checks several things, and the two flows run side by side.
 */

const AGENT_TIMEOUT_MS = PATIENCE_MS;
const MARKER = 'bulkhead-plaintext-marker-7f3a9c';

async function overlay(dir: string, name: string, backing: string): Promise<string> {
  const path = join(dir, `${name}.qcow2`);
  await tool(
    'qemu-img',
    ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'raw', path],
    'qemu-utils',
  );
  return path;
}

function vmSpec(name: string, dir: string, guest: GuestArtifacts, disks: VmSpec['disks']): VmSpec {
  return {
    name,
    cpus: 1,
    memoryMib: 256,
    kernel: { path: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    disks,
    policy: IsolationPolicySchema.parse({ network: 'none', encryptData: true }),
    runDir: join(dir, `run-${name}`),
    consoleDir: join(dir, `consoles-${name}`),
    version: 'os@1',
  };
}

async function run(agent: GuestAgent, script: string) {
  const r = await agent.exec(['/bin/sh', '-c', script], { timeoutMs: PATIENCE_MS });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

function collect(driver: QemuDriver): VmEvent[] {
  const events: VmEvent[] = [];
  driver.onEvent((e) => events.push(e));
  return events;
}

/** A TCP server on 127.0.0.1 that greets each connection with `hello from <name>`. */
async function tcpServer(t: TestContext, name: string): Promise<number> {
  const server = createServer((socket) => socket.end(`hello from ${name}\n`));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  return (server.address() as AddressInfo).port;
}

test('the KVM probe answers within its deadline (tcg here) and BULKHEAD_ACCEL overrides it', async () => {
  await requireQemu();
  const started = Date.now();
  const probe = await probeKvm({ timeoutMs: 3000 });
  // It gives up at its deadline instead of hanging; the margin is for a busy machine.
  assert.ok(Date.now() - started < 30_000, 'within the probe deadline');
  assert.equal(probe.accelerator, 'tcg', probe.reason);
  // A device that cannot be a working KVM answers tcg without hanging.
  assert.equal((await probeKvm({ kvmDevice: '/dev/null', timeoutMs: 1000 })).accelerator, 'tcg');
  const forced = createQemuDriver({ env: { BULKHEAD_ACCEL: 'kvm' } });
  assert.equal((await forced.accelerator()).accelerator, 'kvm');
  const wrong = createQemuDriver({ env: { BULKHEAD_ACCEL: 'fast' } });
  await assert.rejects(wrong.accelerator(), { code: 'ERR_CONFIG_INVALID' });
});

test('QEMU accepts the isolation command lines (restricted network, clipboard, USB) and refuses a bad one', async (t) => {
  await requireQemu();
  const dir = await tempDir(t);
  const driver = createQemuDriver({ accel: 'tcg' });
  const spec: VmSpec = {
    name: 'iso',
    cpus: 1,
    memoryMib: 64,
    disks: [],
    policy: IsolationPolicySchema.parse({
      network: 'restricted',
      allowedEndpoints: [{ host: '127.0.0.1', port: 9 }],
      clipboard: true,
      usbDevices: ['1d6b:0002'],
    }),
    runDir: join(dir, 'run-iso'),
  };
  const status = await driver.start(spec);
  assert.equal(status.state, 'running');
  await assert.rejects(driver.start(spec), { code: 'ERR_IN_USE' });
  const stopped = await driver.stop('iso', { force: true });
  assert.equal(stopped.state, 'stopped');
  assert.equal(stopped.lastExit, 'quit');

  const bad = { ...spec, name: 'bad', runDir: join(dir, 'run-bad') };
  bad.disks = [
    { role: 'system', path: join(dir, 'missing.qcow2'), format: 'qcow2', readOnly: false },
  ];
  await assert.rejects(driver.start(bad), (err: unknown) => {
    assert.equal((err as { code?: string }).code, 'ERR_INTERNAL');
    assert.match((err as Error).message, /missing\.qcow2/);
    return true;
  });
  assert.equal((await driver.status('bad')).state, 'crashed');
});

test('VMs on QEMU', { concurrency: true }, async (t) => {
  await requireQemu();
  const { guest, volumes } = await testGuest();

  const first = t.test(
    'boots v1 with data and app volumes; data survives a graceful stop; LUKS hides it; kill -9 is a crash',
    async (t: TestContext) => {
      const dir = await tempDir(t);
      const key = Buffer.alloc(32, 0x5a);
      const data = join(dir, 'data.qcow2');
      await ensureDataVolume(data, { sizeBytes: 64 * 1024 * 1024, key });
      const spec = vmSpec('work', dir, guest, [
        {
          role: 'system',
          path: await overlay(dir, 'system', volumes.system.v1),
          format: 'qcow2',
          readOnly: false,
        },
        {
          role: 'app:editor',
          path: await overlay(dir, 'editor', volumes.appEditor),
          format: 'qcow2',
          readOnly: true,
        },
        { role: 'data', path: data, format: 'qcow2', readOnly: false, encryptionKey: key },
      ]);
      const driver = createQemuDriver({ accel: 'tcg' });
      const events = collect(driver);
      t.after(() => driver.stop('work', { force: true }));

      const status = await driver.start(spec);
      assert.equal(status.state, 'running');
      assert.equal(status.accelerator, 'tcg');
      assert.ok(status.pid !== undefined && status.guestAgentSocket && status.vncSocket);
      // The key file QEMU read is gone once it runs.
      assert.deepEqual(
        (await readdir(spec.runDir)).filter((n) => n.endsWith('.secret')),
        [],
      );

      let agent = await GuestAgent.waitUntilResponsive(status.guestAgentSocket, AGENT_TIMEOUT_MS);
      assert.match((await run(agent, 'cat /etc/os-release')).out, /^VERSION=1$/m);
      assert.deepEqual(
        await agent.exec(['/usr/libexec/health-check'], PATIENCE_MS).then((r) => r.exitCode),
        0,
      );
      assert.equal(
        (await run(agent, 'cat /apps/editor/app.json')).out,
        '{"name":"editor","version":"1"}\n',
      );
      // The app volume is read-only in the guest.
      assert.notEqual((await run(agent, 'echo x > /apps/editor/x')).code, 0);
      const marker = Buffer.from(`${MARKER}\n`.repeat(64));
      assert.equal((await run(agent, `echo ${MARKER} > /data/note && sync`)).code, 0);
      await agent.writeFile('/data/big', marker);
      agent.close();

      const stopped = await driver.stop('work', { timeoutMs: PATIENCE_MS });
      assert.equal(stopped.state, 'stopped');
      assert.equal(stopped.lastExit, 'guest-shutdown', 'the guest powered off on the ACPI button');
      const names = events.map((e) => e.event);
      assert.ok(
        names.includes('POWERDOWN') && names.includes('SHUTDOWN') && names.includes('exited'),
      );
      // This boot's serial console log is kept after the VM stopped, named by its version.
      const firstBoot = await listConsoleLogs(spec.consoleDir!);
      assert.equal(firstBoot.length, 1, 'one console log per boot');
      assert.match(firstBoot[0]!, /-os@1\.log$/);
      // LUKS: the plaintext never reaches the host's file.
      assert.ok(!(await readFile(data)).includes(Buffer.from(MARKER)), 'data volume is encrypted');

      const again = await driver.start(spec);
      agent = await GuestAgent.waitUntilResponsive(again.guestAgentSocket!, AGENT_TIMEOUT_MS);
      assert.equal((await run(agent, 'cat /data/note')).out, `${MARKER}\n`);
      assert.deepEqual(await agent.readFile('/data/big'), marker);
      agent.close();

      events.length = 0;
      process.kill(again.pid!, 'SIGKILL');
      await waitFor(
        'the VM to show crashed',
        async () => (await driver.status('work')).state === 'crashed',
      );
      const crashed = await driver.status('work');
      // The next boot got its own console log; the first boot's is still there.
      const twoBoots = await listConsoleLogs(spec.consoleDir!);
      assert.equal(twoBoots.length, 2);
      assert.equal(twoBoots[0], firstBoot[0]);
      assert.equal(crashed.lastExit, 'killed by SIGKILL');
      assert.equal(crashed.pid, undefined);
      const exited = events.find((e) => e.event === 'exited');
      assert.equal(exited?.detail?.['state'], 'crashed');
    },
  );

  const second = t.test(
    'a VM outlives the Engine that started it: a new driver attaches; v3-broken fails its health check',
    async (t: TestContext) => {
      const dir = await tempDir(t);
      const spec = vmSpec('broken', dir, guest, [
        {
          role: 'system',
          path: await overlay(dir, 'system', volumes.system['v3-broken']),
          format: 'qcow2',
          readOnly: false,
        },
      ]);
      // Its network is restricted to one endpoint on the host; another one is not allowed.
      const allowed = await tcpServer(t, 'allowed');
      const other = await tcpServer(t, 'other');
      spec.policy = IsolationPolicySchema.parse({
        network: 'restricted',
        allowedEndpoints: [{ host: '127.0.0.1', port: allowed }],
      });
      // An "Engine" process starts the VM, then dies by SIGKILL.
      const driverUrl = new URL('../../src/engine/hypervisor/index.ts', import.meta.url).href;
      const child = spawn(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const { createQemuDriver } = await import(${JSON.stringify(driverUrl)});
           const s = await createQemuDriver({ accel: 'tcg' }).start(JSON.parse(process.env.SPEC));
           process.stdout.write(JSON.stringify(s) + '\\n');
           setInterval(() => {}, 1000);`,
        ],
        {
          env: { ...process.env, SPEC: JSON.stringify(spec) },
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      const first = await new Promise<{ pid: number; state: string }>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('\n')) resolve(JSON.parse(out));
        });
        child.on('exit', (code) => reject(new Error(`the starting process exited (${code})`)));
      });
      t.after(() => {
        try {
          process.kill(first.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      });
      assert.equal(first.state, 'running');
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));

      const driver = createQemuDriver({ accel: 'tcg' });
      const events = collect(driver);
      const attached = await driver.attach('broken', spec.runDir);
      assert.equal(attached.state, 'running');
      assert.equal(attached.pid, first.pid);
      assert.equal(attached.accelerator, 'tcg');
      // An observer (a test, a status command) looks without taking the QMP connection.
      const observer = createQemuDriver({ accel: 'tcg', observeOnly: true });
      assert.equal((await observer.attach('broken', spec.runDir)).pid, first.pid);
      await assert.rejects(observer.start(spec), /cannot start/);
      const agent = await GuestAgent.waitUntilResponsive(
        attached.guestAgentSocket!,
        AGENT_TIMEOUT_MS,
      );
      assert.match((await run(agent, 'cat /etc/os-release')).out, /^VERSION=3$/m);
      const check = await agent.exec(['/usr/libexec/health-check'], PATIENCE_MS);
      assert.equal(check.exitCode, 1);
      assert.match(check.stderr.toString(), /did not start/);

      // The allowed endpoint answers at its forward; the host's other port does not.
      const net = await run(
        agent,
        'B=/bin/busybox; $B ip link set eth0 up && $B ip addr add 10.0.2.15/24 dev eth0 && ' +
          // nc gives up on the reply once its stdin ends: keep it open long enough for a
          // guest on a busy machine.
          `$B sleep 10 | $B nc 10.0.2.100 ${allowed}; ` +
          `$B nc 10.0.2.2 ${other} </dev/null || echo blocked`,
      );
      assert.match(net.out, /^hello from allowed$/m, net.err);
      assert.doesNotMatch(net.out, /hello from other/);
      assert.match(net.out, /blocked/);
      agent.close();

      // The attached driver sees the guest's own power-off through QMP.
      await assert.rejects(agent.ping(100), { code: 'ERR_GUEST_AGENT_CLOSED' });
      const stopped = await driver.stop('broken', { timeoutMs: PATIENCE_MS });
      assert.equal(stopped.state, 'stopped');
      assert.equal(stopped.lastExit, 'guest-shutdown');
      assert.ok(events.some((e) => e.event === 'SHUTDOWN'));
      // The observer knows at once, not at its next look at the process.
      assert.notEqual((await observer.status('broken')).state, 'running');
      // Stopped: a later attach answers stopped and leaves no stale sockets.
      assert.equal((await driver.attach('other', spec.runDir)).state, 'stopped');
      assert.deepEqual(
        (await readdir(spec.runDir)).filter((n) => n.endsWith('.sock')),
        [],
      );
    },
  );
  await Promise.all([first, second]);
});
