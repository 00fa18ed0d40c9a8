/*
 * Builds Bulkhead's test guest from Debian packages only (guest/README.md):
 *
 *   - `vmlinuz`: Debian's kernel (`linux-image-amd64`), copied from /boot;
 *   - `initramfs.cpio.gz`: busybox-static and its applet links, the kernel modules the guest
 *     needs with a matching modules.dep, Debian's qemu-ga with the libraries `ldd` lists and the
 *     dynamic loader, and guest/init.sh as /init;
 *   - system volumes (`v1`, `v2`, `v3-broken`) and app volumes: deterministic ext4 images made
 *     with `mkfs.ext4 -d`, that differ the way real patches do.
 *
 * Run: `npm run -s guest [-- --out DIR]` (prints the paths), or import `buildGuest`.
 */
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  rename,
  rm,
  symlink,
  truncate,
  lutimes,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';

import { buildDebianGuest } from './debian.ts';

const execFileAsync = promisify(execFile);

const GUEST_DIR = dirname(fileURLToPath(import.meta.url));
const INIT_SCRIPT = join(GUEST_DIR, 'init.sh');
const DEFAULT_CACHE = join(GUEST_DIR, '.cache');

/** Kernel modules the guest loads (their dependencies come along through modules.dep). */
const MODULES = [
  'virtio_pci',
  'virtio_blk',
  'virtio_console',
  'virtio_net',
  'crc32c_generic',
  'ext4',
  'button',
  'evdev',
  // The VM's USB tablet (its absolute pointer): xHCI, then HID.
  'xhci_pci',
  'usbhid',
  'hid_generic',
];

/** Kernel command line for the test guest: console on the serial port, reboot on panic. */
export const GUEST_CMDLINE = 'console=ttyS0 panic=-1 quiet';

/** The Debian package each tool the build needs comes from. */
const PACKAGE_OF: Record<string, string> = {
  busybox: 'busybox-static',
  'qemu-ga': 'qemu-guest-agent',
  cpio: 'cpio',
  debugfs: 'e2fsprogs',
  depmod: 'kmod',
  modprobe: 'kmod',
  ldd: 'libc-bin',
  'mkfs.ext4': 'e2fsprogs',
  vmlinuz: 'linux-image-amd64',
};

export class GuestBuildError extends Error {
  /** The Debian package to install, when the failure is a missing one. */
  readonly debianPackage: string | undefined;
  constructor(message: string, debianPackage?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GuestBuildError';
    this.debianPackage = debianPackage;
  }
}

function missing(what: string, cause?: unknown): GuestBuildError {
  const pkg = PACKAGE_OF[what] ?? what;
  return new GuestBuildError(
    `${what} was not found: install the Debian package ${pkg} (apt-get install ${pkg})`,
    pkg,
    { cause },
  );
}

async function run(
  command: string,
  args: string[],
  env?: Record<string, string>,
): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync(command, args, {
      maxBuffer: 16 * 1024 * 1024,
      env: env === undefined ? process.env : { ...process.env, ...env },
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw missing(basename(command), err);
    throw new GuestBuildError(
      `${command} ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`,
      undefined,
      { cause: err },
    );
  }
}

async function which(command: string): Promise<string> {
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) {
    const path = join(dir, command);
    try {
      if ((await lstat(path)).isFile() || (await lstat(path)).isSymbolicLink()) return path;
    } catch {
      // not in this one
    }
  }
  throw missing(command);
}

