// The contract between Center and Engine, end to end: a real Center process, and Engines with
// the real sync loop, reconciler, update transaction, goldens and overlays (qemu-img), on the
// simulated hypervisor so that several PCs fit in one test. A system rollout and an app rollout
// complete on the outcomes the Engines report, a broken app version halts its rollout without
// touching the system rollout, each command kind is carried out and settled, and reports
// queued during an outage arrive once, after it.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { createSimDriver, type SimDriver } from '../../src/engine/hypervisor/sim.ts';
import type { VmSpec, VmStatus } from '../../src/engine/hypervisor/types.ts';
import {
  enroll,
  resolveEngineConfig,
  startEngineRun,
  type RunningEngine,
} from '../../src/engine/index.ts';
import type { GuestAgentLink } from '../../src/engine/update/health.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import { cliJson, freePort, startCenterProcess, type CenterProcess } from '../support/cli.ts';
import { bytesFrom, ext4Image, makeKeys, tempDir, tool } from '../support/fixtures.ts';

const DEVICES = 4;

/** Waits for `fn` to answer something truthy (the event it stands for), up to `ms`. */
async function until<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 300_000) {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A Center process on its own SQLite and store; stop() ends it, start() brings it back. */
function centerProcess(stops: (() => Promise<void>)[], dir: string, port: number) {
  let running: CenterProcess | undefined;
  const url = `http://127.0.0.1:${port}`;
  const args = [
    '--data',
    join(dir, 'center'),
    '--listen',
    `127.0.0.1:${port}`,
    '--public-url',
    url,
  ];
  const start = async () => {
    // `stop`, in `stops`, ends whichever process runs last.
    running = await startCenterProcess({ after: () => {} }, args);
    return running.info;
  };
  const stop = async () => {
    const c = running;
    running = undefined;
    await c?.stop();
  };
  stops.push(stop);
  return { url, start, stop };
}

interface Pc {
  name: string;
  deviceId: string;
  driver: SimDriver;
  specs: Map<string, VmSpec>;
  running: RunningEngine;
}

test('Center and Engine keep one contract: rollouts, commands, an outage', async (t) => {
  await tool('qemu-img', ['--version'], 'qemu-utils');
  // Engines and Center stop before their directories go: hooks run in the order registered.
  const stops: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const stop of stops.reverse()) await stop();
  });
  const dir = await tempDir(t, 'bulkhead-contract-');
  const keys = await makeKeys(dir);
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  const imports: [string, string, Record<string, Buffer>][] = [
    ['os', '1', { 'etc/os-release': Buffer.from('VERSION_ID=1\n'), bin: bytesFrom('os', 2e6) }],
    ['os', '2', { 'etc/os-release': Buffer.from('VERSION_ID=2\n'), bin: bytesFrom('os', 2e6) }],
    ['tools', '1', { 'tool.bin': bytesFrom('tools-1', 500_000) }],
    ['tools', '2', { 'tool.bin': bytesFrom('tools-2', 500_000) }],
    ['tools', '3', { 'tool.bin': bytesFrom('tools-3-broken', 500_000) }],
  ];
  let parent: Record<string, string | null> = {};
  for (const [name, version, files] of imports) {
    const file = await ext4Image(dir, `${name}-${version}`, files, '16M');
    await importImage({
      store,
      name,
      version,
      file,
      key: keys.key,
      parent: parent[name] ?? null,
      tempDir: join(dir, 'tmp'),
    });
    parent = { ...parent, [name]: version };
  }

  const center = centerProcess(stops, dir, await freePort());
  const admin = (await center.start()).initialAdmin!;
  const login = await fetch(`${center.url}/api/v1/admin/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(admin),
  });
  const token = ((await login.json()) as { token: string }).token;
  const api = async <T>(method: string, path: string, body?: unknown): Promise<T> => {
    const res = await fetch(`${center.url}/api/v1/admin${path}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
    return (text ? JSON.parse(text) : null) as T;
  };
  const cli = (args: string[]) =>
    cliJson([...args, '--center', center.url], { BULKHEAD_TOKEN: token });
  const push = (name: string, version: string, how: '--release' | '--publish', kind = 'system') =>
    cli(['image', 'push', '--store', storeDir, name, version, how, '--kind', kind]);

  await api('POST', '/publishers', {
    name: 'build',
    publicKey: await readFile(keys.publicPath, 'utf8'),
  });
  await push('os', '1', '--release');
  await push('tools', '1', '--release', 'app');
  const images = await api<{ images: { id: string; name: string }[] }>('GET', '/images');
  const imageId = (name: string) => images.images.find((i) => i.name === name)!.id;
  const versionId = async (name: string, version: string) => {
    const list = await api<{ versions: { id: string; version: string }[] }>(
      'GET',
      `/images/${imageId(name)}/versions`,
    );
    return list.versions.find((v) => v.version === version)!.id;
  };
  const group = await api<{ id: string }>('POST', '/groups', { name: 'lab' });
  const app = await api<{ id: string }>('POST', '/apps', {
    name: 'tools',
    displayName: 'Tools',
    imageId: imageId('tools'),
  });
  const profile = await api<{ id: string }>('POST', '/profiles', {
    name: 'work',
    systemImageId: imageId('os'),
    apps: [{ appId: app.id, mode: 'default' }],
    healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
    cpus: 1,
    memoryMib: 256,
  });

  // The guest agent of a simulated VM: it answers while the VM runs, and the health check fails
  // when the VM's tools overlay is backed by tools 3, the broken build (read with qemu-img).
  let brokenTools = '/tools/3 (not pushed yet)';
  const agentOf = (pc: Omit<Pc, 'running'>) => async (status: VmStatus) => {
    const link: GuestAgentLink = {
      ping: async () => {
        if ((await pc.driver.status(status.name)).state !== 'running') throw new Error('down');
      },
      exec: async () => {
        const disk = pc.specs.get(status.name)?.disks.find((d) => d.role === 'app:tools');
        if (!disk) return { exitCode: 2 };
        const info = JSON.parse(
          await tool('qemu-img', ['info', '--output=json', '-U', disk.path], 'qemu-utils'),
        ) as { 'backing-filename'?: string };
        return { exitCode: info['backing-filename']?.endsWith(brokenTools) ? 1 : 0 };
      },
      close: () => {},
    };
    return link;
  };

  const pcs: Pc[] = [];
  const { token: enrolment } = await api<{ token: string }>('POST', '/enrolment-tokens', {
    groupId: group.id,
    uses: DEVICES,
  });
  for (let i = 0; i < DEVICES; i++) {
    const dataDir = join(dir, `pc-${i}`);
    const identity = await enroll({
      centerUrl: center.url,
      token: enrolment,
      dataDir,
      name: `pc-${i}`,
      inventory: { hostname: `pc-${i}` },
    });
    await api('PATCH', `/devices/${identity.deviceId}`, { profiles: [profile.id] });
    const driver = createSimDriver();
    const specs = new Map<string, VmSpec>();
    const start = driver.start.bind(driver);
    driver.start = async (spec) => {
      specs.set(spec.name, spec);
      return start(spec);
    };
    const pc = { name: `pc-${i}`, deviceId: identity.deviceId, driver, specs };
    const config = resolveEngineConfig([
      {
        dataDir,
        hypervisor: 'sim',
        pollIntervalSeconds: 1,
        reconcileIntervalSeconds: 1,
        stopTimeoutSeconds: 1,
        logLevel: 'silent',
      },
    ]);
    const running = await startEngineRun(config, { hypervisor: driver, connectAgent: agentOf(pc) });
    stops.push(() => running.stop());
    pcs.push({ ...pc, running });
  }

  type Detail = {
    state: string;
    currentVersions: Record<string, { system?: string; apps: Record<string, string> }>;
  };
  const detail = (pc: Pc) => api<Detail>('GET', `/devices/${pc.deviceId}`);
  const runs = async (pc: Pc, system: string, tools: string) => {
    const v = (await detail(pc)).currentVersions[profile.id];
    return v?.system === system && v.apps[imageId('tools')] === tools;
  };
  const everyPcRuns = async (system: string, tools: string) => {
    for (const pc of pcs) if (!(await runs(pc, system, tools))) return false;
    return true;
  };

  const os1 = await versionId('os', '1');
  const tools1 = await versionId('tools', '1');
  await until('every PC healthy on os 1 + tools 1', () => everyPcRuns(os1, tools1));

  type Rollout = { id: string; state: string; stateReason: string | null };
  const rollout = (imageVersionId: string, failureThreshold = 0.5) =>
    api<Rollout>('POST', '/rollouts', {
      imageVersionId,
      groupId: group.id,
      phases: [50, 100],
      soakMinutes: 0,
      failureThreshold,
      minReports: 1,
      start: true,
    });
  const rolloutIn = (id: string, states: string[]) =>
    until(`rollout ${id} to be ${states.join(' or ')}`, async () => {
      const r = await api<Rollout>('GET', `/rollouts/${id}`);
      return states.includes(r.state) ? r : undefined;
    });

  await t.test('a system rollout completes on the Engines’ healthy reports', async () => {
    await push('os', '2', '--publish');
    const os2 = await versionId('os', '2');
    const r = await rollout(os2);
    await rolloutIn(r.id, ['completed']);
    await until('every PC on os 2', () => everyPcRuns(os2, tools1));
  });

  await t.test('an app rollout completes: its outcomes are credited to it', async () => {
    await push('tools', '2', '--publish', 'app');
    const tools2 = await versionId('tools', '2');
    const r = await rollout(tools2);
    await rolloutIn(r.id, ['completed']);
    const os2 = await versionId('os', '2');
    await until('every PC on tools 2', () => everyPcRuns(os2, tools2));
  });

  await t.test('a broken app version halts its rollout and rolls back, nothing else', async () => {
    await push('tools', '3', '--publish', 'app');
    brokenTools = `/tools/${await versionId('tools', '3')}.raw`;
    const os2 = await versionId('os', '2');
    const systemRollouts = await api<{ rollouts: { id: string; state: string }[] }>(
      'GET',
      '/rollouts',
    );
    const r = await rollout(await versionId('tools', '3'), 0);
    const halted = await rolloutIn(r.id, ['halted']);
    assert.match(halted.stateReason ?? '', /rolled back|failed/);
    const tools2 = await versionId('tools', '2');
    // The PCs that tried tools 3 came back to tools 2; Center says why.
    await until('every PC back on tools 2', () => everyPcRuns(os2, tools2));
    const events = await api<{ recentEvents: { type: string; data: { reason?: string } }[] }>(
      'GET',
      `/devices/${pcs[0]!.deviceId}`,
    );
    assert.ok(events.recentEvents.length > 0);
    // The system rollouts' verdicts are untouched by the app's rollback.
    const after = await api<{ rollouts: { id: string; state: string }[] }>('GET', '/rollouts');
    for (const before of systemRollouts.rollouts) {
      assert.equal(after.rollouts.find((x) => x.id === before.id)?.state, before.state);
    }
  });

  type CommandView = { id: string; state: string; result: { ok: boolean; message: string } };
  const command = async (pc: Pc, args: string[]) => {
    const issued = (await cli(['devices', ...args])) as CommandView;
    // What an administrator sees: `bulkhead devices commands`, with the PC's answer.
    return until(`${args[0]} on ${pc.name} to be settled`, async () => {
      const { commands } = (await cli(['devices', 'commands', pc.deviceId])) as {
        commands: CommandView[];
      };
      const c = commands.find((x) => x.id === issued.id);
      return c && c.state !== 'pending' && c.state !== 'delivered' ? c : undefined;
    });
  };
  const vmState = async (pc: Pc) => (await pc.driver.status('work')).state;

  await t.test('lock, unlock, restart-vm and kill are carried out and settled', async () => {
    const [a, b] = pcs as [Pc, Pc];
    const locked = await command(a, ['lock', a.deviceId]);
    assert.deepEqual([locked.state, locked.result.ok], ['done', true], locked.result.message);
    assert.equal(await vmState(a), 'stopped');
    assert.equal(await vmState(b), 'running', 'another PC is not touched');

    const unlocked = await command(a, ['unlock', a.deviceId]);
    assert.equal(unlocked.state, 'done');
    await until('the VM to run after the unlock', async () => (await vmState(a)) === 'running');

    const pid = (await a.driver.status('work')).pid;
    const restarted = await command(a, ['restart-vm', a.deviceId, '--vm', 'work']);
    assert.equal(restarted.state, 'done', restarted.result.message);
    const now = await a.driver.status('work');
    assert.equal(now.state, 'running');
    assert.notEqual(now.pid, pid);

    const killed = await command(b, ['kill', b.deviceId, '--yes']);
    assert.equal(killed.state, 'done', killed.result.message);
    assert.equal(await vmState(b), 'stopped');
    assert.equal((await detail(b)).state, 'killed');
    // Center gave the killed PC only its signed kill notice, which the PC keeps.
    assert.equal(b.running.engine.sync.killed()?.notice.notice.commandId, killed.id);
  });

  await t.test(
    'an outage: reports queue on the PC and arrive once when Center is back',
    async () => {
      const pc = pcs[2]!;
      await center.stop();
      // Something worth reporting while Center is away: the guest powers off, Engine starts it.
      pc.driver.guestPowerOff('work');
      await until('the VM to run again', async () => (await vmState(pc)) === 'running');
      await until('the vm-state event queued', async () => pc.running.engine.queue.depth() > 0);
      await center.start();
      await until('the queue delivered', async () => pc.running.engine.queue.depth() === 0);
      const events = await api<{ recentEvents: { id: string; type: string }[] }>(
        'GET',
        `/devices/${pc.deviceId}`,
      );
      assert.ok(events.recentEvents.some((e) => e.type === 'vm-state'));
      const ids = events.recentEvents.map((e) => e.id);
      assert.equal(new Set(ids).size, ids.length, 'no event twice');
    },
  );
});
