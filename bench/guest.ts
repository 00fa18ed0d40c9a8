// The full Debian guest (guest/debian.ts) on real QEMU (`npm run bench -- guest`):
//
//   - boot-to-healthy (systemd's `is-system-running --wait` through the guest agent) under each
//     firmware: UEFI with Secure Boot and a TPM, UEFI alone, and BIOS (which this UEFI-only
//     image cannot boot: how fast and in what words that is said);
//   - Engine's extra time over a plain `qemu-system-x86_64` started by hand with the same disk
//     and firmware (and a hand-started swtpm), rounds alternating, medians compared;
//   - bytes a PC downloads for v1 → v2 over HTTP, seeded with v1, against the novel-block bound
//     (the new image's 4 KiB blocks that v1 does not hold, zstd -19) and the chunks Center stores.
//
// Prints one JSON document on stdout (also written to bench/out/guest-<date>.json).
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildDebianGuest, type DebianGuest } from '../guest/debian.ts';
import { systemClock } from '../src/engine/clock.ts';
import { GuestAgent } from '../src/engine/guest-agent.ts';
import {
  createQemuDriver,
  readBootVerdict,
  type VmMachine,
  type VmSpec,
} from '../src/engine/hypervisor/index.ts';
import { ovmfFiles } from '../src/engine/hypervisor/qemu-args.ts';
import { checkHealth } from '../src/engine/update/health.ts';
import { DirectoryStore, importImage } from '../src/image/index.ts';
import { IsolationPolicySchema } from '../src/protocol/index.ts';
import { makeKeys } from '../test/support/fixtures.ts';
import { startStaticServer } from './http-server.ts';
import { novelBlockBound } from './peers.ts';
import { round, run } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(benchDir, '..');
const nodeBin = join(repoRoot, 'node_modules', '.bin', 'node');
const bulkheadJs = join(repoRoot, 'bin', 'bulkhead.js');
const log = (m: string) => console.error(`[bench guest] ${m}`);

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const MEMORY_MIB = 1024;
const TIMEOUT_SECONDS = 600;

interface Firmware {
  name: string;
  firmware: 'bios' | 'uefi';
  secureBoot: boolean;
  tpm: boolean;
}
const FIRMWARES: Firmware[] = [
  { name: 'uefi+secureboot+tpm', firmware: 'uefi', secureBoot: true, tpm: true },
  { name: 'uefi', firmware: 'uefi', secureBoot: false, tpm: false },
];
const BIOS: Firmware = { name: 'bios', firmware: 'bios', secureBoot: false, tpm: false };

/** A fresh copy-on-write overlay of `disk` (the cached image is never written). */
async function overlay(disk: string, dir: string): Promise<string> {
  const path = join(dir, 'system.qcow2');
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', disk, '-F', 'raw', path]);
  return path;
}

/**
 * A data volume as Engine makes it (ext4 labelled `data`, here raw and unencrypted): the guest
 * mounts it at /home and would wait for it otherwise.
 */
async function dataVolume(dir: string): Promise<string> {
  const path = join(dir, 'data.raw');
  await writeFile(path, '');
  await truncate(path, 1024 * 1024 * 1024);
  await run('mkfs.ext4', ['-q', '-F', '-L', 'data', path]);
  return path;
}