/** The newest Debian kernel in /boot that has its modules installed. */
export async function findKernel(): Promise<{ version: string; vmlinuz: string }> {
  let names: string[] = [];
  try {
    names = await readdir('/boot');
  } catch {
    // no /boot at all
  }
  const versions = names
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  for (const version of versions) {
    try {
      await lstat(join('/lib/modules', version, 'modules.dep'));
      return { version, vmlinuz: join('/boot', `vmlinuz-${version}`) };
    } catch {
      // kernel without modules: not usable
    }
  }
  throw missing('vmlinuz');
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

export interface GuestArtifacts {
  /** The directory holding both files (one per cache key). */
  dir: string;
  kernel: string;
  initrd: string;
  kernelVersion: string;
  /** Kernel command line the guest expects. */
  cmdline: string;
}

/**
 * Builds (or finds in `cacheDir`) the guest kernel and initramfs. The cache key covers the
 * kernel version, this script, init.sh, busybox and qemu-ga, so a package upgrade or an edit
 * rebuilds. Safe to call from several processes at once: each builds in a temp dir and the
 * first rename wins.
 * @throws GuestBuildError naming the Debian package when a tool or the kernel is missing.
 */
export async function buildGuest(options: { cacheDir?: string } = {}): Promise<GuestArtifacts> {
  const cacheDir = options.cacheDir ?? DEFAULT_CACHE;
  const kernel = await findKernel();
  const busybox = await which('busybox');
  const qemuGa = await which('qemu-ga');
  await which('cpio');
  await which('depmod');
  const key = createHash('sha256');
  key.update(`kernel ${kernel.version}\n`);
  for (const file of [fileURLToPath(import.meta.url), INIT_SCRIPT, busybox, qemuGa]) {
    key.update(`${file} ${await sha256File(file)}\n`);
  }
  const dir = join(cacheDir, `guest-${kernel.version}-${key.digest('hex').slice(0, 16)}`);
  const artifacts: GuestArtifacts = {
    dir,
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initramfs.cpio.gz'),
    kernelVersion: kernel.version,
    cmdline: GUEST_CMDLINE,
  };
  try {
    await lstat(artifacts.initrd);
    return artifacts;
  } catch {
    // not built yet
  }
  await mkdir(cacheDir, { recursive: true });
  const work = await mkdtemp(join(cacheDir, 'build-'));
  try {
    const out = join(work, 'out');
    await mkdir(out);
    const staging = join(work, 'root');
    await stageInitramfs(staging, kernel.version, busybox, qemuGa);
    await writeCpioGz(staging, join(out, 'initramfs.cpio.gz'));
    await copyFile(kernel.vmlinuz, join(out, 'vmlinuz'));
    try {
      await rename(out, dir);
    } catch (err) {
      // Another process finished first: its result is as good as ours.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return artifacts;
}

async function stageInitramfs(
  root: string,
  kernelVersion: string,
  busybox: string,
  qemuGa: string,
): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'run', 'tmp']) {
    await mkdir(join(root, d), { recursive: true });
  }
  for (const d of ['etc', 'newroot', 'ga/lib']) await mkdir(join(root, d), { recursive: true });
  await copyFile(busybox, join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);
  await linkApplets(root, busybox);

  // qemu-ga, its libraries and the loader, under /ga (see init.sh for why not at their usual
  // paths: the same files are bind-mounted into the system volume's /run).
  await copyFile(qemuGa, join(root, 'ga/qemu-ga'));
  await chmod(join(root, 'ga/qemu-ga'), 0o755);
  const { stdout } = await run('ldd', [qemuGa]);
  let loader: string | undefined;
  for (const line of stdout.split('\n')) {
    const lib = /=>\s*(\/\S+)/.exec(line)?.[1];
    const direct = /^\s*(\/\S+)\s+\(/.exec(line)?.[1];
    if (lib !== undefined) await copyFile(lib, join(root, 'ga/lib', basename(lib)));
    else if (direct !== undefined) loader = direct;
  }
  if (loader === undefined) throw new GuestBuildError(`ldd ${qemuGa} named no dynamic loader`);
  await copyFile(loader, join(root, 'ga/ld.so'));
  await chmod(join(root, 'ga/ld.so'), 0o755);

  await stageModules(root, kernelVersion);
  const init = join(root, 'init');
  await copyFile(INIT_SCRIPT, init);
  await chmod(init, 0o755);
}

async function linkApplets(root: string, busybox: string): Promise<void> {
  const { stdout } = await run(busybox, ['--list-full']);
  for (const applet of stdout.split('\n').filter(Boolean)) {
    if (applet === 'bin/busybox') continue;
    const path = join(root, applet);
    await mkdir(dirname(path), { recursive: true });
    await symlink('/bin/busybox', path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
}

/** Copies the modules (with their dependencies) and writes modules.dep with `depmod -b`. */
async function stageModules(root: string, kernelVersion: string): Promise<void> {
  const files = new Set<string>();
  for (const m of MODULES) {
    const { stdout } = await run('modprobe', ['-S', kernelVersion, '--show-depends', m]);
    for (const line of stdout.split('\n')) {
      const ko = /^insmod (\S+)/.exec(line)?.[1];
      if (ko !== undefined) files.add(ko);
    }
  }
  const base = join('/lib/modules', kernelVersion);
  for (const ko of files) {
    const target = join(root, 'lib/modules', kernelVersion, relative(base, ko));
    await mkdir(dirname(target), { recursive: true });
    await copyFile(ko, target);
  }
  for (const f of ['modules.order', 'modules.builtin', 'modules.builtin.modinfo']) {
    await copyFile(join(base, f), join(root, 'lib/modules', kernelVersion, f)).catch(() => {});
  }
  await run('depmod', ['-b', root, kernelVersion]);
}

/** `find . | cpio -o -H newc | gzip`, without a shell. */
async function writeCpioGz(root: string, out: string): Promise<void> {
  const paths: string[] = [];
  const walk = async (dir: string): Promise<void> => {
    for (const entry of (await readdir(join(root, dir), { withFileTypes: true })).sort((a, b) =>
      a.name.localeCompare(b.name),
    )) {
      const rel = dir === '.' ? entry.name : `${dir}/${entry.name}`;
      paths.push(rel);
      if (entry.isDirectory()) await walk(rel);
    }
  };
  await walk('.');
  const child = spawn('cpio', ['-o', '-H', 'newc', '--quiet', '-R', '0:0'], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', (err) =>
      reject((err as NodeJS.ErrnoException).code === 'ENOENT' ? missing('cpio', err) : err),
    );
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new GuestBuildError(`cpio failed: ${stderr.trim()}`)),
    );
  });
  child.stdin.end(paths.join('\n') + '\n');
  await Promise.all([
    pipeline(child.stdout, createGzip({ level: 6 }), createWriteStream(out)),
    exited,
  ]);
}

