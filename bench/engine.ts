// Engine on real QEMU with the test guest (`npm run bench -- engine`, or node bench/engine.ts):
//
//   - bytes downloaded for v1 → v2 against the bytes of the chunks actually new in v2,
//   - Engine's resident memory while idle (a healthy VM, passes every 300 ms) and during a
//     download (capped to last a few seconds),
//   - time from a failed health check to the previous version running and healthy again, and
//     that time minus the guest's own boot-to-healthy time.
//
// Prints one JSON document on stdout (also written to bench/out/engine-<date>.json).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildGuest, buildTestVolumes } from '../guest/build.ts';
import { createQemuDriver } from '../src/engine/hypervisor/index.ts';
import { GuestAgent } from '../src/engine/guest-agent.ts';
import { vmSpec } from '../src/engine/update/executors.ts';
import { GoldenStore } from '../src/engine/volumes/goldens.ts';
import { volumeLayout } from '../src/engine/volumes/overlays.ts';
import { DirectoryStore, importImage, type ImportResult } from '../src/image/index.ts';
import type { DesiredState, PublicKeyRef, VolumeRef } from '../src/protocol/index.ts';
import { osVersionRef, workDesiredState } from '../test/support/desired.ts';
import { testKeyRing } from '../test/support/keys.ts';
import { startStaticServer } from './http-server.ts';
import { round } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const childScript = join(repoRoot, 'test', 'qemu', 'engine-update.child.ts');
const log = (m: string) => console.error(`[bench engine] ${m}`);

interface Env {
  dir: string;
  url: string;
  publishers: PublicKeyRef[];
  versions: Record<string, ImportResult>;
}

function ref(env: Env, version: string): VolumeRef {
  return osVersionRef(version, env.versions[version]!);
}

/** Resident set of a process, in bytes, from /proc. */
async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1];
  return Number(kb ?? 0) * 1024;
}

