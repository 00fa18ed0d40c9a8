import assert from 'node:assert/strict';
import { readFile, stat } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { test } from 'node:test';
import { systemClock } from '../../src/engine/clock.ts';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import {
  absoluteAxis,
  BLANK_VARIANCE,
  brightnessVariance,
  createQemuDriver,
  decodePng,
  Screen,
} from '../../src/engine/hypervisor/index.ts';
import {
  localApiSocket,
  qemuScreens,
  startLocalApi,
  statusVms,
} from '../../src/engine/local-api.ts';
import { silentLog } from '../../src/engine/log.ts';
import { engineFiles } from '../../src/engine/state.ts';
import { VmRecords } from '../../src/engine/update/records.ts';
import { ensureDataVolume } from '../../src/engine/volumes/overlays.ts';
import { IsolationPolicySchema } from '../../src/protocol/index.ts';
import { runCli } from '../support/cli.ts';
import { tempDir, tool } from '../support/fixtures.ts';
import { requireQemu, testGuest } from '../support/guest.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

/** Linux input event types and codes (linux/input-event-codes.h). */
const EV_KEY = 1;
const EV_ABS = 3;
const ABS_X = 0;
const ABS_Y = 1;
const BTN_LEFT = 0x110;

/** The `struct input_event`s (64-bit: 16 bytes of time, type, code, value) in `bytes`. */
function inputEvents(bytes: Buffer): { type: number; code: number; value: number }[] {
  const events = [];
  for (let o = 0; o + 24 <= bytes.length; o += 24) {
    events.push({
      type: bytes.readUInt16LE(o + 16),
      code: bytes.readUInt16LE(o + 18),
      value: bytes.readInt32LE(o + 20),
    });
  }
  return events;
}

/*
 * A VM's screen on real QEMU (TCG here): the test guest shows a shell on its VGA console (tty1);
 * `bulkhead engine screenshot` captures it as a separate process while the driver (as `engine
 * run` would) holds the VM's QMP connection, text typed through the screen's input path
 * reaches that shell, and a click through it reaches the guest's USB tablet at the pixel asked
 * for. The switcher's local API (a unix socket) shows the same screen and types into it.
 */