// ---------------------------------------------------------------------------------------------
// Volumes

/** Fixed time of every file and of the file system itself, so images are reproducible. */
const EPOCH = 1_700_000_000;

export type SystemVersion = 'v1' | 'v2' | 'v3-broken';

/** Deterministic bytes that do not compress (a stand-in for binaries). */
export function pseudoRandom(seed: string, length: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; total < length; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest();
    parts.push(h);
    total += h.length;
  }
  return Buffer.concat(parts).subarray(0, length);
}

function text(seed: string, lines: number): Buffer {
  let s = '';
  for (let i = 0; i < lines; i++) {
    const h = createHash('sha256').update(`${seed}:${i}`).digest('hex').slice(0, 24);
    s += `${seed} line ${i}: ${h}\n`;
  }
  return Buffer.from(s);
}

const SHUTDOWN_SCRIPT =
  '#!/bin/sh\n# qemu-ga guest-shutdown runs this; the guest init unmounts and powers off.\nkill -USR2 1\n';

/** The files of one system version: path → content (and mode; 0644 unless executable). */
function systemFiles(version: SystemVersion): Map<string, { data: Buffer; mode: number }> {
  const files = new Map<string, { data: Buffer; mode: number }>();
  const put = (path: string, data: Buffer | string, mode = 0o644) =>
    files.set(path, { data: Buffer.isBuffer(data) ? data : Buffer.from(data), mode });
  const n = version === 'v1' ? 1 : version === 'v2' ? 2 : 3;
  put(
    'etc/os-release',
    `NAME="Bulkhead Test OS"\nID=bulkhead-test\nVERSION_ID=${n}\nVERSION=${n}\n`,
  );
  put('etc/hostname', 'bulkhead-guest\n');
  put('sbin/shutdown', SHUTDOWN_SCRIPT, 0o755);
  put(
    'usr/libexec/health-check',
    version === 'v3-broken'
      ? '#!/bin/sh\necho "health-check: the service did not start" >&2\nexit 1\n'
      : // Each app volume's own check (/apps/<name>/check) runs too: a broken app fails the VM's
        // health, so its update rolls back like a broken system.
        '#!/bin/sh\ntest -r /etc/os-release || exit 2\n' +
          'for c in /apps/*/check; do\n  test -x "$c" || continue\n  "$c" || exit 1\ndone\n' +
          'echo ok\nexit 0\n',
    0o755,
  );
  // "Binaries" and "libraries": v2 changes a few, adds some, removes one.
  put('usr/lib/bulkhead/libcore.so', pseudoRandom('libcore-1', 2 * 1024 * 1024));
  put('usr/lib/bulkhead/libextra.so', pseudoRandom('libextra-1', 1024 * 1024));
  put('usr/bin/tool', pseudoRandom('tool-1', 512 * 1024), 0o755);
  put('usr/share/doc/readme.txt', text('readme', 400));
  put('usr/share/doc/changelog.txt', text('changelog-1', 2000));
  put('etc/app.conf', 'mode=standard\nlevel=1\n');
  if (n >= 2) {
    put('usr/lib/bulkhead/libcore.so', pseudoRandom('libcore-2', 2 * 1024 * 1024));
    files.delete('usr/lib/bulkhead/libextra.so');
    put('usr/lib/bulkhead/libnew.so', pseudoRandom('libnew-2', 768 * 1024));
    put('usr/share/doc/changelog.txt', Buffer.concat([text('changelog-1', 2000), text('c2', 50)]));
    put('etc/app.conf', 'mode=standard\nlevel=2\nfeature=on\n');
  }
  return files;
}

