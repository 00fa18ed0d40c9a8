#!/usr/bin/env node
// Installs what Bulkhead needs on a fresh Debian 12 machine that has only Node and npm:
// the npm packages (`npm ci`) and the Debian packages of the tools it drives.
// Plain JavaScript on purpose: it runs with whatever Node the machine has, before the
// pinned Node 24 from node_modules exists.
//
//   node scripts/setup.js            what `bulkhead` itself needs
//   node scripts/setup.js --test     plus what the test suite needs
//   node scripts/setup.js --bench    plus the peers the benchmarks compare against
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Debian packages, by what needs them. Each entry names the command it provides. */
const packages = {
  base: [
    ['qemu-utils', 'qemu-img'],
    ['e2fsprogs', 'mkfs.ext4'],
    // `center serve --demo` (npm start) publishes the test guest's system volume, busybox inside.
    ['busybox-static', 'busybox'],
    // Engine runs VMs with QEMU (KVM when it works, TCG otherwise).
    ['qemu-system-x86', 'qemu-system-x86_64'],
    // UEFI firmware for profiles with `--firmware uefi`; a per-VM TPM for `--tpm on`.
    ['ovmf', '/usr/share/OVMF/OVMF_CODE_4M.fd'],
    ['swtpm', 'swtpm'],
    // Sealing the device's encryption key with the PC's TPM (docs/keys.md).
    ['tpm2-tools', 'tpm2_unseal'],
    // A nat VM runs in its own network namespace behind nftables rules (netns.ts).
    ['iproute2', 'ip'],
    ['nftables', 'nft'],
  ],
  test: [
    // Reflink (shared-extent) copies are tested on a loop-mounted XFS file system.
    ['xfsprogs', 'mkfs.xfs'],
    // Center's database tests start a throwaway cluster from its binaries
    // (/usr/lib/postgresql/*/bin, not on PATH).
    ['postgresql', 'initdb'],
    // The test guest (guest/build.ts): Debian's kernel, busybox, qemu-ga and the tools to pack
    // an initramfs (busybox is in base). linux-image-amd64 provides no command but /boot/vmlinuz-*.
    ['linux-image-amd64', '/boot/vmlinuz-*'],
    ['qemu-guest-agent', 'qemu-ga'],
    ['cpio', 'cpio'],
    ['kmod', 'depmod'],
    // The full Debian guest (guest/debian.ts), a system bootstrapped from Debian's packages,
    // and the hand-made disks of test/qemu/boot-failure.test.ts: GPT disks with a FAT EFI
    // system partition.
    ['mmdebstrap', 'mmdebstrap'],
    ['fdisk', 'sfdisk'],
    ['dosfstools', 'mkfs.vfat'],
    ['mtools', 'mcopy'],
    // The README's commands, which a test runs as written, use them.
    ['curl', 'curl'],
    ['openssl', 'openssl'],
    // The console's and the switcher's browser tests drive Debian's Chromium (playwright-core).
    ['chromium', 'chromium'],
  ],
  bench: [
    ['debootstrap', 'debootstrap'],
    ['casync', 'casync'],
    ['zsync', 'zsync'],
    ['zstd', 'zstd'],
    ['rsync', 'rsync'],
    // A whole-image delta, the byte figure to beat; the desk pair is also measured on btrfs.
    ['xdelta3', 'xdelta3'],
    ['btrfs-progs', 'mkfs.btrfs'],
    // Load generator for Center's device API.
    ['wrk', 'wrk'],
    // The console's page-load benchmark measures in a real browser.
    ['chromium', 'chromium'],
  ],
};

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  return r.status === 0;
}

function ensureNpmPackages() {
  const lock = join(root, 'package-lock.json');
  const installed = join(root, 'node_modules', '.package-lock.json');
  const pinnedNode = join(root, 'node_modules', 'node', 'bin', 'node');
  const fresh =
    existsSync(installed) &&
    existsSync(pinnedNode) &&
    statSync(installed).mtimeMs >= statSync(lock).mtimeMs;
  if (fresh) return;
  console.error('setup: installing npm packages (npm ci)');
  if (!run('npm', ['ci', '--no-audit', '--no-fund'], { cwd: root })) {
    console.error('setup: `npm ci` failed; see the messages above.');
    process.exit(1);
  }
}

function isInstalled(pkg) {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

function ensureDebianPackages(wanted) {
  const missing = wanted.filter(([pkg]) => !isInstalled(pkg)).map(([pkg]) => pkg);
  if (missing.length === 0) return;
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const sudo = isRoot ? [] : ['sudo', '-n'];
  if (!isRoot && !run('sudo', ['-n', 'true'], { stdio: 'ignore' })) {
    console.error(
      `setup: missing Debian packages: ${missing.join(' ')}.\n` +
        `Install them as root: apt-get install -y ${missing.join(' ')}`,
    );
    process.exit(1);
  }
  console.error(`setup: installing Debian packages: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () =>
    run(
      sudo[0] ?? 'apt-get',
      [
        ...sudo.slice(1),
        ...(sudo.length ? ['apt-get'] : []),
        'install',
        '-y',
        '-q',
        '--no-install-recommends',
        ...missing,
      ],
      { env },
    );
  const update = () =>
    run(
      sudo[0] ?? 'apt-get',
      [...sudo.slice(1), ...(sudo.length ? ['apt-get'] : []), 'update', '-q'],
      { env },
    );
  // A fresh machine often has no package lists yet: update once when the first try fails.
  if (!install() && !(update() && install())) {
    console.error(`setup: could not install ${missing.join(' ')} with apt-get; see above.`);
    process.exit(1);
  }
}

/** Newest modification time under `path` (a file or a directory tree), in ms. */
function newest(path) {
  if (!existsSync(path)) return 0;
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let latest = stat.mtimeMs;
  for (const entry of readdirSync(path)) latest = Math.max(latest, newest(join(path, entry)));
  return latest;
}

/**
 * Builds the browser apps (web/console, served by Center; web/switcher, served by Engine) with
 * Vite into their dist/ folders, when a source is newer than the last build. They import the
 * wire contract from src/protocol, so that counts as a source too.
 */
function buildWebApps() {
  const vite = join(root, 'node_modules', 'vite', 'bin', 'vite.js');
  const pinnedNode = join(root, 'node_modules', 'node', 'bin', 'node');
  for (const app of ['console', 'switcher']) {
    const dir = join(root, 'web', app);
    const built = join(dir, 'dist', 'index.html');
    const sources = [join(dir, 'src'), join(dir, 'index.html'), join(dir, 'vite.config.ts')];
    sources.push(join(root, 'src', 'protocol'), join(root, 'package-lock.json'));
    const stale = !existsSync(built) || Math.max(...sources.map(newest)) > statSync(built).mtimeMs;
    if (!stale) continue;
    console.error(`setup: building web/${app}`);
    const ok = run(
      pinnedNode,
      [vite, 'build', '--logLevel', 'warn', '--config', join(dir, 'vite.config.ts')],
      {
        cwd: root,
      },
    );
    if (!ok) {
      console.error(`setup: building web/${app} failed; see the messages above.`);
      process.exit(1);
    }
  }
}

const args = new Set(process.argv.slice(2));
const wanted = [...packages.base];
if (args.has('--test')) wanted.push(...packages.test);
if (args.has('--bench')) wanted.push(...packages.bench);
ensureNpmPackages();
buildWebApps();
ensureDebianPackages(wanted);