/** Boots `disk` as Engine does (its driver, its health check); seconds to healthy. */
async function engineBoot(
  guest: DebianGuest,
  fw: Firmware,
  dir: string,
  timeoutSeconds = TIMEOUT_SECONDS,
): Promise<{ seconds: number; healthy: boolean; reason?: string; guest?: string }> {
  await mkdir(dir, { recursive: true });
  const machine: VmMachine = {
    firmware: fw.firmware,
    secureBoot: fw.secureBoot,
    os: 'linux',
    devices: 'virtio',
    ...(fw.firmware === 'uefi' ? { varsPath: join(dir, 'efi-vars.fd') } : {}),
    ...(fw.tpm ? { tpm: { stateDir: join(dir, 'tpm'), key: Buffer.alloc(32, 0x42) } } : {}),
  };
  const runDir = join(dir, 'run');
  const consoleDir = join(dir, 'consoles');
  const spec: VmSpec = {
    name: 'bench',
    cpus: 1,
    memoryMib: MEMORY_MIB,
    disks: [
      {
        role: 'system',
        path: await overlay(guest.disks.v1, dir),
        format: 'qcow2',
        readOnly: false,
      },
      { role: 'data', path: await dataVolume(dir), format: 'raw', readOnly: false },
    ],
    policy: IsolationPolicySchema.parse({ network: 'none' }),
    runDir,
    consoleDir,
    version: 'debian@1',
    machine,
  };
  const driver = createQemuDriver({ accel: 'tcg', startTimeoutMs: 120_000 });
  const startedAt = Date.now();
  try {
    const status = await driver.start(spec);
    const result = await checkHealth({
      connect: () => GuestAgent.connect(status.guestAgentSocket!, { timeoutMs: 2000 }),
      check: { timeoutSeconds, command: guest.healthCheck },
      startedAt,
      clock: systemClock,
      bootVerdict: () => readBootVerdict(runDir, consoleDir),
    });
    const seconds = (Date.now() - startedAt) / 1000;
    if (!result.healthy) return { seconds, healthy: false, reason: result.reason };
    const agent = await GuestAgent.connect(status.guestAgentSocket!, { timeoutMs: 5000 });
    try {
      return { seconds, healthy: true, guest: await guestBootTime(agent) };
    } finally {
      agent.close();
    }
  } finally {
    await driver.stop('bench', { force: true }).catch(() => {});
    driver.close();
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((r) => child.once('exit', () => r()));
}

/**
 * Boots `disk` with a plain command line a person would type (the same firmware, disk, memory
 * and guest-agent channel; a swtpm started by hand for a TPM); seconds to healthy, asked the
 * same way through the guest agent.
 */
async function bareBoot(
  guest: DebianGuest,
  fw: Firmware,
  dir: string,
): Promise<{ seconds: number; guest: string }> {
  await mkdir(dir, { recursive: true });
  const disk = await overlay(guest.disks.v1, dir);
  const data = await dataVolume(dir);
  const qga = join(dir, 'qga.sock');
  const children: ChildProcess[] = [];
  const startedAt = Date.now();
  try {
    const args = ['-machine', fw.secureBoot ? 'q35,smm=on' : 'q35', '-accel', 'tcg', '-cpu', 'max'];
    args.push('-m', String(MEMORY_MIB), '-smp', '1', '-display', 'none', '-serial', 'null');
    if (fw.firmware === 'uefi') {
      const { code, varsTemplate } = ovmfFiles(fw.secureBoot);
      const vars = join(dir, 'vars.fd');
      await copyFile(varsTemplate, vars);
      if (fw.secureBoot) args.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
      args.push('-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${code}`);
      args.push('-drive', `if=pflash,format=raw,unit=1,file=${vars}`);
    }
    if (fw.tpm) {
      const state = join(dir, 'tpm');
      await mkdir(state);
      const sock = join(dir, 'swtpm.sock');
      const swtpm = spawn(
        'swtpm',
        ['socket', '--tpm2', '--tpmstate', `dir=${state}`, '--ctrl', `type=unixio,path=${sock}`],
        { stdio: 'ignore' },
      );
      children.push(swtpm);
      await waitForFile(sock);
      args.push('-chardev', `socket,id=chrtpm,path=${sock}`);
      args.push('-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-crb,tpmdev=tpm0');
    }
    args.push('-drive', `if=virtio,format=qcow2,file=${disk}`);
    args.push('-drive', `if=virtio,format=raw,file=${data}`);
    args.push('-chardev', `socket,id=qga,path=${qga},server=on,wait=off`);
    args.push('-device', 'virtio-serial-pci');
    args.push('-device', 'virtserialport,chardev=qga,name=org.qemu.guest_agent.0');
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(qemu);
    await waitForFile(qga);
    const agent = await GuestAgent.waitUntilResponsive(qga, TIMEOUT_SECONDS * 1000, {
      attemptMs: 1000,
    });
    try {
      const r = await agent.exec(guest.healthCheck, { timeoutMs: TIMEOUT_SECONDS * 1000 });
      if (r.exitCode !== 0) throw new Error(`the health check exited ${r.exitCode}`);
      const seconds = (Date.now() - startedAt) / 1000;
      return { seconds, guest: await guestBootTime(agent) };
    } finally {
      agent.close();
    }
  } finally {
    for (const c of children.reverse()) {
      c.kill('SIGKILL');
      await exited(c);
    }
  }
}

/** systemd's own account of the boot (firmware, loader, kernel, userspace), as one line. */
async function guestBootTime(agent: GuestAgent): Promise<string> {
  const r = await agent.exec(['/usr/bin/systemd-analyze'], { timeoutMs: 60_000 });
  return (
    r.stdout
      .toString()
      .split('\n')[0]
      ?.replace(/^Startup finished in /, '')
      .trim() ?? ''
  );
}

async function waitForFile(path: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    try {
      await stat(path);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`${path} did not appear`);
}

/** The total of `systemd-analyze`'s line (`5.3s (kernel) + 14.6s (userspace) = 19.9s`), s. */
export function guestTotal(line: string): number {
  const total = /= (?:(\d+)min )?([\d.]+)s$/.exec(line.trim());
  if (!total) throw new Error(`systemd-analyze said ${JSON.stringify(line)}`);
  return Number(total[1] ?? 0) * 60 + Number(total[2]);
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function measureBoots(guest: DebianGuest, dir: string) {
  const results: Record<string, unknown> = {};
  for (const fw of FIRMWARES) {
    const engine: number[] = [];
    const bare: number[] = [];
    const guestSays: string[] = [];
    /** Each round's time outside the guest's own boot (QEMU, firmware, loader, detection). */
    const engineOutside: number[] = [];
    const bareOutside: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      // Alternating which goes first, so a machine getting busier does not favour one side.
      const order = i % 2 === 0 ? (['engine', 'bare'] as const) : (['bare', 'engine'] as const);
      for (const who of order) {
        const roundDir = join(dir, `${fw.name}-${who}-${i}`);
        if (who === 'engine') {
          const r = await engineBoot(guest, fw, roundDir);
          if (!r.healthy) throw new Error(`${fw.name}: Engine's boot was not healthy: ${r.reason}`);
          engine.push(r.seconds);
          guestSays.push(`engine: ${r.guest}`);
          engineOutside.push(r.seconds - guestTotal(r.guest ?? ''));
        } else {
          const r = await bareBoot(guest, fw, roundDir);
          bare.push(r.seconds);
          guestSays.push(`bare: ${r.guest}`);
          bareOutside.push(r.seconds - guestTotal(r.guest));
        }
        log(
          `${fw.name} ${who} round ${i + 1}: ${(who === 'engine' ? engine : bare).at(-1)} s ` +
            `(the guest: ${guestSays.at(-1)})`,
        );
        await rm(roundDir, { recursive: true, force: true });
      }
    }
    results[fw.name] = {
      engineSeconds: engine.map((s) => round(s, 2)),
      bareQemuSeconds: bare.map((s) => round(s, 2)),
      engineMedianSeconds: round(median(engine), 2),
      bareQemuMedianSeconds: round(median(bare), 2),
      engineOverheadSeconds: round(median(engine) - median(bare), 2),
      // The guest's own boot (kernel + userspace, as systemd counts it) varies by seconds from
      // boot to boot; taken out, what is left is what each side adds around it.
      engineOutsideGuestSeconds: engineOutside.map((x) => round(x, 2)),
      bareOutsideGuestSeconds: bareOutside.map((x) => round(x, 2)),
      engineOverheadOutsideGuestSeconds: round(median(engineOutside) - median(bareOutside), 2),
      systemdAnalyze: guestSays,
    };
  }
  log('bios (the image has no BIOS loader)');
  const bios = await engineBoot(guest, BIOS, join(dir, 'bios'), 60);
  results['bios'] = {
    healthy: bios.healthy,
    secondsToVerdict: round(bios.seconds, 2),
    healthTimeoutSeconds: 60,
    reason: bios.reason ?? null,
  };
  return results;
}

async function measureBytes(guest: DebianGuest, dir: string) {
  await mkdir(dir, { recursive: true });
  const keys = await makeKeys(dir);
  const storeDir = join(dir, 'store');
  const store = new DirectoryStore(storeDir);
  const common = { store, name: 'debian', key: keys.key, tempDir: join(dir, 'tmp') };
  log('import v1 and v2');
  await importImage({ ...common, file: guest.disks.v1, version: '1', parent: null });
  const v2 = await importImage({ ...common, file: guest.disks.v2, version: '2', parent: '1' });
  const server = await startStaticServer(storeDir);
  try {
    const out = join(dir, 'pulled-v2.raw');
    log('pull v2 over HTTP, seeded with v1');
    server.reset();
    await run(nodeBin, [
      bulkheadJs,
      'image',
      'pull',
      '--from',
      server.url,
      '--image',
      'debian@2',
      '--trust',
      keys.publicPath,
      '--out',
      out,
      '--seed',
      guest.disks.v1,
      '--json',
    ]);
    const downloaded = server.bytesSent();
    await rm(out, { force: true });
    log('novel-block bound');
    const bound = await novelBlockBound(guest.disks.v1, guest.disks.v2);
    return {
      imageBytes: v2.size,
      allocatedBytes: v2.dataBytes,
      packagesUpgraded: guest.changes.upgraded.length,
      packagesAdded: guest.changes.added.length,
      downloadedBytes: downloaded,
      newChunks: v2.newChunks,
      newChunkBytes: v2.newBytes,
      novelBlockBoundBytes: bound.novelCompressedBytes,
      novelBlocks: bound.novelBlocks,
      downloadedOverBound: round(downloaded / bound.novelCompressedBytes, 2),
    };
  } finally {
    await server.close();
  }
}

async function main(): Promise<void> {
  const guest = await buildDebianGuest({ log });
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-bench-guest-'));
  try {
    const skip = new Set(
      process.argv
        .filter((a) => a.startsWith('--skip='))
        .flatMap((a) => a.slice('--skip='.length).split(',')),
    );
    for (const part of skip) {
      if (part !== 'boots' && part !== 'bytes')
        throw new Error(`--skip: boots or bytes, not ${part}`);
    }
    const boots = skip.has('boots') ? null : await measureBoots(guest, join(dir, 'boots'));
    const bytes = skip.has('bytes') ? null : await measureBytes(guest, join(dir, 'bytes'));
    const result = {
      benchmark: 'guest',
      machine: {
        cpus: availableParallelism(),
        cpuModel: cpus()[0]?.model ?? 'unknown',
        kernel: release(),
        accelerator: 'tcg',
        guestCpus: 1,
        guestMemoryMib: MEMORY_MIB,
      },
      rounds: ROUNDS,
      boots,
      v1ToV2: bytes,
    };
    const json = JSON.stringify(result, null, 2);
    console.log(json);
    const out = join(benchDir, 'out');
    await mkdir(out, { recursive: true });
    await writeFile(join(out, `guest-${new Date().toISOString().slice(0, 10)}.json`), `${json}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
process.exit(0);