/**
 * Writes system volume `version` as a raw 64 MiB ext4 image to `outPath`. The content is a tiny
 * OS: busybox (the only program; /bin/sh etc. link to it), /etc/os-release with VERSION,
 * /usr/libexec/health-check (exits 0; 1 in `v3-broken`), /sbin/shutdown for qemu-ga, and a few
 * MB of deterministic data that v2 changes, extends and prunes like a real patch. Same input,
 * same bytes.
 */
export async function buildSystemVolume(version: SystemVersion, outPath: string): Promise<void> {
  const busybox = await which('busybox');
  const uuid = version === 'v1' ? 1 : version === 'v2' ? 2 : 3;
  await buildExt4(
    outPath,
    64 * 1024 * 1024,
    `system-${version}`,
    `5b0a1c7e-0000-4000-8000-00000000000${uuid}`,
    async (root) => {
      await mkdir(join(root, 'bin'), { recursive: true });
      await copyFile(busybox, join(root, 'bin/busybox'));
      await chmod(join(root, 'bin/busybox'), 0o755);
      for (const applet of ['sh', 'cat', 'ls', 'echo', 'test', 'sync', 'mkdir', 'rm', 'sleep']) {
        await symlink('busybox', join(root, 'bin', applet));
      }
      for (const d of ['proc', 'sys', 'dev', 'run', 'data', 'apps', 'tmp']) {
        await mkdir(join(root, d), { recursive: true });
      }
      for (const [path, { data, mode }] of systemFiles(version)) {
        await mkdir(dirname(join(root, path)), { recursive: true });
        await writeFile(join(root, path), data);
        await chmod(join(root, path), mode);
      }
    },
  );
}

/**
 * Writes app volume `name` at `version` as a small raw ext4 image (8 MiB): /app.json naming
 * both, /bin/<name> (an executable script), /check (the app's health check, which the system
 * volume's health check runs: exits 0, or 1 for a version ending in `-broken`) and some
 * deterministic data.
 */
export async function buildAppVolume(
  name: string,
  version: string,
  outPath: string,
): Promise<void> {
  if (!/^[a-z0-9][a-z0-9-]{0,15}$/.test(name)) {
    throw new GuestBuildError(`app name ${JSON.stringify(name)}: use 1-16 of a-z, 0-9 and -`);
  }
  const seed = createHash('sha256').update(`${name}@${version}`).digest('hex');
  const uuid = `${seed.slice(0, 8)}-${seed.slice(8, 12)}-4${seed.slice(13, 16)}-8${seed.slice(17, 20)}-${seed.slice(20, 32)}`;
  await buildExt4(outPath, 8 * 1024 * 1024, `app-${name}`, uuid, async (root) => {
    await mkdir(join(root, 'bin'));
    await writeFile(join(root, 'app.json'), `${JSON.stringify({ name, version })}\n`);
    await writeFile(join(root, 'bin', name), `#!/bin/sh\necho "${name} ${version}"\n`);
    await chmod(join(root, 'bin', name), 0o755);
    await writeFile(
      join(root, 'check'),
      version.endsWith('-broken')
        ? `#!/bin/sh\necho "${name} ${version}: the app does not start" >&2\nexit 1\n`
        : `#!/bin/sh\necho "${name} ${version}: ok"\n`,
    );
    await chmod(join(root, 'check'), 0o755);
    await writeFile(join(root, 'data.bin'), pseudoRandom(`${name}@${version}`, 256 * 1024));
  });
}

async function buildExt4(
  outPath: string,
  size: number,
  label: string,
  uuid: string,
  fill: (root: string) => Promise<void>,
): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'bulkhead-guest-vol-'));
  try {
    const root = join(work, 'root');
    await mkdir(root);
    await fill(root);
    const paths = await setTimes(root, '');
    // Built beside `outPath` so the last step is a rename, not a copy.
    await mkdir(dirname(outPath), { recursive: true });
    const tmp = `${outPath}.${basename(work)}.partial`;
    await writeFile(tmp, '');
    await truncate(tmp, size);
    await run(
      'mkfs.ext4',
      [
        '-q',
        '-F',
        '-b',
        '4096',
        '-L',
        label,
        '-U',
        uuid,
        '-E',
        `root_owner=0:0,hash_seed=${uuid},lazy_itable_init=0`,
        '-d',
        root,
        tmp,
      ],
      { E2FSPROGS_FAKE_TIME: String(EPOCH), SOURCE_DATE_EPOCH: String(EPOCH) },
    );
    // mkfs.ext4 -d copies each file's ctime, which no one can set: fix it afterwards (all
    // inodes, lost+found included), so the same input gives the same bytes.
    const script = join(work, 'ctime.debugfs');
    await writeFile(
      script,
      ['/', '/lost+found', ...paths].map((p) => `sif "${p}" ctime @${EPOCH}\n`).join(''),
    );
    await run('debugfs', ['-w', '-f', script, tmp], { E2FSPROGS_FAKE_TIME: String(EPOCH) });
    await rename(tmp, outPath);
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(`${outPath}.${basename(work)}.partial`, { force: true });
  }
}