async function sampleRss(
  pid: number,
  while_: () => boolean,
  everyMs = 100,
): Promise<{ maxBytes: number; meanBytes: number; samples: number }> {
  const values: number[] = [];
  while (while_()) {
    try {
      values.push(await rssOf(pid));
    } catch {
      break;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return {
    maxBytes: Math.max(0, ...values),
    meanBytes: values.length ? Math.round(values.reduce((a, b) => a + b, 0) / values.length) : 0,
    samples: values.length,
  };
}

/** `--child-pull`: pulls v1 then v2 into a fresh golden store, as Engine's download does. */
async function childPull(): Promise<void> {
  const spec = JSON.parse(process.env.BENCH_PULL!) as {
    dir: string;
    url: string;
    refs: VolumeRef[];
    publishers: PublicKeyRef[];
    bandwidth: number;
  };
  const goldens = new GoldenStore({ dir: spec.dir });
  for (const r of spec.refs) {
    await goldens.ensure(r, {
      mirrors: [spec.url],
      publishers: spec.publishers,
      bandwidthBytesPerSec: spec.bandwidth,
    });
  }
}

async function setup(): Promise<Env & { guest: Awaited<ReturnType<typeof buildGuest>> }> {
  const guest = await buildGuest();
  const volumes = await buildTestVolumes();
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-bench-engine-'));
  const { generateKeyPair, loadPrivateKey } = await import('../src/signing/index.ts');
  const pair = generateKeyPair();
  await writeFile(join(dir, 'p.key'), pair.privatePem, { mode: 0o600 });
  const key = await loadPrivateKey(join(dir, 'p.key'));
  const store = new DirectoryStore(join(dir, 'store'));
  const common = { store, name: 'os', key, tempDir: join(dir, 'tmp') };
  const versions: Record<string, ImportResult> = {
    '1': await importImage({ ...common, file: volumes.system.v1, version: '1', parent: null }),
  };
  versions['2'] = await importImage({
    ...common,
    file: volumes.system.v2,
    version: '2',
    parent: '1',
  });
  versions['3'] = await importImage({
    ...common,
    file: volumes.system['v3-broken'],
    version: '3',
    parent: '2',
  });
  const server = await startStaticServer(join(dir, 'store'));
  process.once('exit', () => void server.close());
  return {
    dir,
    url: server.url,
    publishers: [{ keyid: key.keyid, publicKey: pair.publicPem }],
    versions,
    guest,
  };
}

async function measureDownload(env: Env) {
  const goldens = new GoldenStore({ dir: join(env.dir, 'goldens-bytes') });
  const v1 = await goldens.ensure(ref(env, '1'), {
    mirrors: [env.url],
    publishers: env.publishers,
  });
  const v2 = await goldens.ensure(ref(env, '2'), {
    mirrors: [env.url],
    publishers: env.publishers,
  });
  const imported = env.versions['2']!;
  // Memory while downloading: the same pulls in a process of their own, capped so they last.
  const bandwidth = 4 * 1024 * 1024;
  const child = spawn(nodeBin, [fileURLToPath(import.meta.url), '--child-pull'], {
    env: {
      ...process.env,
      BENCH_PULL: JSON.stringify({
        dir: join(env.dir, 'goldens-rss'),
        url: env.url,
        refs: [ref(env, '1'), ref(env, '2')],
        publishers: env.publishers,
        bandwidth,
      }),
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  let running = true;
  const exited = new Promise<number | null>((r) =>
    child.once('exit', (code) => {
      running = false;
      r(code);
    }),
  );
  const started = performance.now();
  const rss = await sampleRss(child.pid!, () => running);
  const code = await exited;
  if (code !== 0) throw new Error(`the download process exited ${code}`);
  return {
    v1: { downloadedBytes: v1.downloadedBytes, imageBytes: v1.golden.size },
    v2: {
      downloadedBytes: v2.downloadedBytes,
      reusedBytes: v2.reusedBytes,
      newChunkBytes: imported.newBytes,
      newChunks: imported.newChunks,
      newChunksStoredBytes: imported.storedBytes,
      packBytes: imported.pack?.bytes ?? null,
      imageBytes: v2.golden.size,
    },
    rssDuringDownload: {
      ...rss,
      bandwidthCapBytesPerSec: bandwidth,
      seconds: round((performance.now() - started) / 1000, 2),
    },
  };
}

interface Trace {
  state: string;
  at: number;
}

async function measureEngine(env: Env & { guest: Awaited<ReturnType<typeof buildGuest>> }) {
  const dataDir = join(env.dir, 'engine');
  const desiredPath = join(env.dir, 'desired.json');
  const tracePath = join(env.dir, 'trace.jsonl');
  const eventsPath = join(env.dir, 'events.jsonl');
  await writeFile(tracePath, '');
  await writeFile(eventsPath, '');
  const desired = (version: string): DesiredState =>
    workDesiredState({ system: ref(env, version), mirrors: [env.url], publishers: env.publishers });
  const traces = async (): Promise<Trace[]> =>
    (await readFile(tracePath, 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Trace);
  const waitFor = async (pred: (t: Trace[]) => boolean, what: string) => {
    const deadline = Date.now() + 300_000;
    while (!pred(await traces())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  await writeFile(desiredPath, JSON.stringify(desired('1')));
  const child: ChildProcess = spawn(nodeBin, [childScript], {
    env: {
      ...process.env,
      ENGINE_DATA: dataDir,
      ENGINE_DESIRED: desiredPath,
      ENGINE_EVENTS: eventsPath,
      ENGINE_TRACE: tracePath,
      GUEST_KERNEL: env.guest.kernel,
      GUEST_INITRD: env.guest.initrd,
      GUEST_CMDLINE: env.guest.cmdline,
      ENGINE_CRASH_AT: '',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    log('installing v1');
    await waitFor((t) => t.some((x) => x.state === 'idle'), 'v1 to be installed');
    log('Engine idle with v1 running: sampling memory for 5 s');
    const until = Date.now() + 5000;
    const idle = await sampleRss(child.pid!, () => Date.now() < until, 250);

    log('updating to v2');
    const before2 = (await traces()).length;
    await writeFile(desiredPath, JSON.stringify(desired('2')));
    await waitFor((t) => t.slice(before2).some((x) => x.state === 'idle'), 'v2');
    const t2 = (await traces()).slice(before2);
    const at = (list: Trace[], s: string) => list.find((x) => x.state === s)?.at ?? NaN;
    // booting is persisted before the VM starts; committed once it answered and passed.
    const bootToHealthyMs = at(t2, 'committed') - at(t2, 'booting');

    log('updating to the broken v3');
    const before3 = (await traces()).length;
    await writeFile(desiredPath, JSON.stringify(desired('3')));
    await waitFor((t) => t.slice(before3).some((x) => x.state === 'idle'), 'the rollback');
    const t3 = (await traces()).slice(before3);
    const rollbackMs = at(t3, 'rolled-back') - at(t3, 'rolling-back');

    // The guest's own time from a start to healthy, for the same version (v2) with the same
    // disks, without Engine: what a rollback cannot avoid.
    log('timing a plain boot of v2');
    child.kill('SIGKILL');
    const driver = createQemuDriver({});
    const layout = volumeLayout(dataDir, 'work');
    await driver.attach('work', layout.runDir);
    await driver.stop('work', { timeoutMs: 10_000 });
    const vm = desired('2').vms[0]!;
    const kernel = { path: env.guest.kernel, initrd: env.guest.initrd, cmdline: env.guest.cmdline };
    const bootStarted = performance.now();
    const status = await driver.start(
      vmSpec(vm, { system: vm.system, apps: [] }, layout, testKeyRing(), kernel),
    );
    const agent = await GuestAgent.waitUntilResponsive(status.guestAgentSocket!, 120_000);
    const check = await agent.exec(['/usr/libexec/health-check'], 30_000);
    agent.close();
    const plainBootMs = performance.now() - bootStarted;
    if (check.exitCode !== 0) throw new Error('v2 is not healthy on a plain boot');
    return {
      rssIdle: idle,
      updateBootToHealthySeconds: round(bootToHealthyMs / 1000, 2),
      plainBootToHealthySeconds: round(plainBootMs / 1000, 2),
      rollback: {
        failedCheckToPreviousHealthySeconds: round(rollbackMs / 1000, 2),
        beyondGuestBootSeconds: round((rollbackMs - plainBootMs) / 1000, 2),
        brokenBootToFailedCheckSeconds: round(
          (at(t3, 'rolling-back') - at(t3, 'health-check')) / 1000,
          2,
        ),
      },
    };
  } finally {
    child.kill('SIGKILL');
    const driver = createQemuDriver({});
    await driver.attach('work', volumeLayout(dataDir, 'work').runDir);
    await driver.stop('work', { timeoutMs: 5000 });
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--child-pull')) return childPull();
  const env = await setup();
  try {
    log('downloads');
    const download = await measureDownload(env);
    log('Engine with QEMU');
    const engine = await measureEngine(env);
    const result = {
      benchmark: 'engine',
      machine: {
        cpus: availableParallelism(),
        cpuModel: cpus()[0]?.model ?? 'unknown',
        kernel: release(),
        accelerator: 'tcg (KVM when the probe finds it usable)',
      },
      download,
      engine,
    };
    const json = JSON.stringify(result, null, 2);
    console.log(json);
    const out = join(benchDir, 'out');
    await mkdir(out, { recursive: true });
    await writeFile(join(out, `engine-${new Date().toISOString().slice(0, 10)}.json`), `${json}\n`);
  } finally {
    await rm(env.dir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
