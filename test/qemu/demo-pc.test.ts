// The demo as a newcomer runs it: `center serve --demo` (what `npm start` runs), `bulkhead
// login`, then `bulkhead demo pc` as real processes, on real QEMU (TCG) with the test guest:
// the PC appears in Center, its VM is healthy on version 1, a rollout brings version 2 and the
// VM is healthy on it; Ctrl-C stops Engine and the VM.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { createQemuDriver, volumeLayout } from '../../src/engine/index.ts';
import { BIN, freePort, runCli, startCenterProcess } from '../support/cli.ts';
import { tempDir } from '../support/fixtures.ts';
import { requireQemu } from '../support/guest.ts';
import { waitFor } from '../support/wait.ts';

/** Processes whose command line mentions `text`. */
async function processesWith(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.split('\0').some((arg) => arg.includes(text))) pids.push(Number(entry));
  }
  return pids;
}

test('bulkhead demo pc: a PC appears, its VM is healthy on version 1, then on version 2; Ctrl-C stops it', async (t) => {
  await requireQemu();
  const dir = await tempDir(t, 'bulkhead-demo-pc-');
  const data = join(dir, 'data');
  const env = { BULKHEAD_CREDENTIALS: join(dir, 'credentials.json'), BULKHEAD_ACCEL: 'tcg' };
  // A port of its own: Center tells PCs its store's address, which port 0 is not.
  const port = await freePort();
  const listen = ['--listen', `127.0.0.1:${port}`];
  const center = await startCenterProcess(t, ['--demo', '--data', data, ...listen]);
  const { url } = center.info;
  const password = center.info.initialAdmin!.password;
  const login = await runCli(
    ['login', '--center', url, '--username', 'admin', '--password-stdin'],
    { env, input: `${password}\n` },
  );
  assert.equal(login.code, 0, login.stderr);

  const pc = spawn(process.execPath, [BIN, 'demo', 'pc', '--dir', data], {
    cwd: dir,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => pc.kill('SIGKILL'));
  let out = '';
  let err = '';
  pc.stdout.on('data', (b: Buffer) => (out += b.toString()));
  pc.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<number | null>((resolve) => pc.once('exit', resolve));
  const engineLog = () => readFile(join(data, 'demo-pc', 'engine.log'), 'utf8').catch(() => '');
  const says = async (text: string) => {
    try {
      await waitFor(
        `demo pc to say "${text}"`,
        () => {
          if (pc.exitCode !== null) throw new Error(`demo pc exited with ${pc.exitCode}`);
          return out.includes(text);
        },
        { intervalMs: 200 },
      );
    } catch (e) {
      const log = (await engineLog()).trim().split('\n').slice(-15).join('\n');
      throw new Error(
        `${(e as Error).message}; it said:\n${out}\n${err}\nEngine's log ends:\n${log}`,
      );
    }
  };
  // Minutes under TCG on a busy machine: the waits are bounded only to turn a hang into a failure.
  await says('is online');
  await says('healthy on version 1');
  await says('Rolling out demo-os@2');
  await says('healthy on version 2');
  await says('Ctrl-C stops Engine and the VM');
  const order = ['is online', 'healthy on version 1', 'Rolling out', 'healthy on version 2'];
  const at = order.map((s) => out.indexOf(s));
  assert.deepEqual(
    [...at].sort((a, b) => a - b),
    at,
    `in this order:\n${out}`,
  );

  // Center has it too: the PC in the demo group, running version 2.
  const token = JSON.parse(await readFile(env.BULKHEAD_CREDENTIALS, 'utf8')).token as string;
  const get = async <T>(path: string) =>
    (await (
      await fetch(`${url}/api/v1/admin${path}`, { headers: { authorization: `Bearer ${token}` } })
    ).json()) as T;
  const { devices } = await get<{ devices: { id: string; name: string }[] }>('/devices');
  assert.deepEqual(
    devices.map((d) => d.name),
    ['demo-pc'],
  );
  const detail = await get<{
    group: { name: string };
    currentVersions: Record<string, { system: string }>;
  }>(`/devices/${devices[0]!.id}`);
  assert.equal(detail.group.name, 'demo');
  const image = await get<{ versions: { id: string; version: string }[] }>('/images/demo-os');
  const v2 = image.versions.find((v) => v.version === '2')!.id;
  assert.deepEqual(
    Object.values(detail.currentVersions).map((v) => v.system),
    [v2],
  );

  // Ctrl-C: Engine stops, and so does the VM.
  pc.kill('SIGINT');
  assert.equal(await exited, 0, `${out}\n${err}`);
  assert.match(out, /Stopped Engine and the VM demo/);
  const dataDir = join(data, 'demo-pc');
  const driver = createQemuDriver({ observeOnly: true });
  const vm = await driver.attach('demo', volumeLayout(dataDir, 'demo').runDir);
  assert.equal(vm.state, 'stopped', 'the VM is stopped');
  assert.deepEqual(await processesWith(dataDir), [], 'no Engine or QEMU is left running');
  assert.equal(await center.stop(), 0);
});