/** Sets every mtime/atime under `root` to EPOCH; answers the paths (`/a/b`) it found. */
async function setTimes(root: string, rel: string): Promise<string[]> {
  const paths: string[] = [];
  for (const entry of await readdir(join(root, rel), { withFileTypes: true })) {
    const path = `${rel}/${entry.name}`;
    paths.push(path);
    if (entry.isDirectory()) paths.push(...(await setTimes(root, path)));
    await lutimes(join(root, path), EPOCH, EPOCH);
  }
  await utimes(join(root, rel), EPOCH, EPOCH);
  return paths;
}

export interface TestVolumes {
  dir: string;
  system: Record<SystemVersion, string>;
  /** App volume `editor` at version 1. */
  appEditor: string;
  /** App volume `editor` at versions 1, 2 and 2-broken (its /check exits 1). */
  editor: Record<EditorVersion, string>;
}

export const EDITOR_VERSIONS = ['1', '2-broken', '2'] as const;
export type EditorVersion = (typeof EDITOR_VERSIONS)[number];

/**
 * Builds (or finds in `cacheDir`) the three system volumes and the app volumes as raw images,
 * keyed on this script and busybox. Safe to call from several processes at once.
 */
export async function buildTestVolumes(options: { cacheDir?: string } = {}): Promise<TestVolumes> {
  const cacheDir = options.cacheDir ?? DEFAULT_CACHE;
  const key = createHash('sha256');
  for (const file of [fileURLToPath(import.meta.url), await which('busybox')]) {
    key.update(`${file} ${await sha256File(file)}\n`);
  }
  const dir = join(cacheDir, `volumes-${key.digest('hex').slice(0, 16)}`);
  const layout = (d: string): TestVolumes => ({
    dir: d,
    system: {
      v1: join(d, 'system-v1.img'),
      v2: join(d, 'system-v2.img'),
      'v3-broken': join(d, 'system-v3-broken.img'),
    },
    appEditor: join(d, 'app-editor-1.img'),
    editor: {
      '1': join(d, 'app-editor-1.img'),
      '2-broken': join(d, 'app-editor-2-broken.img'),
      '2': join(d, 'app-editor-2.img'),
    },
  });
  try {
    await lstat(layout(dir).appEditor);
    return layout(dir);
  } catch {
    // not built yet
  }
  await mkdir(cacheDir, { recursive: true });
  const work = await mkdtemp(join(cacheDir, 'build-'));
  try {
    const out = layout(join(work, 'out'));
    for (const v of ['v1', 'v2', 'v3-broken'] as const) await buildSystemVolume(v, out.system[v]);
    for (const v of EDITOR_VERSIONS) await buildAppVolume('editor', v, out.editor[v]);
    try {
      await rename(out.dir, dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return layout(dir);
}

// ---------------------------------------------------------------------------------------------
// CLI

async function main(argv: string[]): Promise<void> {
  const i = argv.indexOf('--out');
  const cacheDir = i >= 0 ? argv[i + 1] : undefined;
  const unknown = argv.filter(
    (a, j) => a !== '--debian' && a !== '--out' && !(i >= 0 && j === i + 1),
  );
  if ((i >= 0 && (cacheDir === undefined || cacheDir.startsWith('--'))) || unknown.length > 0) {
    process.stderr.write('usage: npm run -s guest [-- [--debian] [--out DIR]]\n');
    process.exit(2);
  }
  const options = cacheDir === undefined ? {} : { cacheDir };
  if (argv.includes('--debian')) {
    const log = (line: string) => process.stderr.write(`${line}\n`);
    const debian = await buildDebianGuest({ ...options, log });
    process.stdout.write(`${JSON.stringify(debian, null, 2)}\n`);
    return;
  }
  const guest = await buildGuest(options);
  const volumes = await buildTestVolumes(options);
  process.stdout.write(`${JSON.stringify({ ...guest, volumes }, null, 2)}\n`);
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`guest build: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