test('the screen of a running VM: the CLI and the local API show it, typed text and a click reach the guest', async (t) => {
  await requireQemu();
  const { guest, volumes } = await testGuest();
  const dataDir = await tempDir(t);
  // Where `engine run` keeps the VM's run directory, so the CLI finds it from --data.
  const runDir = join(dataDir, 'vms', 'work', 'run');
  const system = join(dataDir, 'system.qcow2');
  await tool(
    'qemu-img',
    ['create', '-q', '-f', 'qcow2', '-b', volumes.system.v1, '-F', 'raw', system],
    'qemu-utils',
  );
  const data = join(dataDir, 'data.qcow2');
  await ensureDataVolume(data, { sizeBytes: 32 * 1024 * 1024 });
  const driver = createQemuDriver({ accel: 'tcg' });
  t.after(() => driver.stop('work', { force: true }));
  const status = await driver.start({
    name: 'work',
    cpus: 1,
    memoryMib: 256,
    kernel: { path: guest.kernel, initrd: guest.initrd, cmdline: guest.cmdline },
    disks: [
      { role: 'system', path: system, format: 'qcow2', readOnly: false },
      { role: 'data', path: data, format: 'qcow2', readOnly: false },
    ],
    policy: IsolationPolicySchema.parse({ network: 'none' }),
    runDir,
  });
  assert.equal(status.state, 'running');
  // The VNC socket and the monitors are Engine's alone.
  assert.equal((await stat(runDir)).mode & 0o777, 0o700);

  const agent = await GuestAgent.waitUntilResponsive(status.guestAgentSocket!, PATIENCE_MS);
  t.after(() => agent.close());
  const sh = async (script: string) =>
    (await agent.exec(['/bin/sh', '-c', script], { timeoutMs: PATIENCE_MS })).stdout.toString();
  // The shell on the screen has opened tty1.
  await waitFor('the shell on tty1', async () =>
    (await sh('ls -l /proc/[0-9]*/fd/ 2>/dev/null')).includes('/dev/tty1'),
  );

  const out = join(dataDir, 'screen.png');
  // `bulkhead engine screenshot` of the VM, as a person at the PC runs it.
  const screenshot = (...extra: string[]) =>
    runCli(['engine', 'screenshot', '--vm', 'work', '--out', out, '--data', dataDir, ...extra]);
  const shot = await screenshot();
  assert.equal(shot.code, 0, shot.stderr);
  assert.match(shot.stdout, /^Saved the screen of work \(\d+×\d+\) to .*screen\.png\n$/);
  const image = decodePng(await readFile(out));
  assert.ok(image.width >= 640 && image.height >= 400, `${image.width}×${image.height}`);
  const variance = brightnessVariance(image);
  assert.ok(variance > BLANK_VARIANCE, `the screen is not blank (variance ${variance})`);

  // Typed on the VM's keyboard (shift included), as a person at its screen would.
  const screen = await Screen.open(runDir);
  t.after(() => screen.close());
  await screen.type('echo Typed! >/data/typed\n');
  const typed = await waitFor('the typed command to run', async () => {
    const text = await sh('cat /data/typed 2>/dev/null');
    return text === '' ? undefined : text;
  });
  assert.equal(typed, 'Typed!\n');

  // The mouse: the VM's USB tablet is an input device of the guest, and a click through the
  // screen lands on the pixel asked for (absolute axes scaled from the screen's size).
  const devices = await waitFor('the USB tablet in the guest', async () => {
    const text = await sh('cat /proc/bus/input/devices');
    return /USB Tablet/.test(text) ? text : undefined;
  });
  const tablet = devices.split('\n\n').find((d) => /USB Tablet/.test(d)) ?? '';
  const event = /H: Handlers=.*\b(event\d+)\b/.exec(tablet)?.[1];
  assert.ok(event, `the tablet's event device: ${tablet}`);
  // Reading the device makes the guest poll the tablet, and QEMU routes pointer events to it.
  await sh(`cat /dev/input/${event} >/tmp/pointer </dev/null 2>/dev/null &`);
  const size = await screen.size();
  assert.deepEqual(size, { width: image.width, height: image.height });
  const at = { x: Math.floor(size.width / 3), y: Math.floor(size.height / 4) };
  const seen = await waitFor('the click to reach the guest', async () => {
    await screen.pointer(at.x, at.y, 'left');
    const events = inputEvents(
      (await agent.exec(['/bin/cat', '/tmp/pointer'], { timeoutMs: PATIENCE_MS })).stdout,
    );
    return events.some((e) => e.type === EV_KEY && e.code === BTN_LEFT) ? events : undefined;
  });
  const last = (code: number) => seen.findLast((e) => e.type === EV_ABS && e.code === code)?.value;
  assert.equal(last(ABS_X), absoluteAxis(at.x, size.width));
  assert.equal(last(ABS_Y), absoluteAxis(at.y, size.height));
  const button = seen.filter((e) => e.type === EV_KEY && e.code === BTN_LEFT).map((e) => e.value);
  assert.deepEqual(button.slice(0, 2), [1, 0], 'pressed, then released');

  // --json keeps every field.
  const json = await screenshot('--json');
  assert.equal(json.code, 1, 'the screen monitor is held by the open Screen: busy, not a hang');
  assert.match(json.stderr, /busy/);
  screen.close();
  const again = await screenshot('--json');
  assert.equal(again.code, 0, again.stderr);
  const result = JSON.parse(again.stdout) as Record<string, unknown>;
  assert.deepEqual(Object.keys(result).sort(), [
    'bytes',
    'height',
    'out',
    'variance',
    'vm',
    'width',
  ]);
  assert.ok((result['variance'] as number) > BLANK_VARIANCE);

  // The switcher's local API over its unix socket: the screen and typing, on the real VM.
  await new VmRecords(engineFiles(dataDir).engineState, systemClock).update('work', (r) => r);
  const api = await startLocalApi(localApiSocket(dataDir), {
    vms: statusVms(dataDir),
    screens: qemuScreens(dataDir),
    log: silentLog,
  });
  t.after(() => api.close());
  const png = await overSocket(api.path, 'GET', '/v1/vms/work/screen.png');
  assert.equal(png.status, 200);
  assert.ok(brightnessVariance(decodePng(png.body)) > BLANK_VARIANCE, 'the API shows the screen');
  const typedThroughApi = await overSocket(
    api.path,
    'POST',
    '/v1/vms/work/input',
    JSON.stringify({ text: 'echo API >/data/api\n' }),
  );
  assert.equal(typedThroughApi.status, 204, typedThroughApi.body.toString());
  assert.equal(
    await waitFor('the command typed through the API to run', async () => {
      const text = await sh('cat /data/api 2>/dev/null');
      return text === '' ? undefined : text;
    }),
    'API\n',
  );
});

/** One request to the local API's unix socket. */
function overSocket(
  socketPath: string,
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: body === undefined ? {} : { 'content-type': 'application/json' },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (p: Buffer) => parts.push(p));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(parts) }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
