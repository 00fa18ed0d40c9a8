// Builds (and caches) pairs of Debian disk images, the way an admin's image pipeline would.
//
// The small set, quick to build: a minbase bookworm tree (v1), the same tree with packages added,
// one removed and some /etc edits (v2), each written to a fresh 2 GiB ext4 image by
// `mkfs.ext4 -d`, plus v2b: v1's image modified in place (the easy case for delta tools).
//
// The desk set, a monthly patch of a desktop-class system: a full bookworm system with a kernel
// from the release suite only (desk1), and the same tree upgraded from bookworm-updates and
// bookworm-security with new packages and /etc edits (desk2). Each tree is written to a fresh
// 2 GiB image twice, by `mkfs.ext4 -d` and by `mkfs.btrfs --rootdir`, so the same patch is
// measured on two file systems.
//
// Every artifact is built under a `.partial` name and renamed when complete; a stamp file
// records the recipe it was built from, so a half-built or stale entry is never reused.
import { randomBytes, createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import {
  appendFile,
  chmod,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  rmdir,
  stat,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { novelBlockBound } from './peers.ts';
import { debianMirror, errorMessage, round, run, secondsSince, sizes } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
export const defaultCacheDir = join(benchDir, '.cache');

/** What the small images contain. Changing anything here rebuilds the affected artifacts. */
export const RECIPE = {
  recipeVersion: 1,
  suite: 'bookworm',
  variant: 'minbase',
  include: ['less', 'procps', 'iproute2', 'openssh-client', 'ca-certificates', 'curl'],
  hostnameV1: 'desk-2025-05',
  v2: {
    install: ['python3-minimal', 'vim-tiny', 'rsync', 'gnupg'],
    purge: ['less'],
    hostname: 'desk-2025-06',
    motd: 'Managed desktop image, June release. Report problems to the service desk.\n',
    sshConfigLine: '    ServerAliveInterval 60',
  },
  imageSize: '2G',
} as const;

/**
 * What the desk images contain. desk1 comes from the release suite only (debootstrap's default
 * variant: required and important packages, then `include` and their dependencies by apt, no
 * recommends, no firmware); desk2 is desk1 a month later.
 */
export const DESK_RECIPE = {
  recipeVersion: 2,
  suite: 'bookworm',
  include: [
    // Boot and services.
    'linux-image-amd64',
    'initramfs-tools',
    'systemd-sysv',
    'dbus',
    'apparmor',
    'cron',
    'logrotate',
    'rsyslog',
    'unattended-upgrades',
    'console-setup',
    'locales',
    'sudo',
    // Network.
    'network-manager',
    'openssh-server',
    'avahi-daemon',
    'nfs-common',
    'bind9-dnsutils',
    'iputils-ping',
    'curl',
    'wget',
    'ca-certificates',
    'gnupg',
    'rsync',
    // A user's shell.
    'bash-completion',
    'man-db',
    'manpages',
    'vim',
    'less',
    'htop',
    'lsof',
    'strace',
    'psmisc',
    'file',
    'unzip',
    'zip',
    'xz-utils',
    'bzip2',
    'git',
    'python3',
    'perl',
    // Devices and disks.
    'pciutils',
    'usbutils',
    'dosfstools',
    'lvm2',
    'cryptsetup',
    // Printing and X clients.
    'cups-client',
    'xauth',
    'fonts-dejavu-core',
    'fonts-liberation2',
    'fonts-noto-core',
  ],
  locale: 'en_US.UTF-8 UTF-8',
  hostname: 'desk-2026-10',
  desk2: {
    /** Suites added to the tree's apt sources before `apt-get upgrade`. */
    suites: ['bookworm-updates', 'bookworm-security'],
    install: [
      'tmux',
      'jq',
      'tree',
      'ncdu',
      'tcpdump',
      'firewalld',
      'smartmontools',
      'wireguard-tools',
    ],
    hostname: 'desk-2026-11',
    motd: 'Managed desktop image, November release. Report problems to the service desk.\n',
    sshdConfigLine: 'ClientAliveInterval 120',
    journaldConfigLine: 'SystemMaxUse=200M',
  },
  /** Both images of a tree are this size, whatever the file system. */
  imageBytes: 2 * 1024 ** 3,
  fileSystems: ['ext4', 'btrfs'],
} as const;

export type ImageSet = 'small' | 'desk';
export const IMAGE_SETS: readonly ImageSet[] = ['small', 'desk'];
export type ImageName = 'v1' | 'v2' | 'v2b' | 'desk1' | 'desk2' | 'desk1-btrfs' | 'desk2-btrfs';

/** The pairs measured: a holder of `old` wants `new`. */
export const PAIRS = {
  v2: { old: 'v1', new: 'v2', set: 'small' },
  v2b: { old: 'v1', new: 'v2b', set: 'small' },
  desk: { old: 'desk1', new: 'desk2', set: 'desk' },
  'desk-btrfs': { old: 'desk1-btrfs', new: 'desk2-btrfs', set: 'desk' },
} as const satisfies Record<string, { old: ImageName; new: ImageName; set: ImageSet }>;
export type PairName = keyof typeof PAIRS;
export const PAIR_NAMES = Object.keys(PAIRS) as PairName[];

export interface Images {
  /** The raw image of each name built (those of the sets asked for). */
  paths: Partial<Record<ImageName, string>>;
  info: Record<string, unknown>;
}

interface Stamp {
  key: string;
  /** Random id of this build: downstream artifacts record it, so a rebuild invalidates them. */
  id: string;
  seconds: number;
  builtAt: string;
  extra: Record<string, unknown>;
}

interface Built {
  path: string;
  key: string;
  /** The recipe key plus the build id: what downstream keys depend on. */
  identity: string;
  seconds: number;
  cached: boolean;
  extra: Record<string, unknown>;
}

function hashKey(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('hex').slice(0, 16);
}

// ---------------------------------------------------------------------------------------------
// Mount hygiene: an interrupted run may leave /proc or /dev mounted inside a cached tree; never
// delete a tree before everything under it is unmounted (rm would descend into the host's /dev).

function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

function mountsUnder(dir: string): string[] {
  const base = resolve(dir);
  const text = readFileSync('/proc/self/mountinfo', 'utf8');
  const points: string[] = [];
  for (const line of text.split('\n')) {
    const mp = line.split(' ')[4];
    if (!mp) continue;
    const p = unescapeMountPath(mp);
    if (p === base || p.startsWith(base + '/')) points.push(p);
  }
  // Deepest first.
  return [...new Set(points)].sort((a, b) => b.length - a.length);
}

async function unmountAll(dir: string, log: (msg: string) => void): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const points = mountsUnder(dir);
    if (points.length === 0) return;
    for (const p of points) {
      try {
        await run('umount', [p]);
      } catch (err) {
        if (attempt >= 2) {
          log(`images: umount ${p} failed (${errorMessage(err).split('\n')[0]}); detaching lazily`);
          await run('umount', ['-l', p]).catch(() => undefined);
        }
      }
    }
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`images: could not unmount ${left.join(', ')}`);
}

/** Removes a file or tree, first unmounting anything under it, never crossing file systems. */
async function removeSafely(path: string, log: (msg: string) => void): Promise<void> {
  if (!existsSync(path)) return;
  await unmountAll(path, log);
  await run('rm', ['-rf', '--one-file-system', '--', path]);
}

// ---------------------------------------------------------------------------------------------

class Cache {
  readonly dir: string;
  readonly log: (msg: string) => void;
  constructor(dir: string, log: (msg: string) => void) {
    this.dir = dir;
    this.log = log;
  }

  private stampPath(name: string): string {
    return join(this.dir, `${name}.stamp.json`);
  }

  private readStamp(name: string): Stamp | undefined {
    try {
      return JSON.parse(readFileSync(this.stampPath(name), 'utf8')) as Stamp;
    } catch {
      return undefined;
    }
  }

  /**
   * Returns the cached artifact `name` if its stamp matches `key`; otherwise builds it into
   * `<name>.partial` with `build`, renames it into place and writes the stamp.
   */
  async get(
    name: string,
    key: string,
    build: (tmp: string) => Promise<Record<string, unknown>>,
  ): Promise<Built> {
    const path = join(this.dir, name);
    const stamp = this.readStamp(name);
    if (stamp && stamp.key === key && stamp.id && existsSync(path)) {
      this.log(`images: reusing ${name} (built ${stamp.builtAt} in ${stamp.seconds} s)`);
      const identity = `${key}:${stamp.id}`;
      return { path, key, identity, seconds: stamp.seconds, cached: true, extra: stamp.extra };
    }
    const tmp = join(this.dir, `${name}.partial`);
    await rm(this.stampPath(name), { force: true });
    await removeSafely(path, this.log);
    await removeSafely(tmp, this.log);
    this.log(`images: building ${name}`);
    const start = process.hrtime.bigint();
    let extra: Record<string, unknown>;
    try {
      extra = await build(tmp);
    } catch (err) {
      await removeSafely(tmp, this.log).catch(() => undefined);
      throw err;
    }
    await rename(tmp, path);
    const seconds = round(secondsSince(start), 1);
    const id = randomBytes(8).toString('hex');
    const newStamp: Stamp = { key, id, seconds, builtAt: new Date().toISOString(), extra };
    const stampTmp = `${this.stampPath(name)}.tmp`;
    await writeFile(stampTmp, JSON.stringify(newStamp, null, 2) + '\n');
    await rename(stampTmp, this.stampPath(name));
    this.log(`images: built ${name} in ${seconds} s`);
    return { path, key, identity: `${key}:${id}`, seconds, cached: false, extra };
  }

  /** Cleans up after an interrupted run: stray mounts and `.partial` leftovers. */
  async sweep(): Promise<void> {
    await unmountAll(this.dir, this.log);
    for (const entry of await readdir(this.dir)) {
      if (entry.endsWith('.partial') || entry.endsWith('.stamp.json.tmp')) {
        this.log(`images: removing leftover ${entry} from an interrupted run`);
        await removeSafely(join(this.dir, entry), this.log);
      }
    }
  }
}

function acquireLock(dir: string): () => void {
  const lock = join(dir, '.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lock, 'wx');
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => {
        try {
          if (readFileSync(lock, 'utf8') === String(process.pid)) rmSyncQuiet(lock);
        } catch {
          // already gone
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number(readFileSync(lock, 'utf8'));
      if (pid > 0 && isAlive(pid)) {
        throw new Error(`images: ${dir} is in use by process ${pid} (lock file ${lock})`, {
          cause: err,
        });
      }
      rmSyncQuiet(lock);
    }
  }
  throw new Error(`images: could not take the lock ${lock}`);
}

function rmSyncQuiet(path: string): void {
  try {
    rmSync(path, { force: true });
  } catch {
    // ignore
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------------

const chrootEnv: NodeJS.ProcessEnv = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  DEBIAN_FRONTEND: 'noninteractive',
  LC_ALL: 'C',
  LANG: 'C',
  HOME: '/root',
};

/** Installed packages (name → version) from a tree's dpkg status file. */
export function installedPackages(tree: string): Record<string, string> {
  const text = readFileSync(join(tree, 'var/lib/dpkg/status'), 'utf8');
  const out: Record<string, string> = {};
  for (const para of text.split(/\n\n+/)) {
    const name = /^Package: (\S+)/m.exec(para)?.[1];
    const status = /^Status: (.*)$/m.exec(para)?.[1];
    const version = /^Version: (\S+)/m.exec(para)?.[1] ?? '';
    if (name && status === 'install ok installed') out[name] = version;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

/** What an image pipeline's last step does: drop apt's caches and package lists. */
async function cleanAptState(tree: string): Promise<void> {
  const lists = join(tree, 'var/lib/apt/lists');
  if (existsSync(lists)) {
    for (const entry of await readdir(lists)) {
      if (entry === 'partial' || entry === 'lock') continue;
      await rm(join(lists, entry), { recursive: true, force: true });
    }
  }
  const cache = join(tree, 'var/cache/apt');
  if (existsSync(cache)) {
    for (const entry of await readdir(cache)) {
      if (entry.endsWith('.bin')) await rm(join(cache, entry), { force: true });
    }
  }
  const archives = join(tree, 'var/cache/apt/archives');
  if (existsSync(archives)) {
    for (const entry of await readdir(archives)) {
      if (entry.endsWith('.deb')) await rm(join(archives, entry), { force: true });
    }
  }
}

async function duBytes(path: string): Promise<number> {
  const r = await run('du', ['-s', '--block-size=1', '-x', path]);
  return Number(r.stdout.split(/\s/)[0]);
}

async function buildV1Tree(
  tmp: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  const mirror = debianMirror(RECIPE.suite);
  const debs = join(cacheDir, 'debootstrap-debs');
  await mkdir(debs, { recursive: true });
  await mkdir(tmp, { recursive: true });
  log(`images: debootstrap ${RECIPE.variant} ${RECIPE.suite} (takes a few minutes the first time)`);
  const r = await run(
    'debootstrap',
    [
      `--variant=${RECIPE.variant}`,
      `--include=${RECIPE.include.join(',')}`,
      `--cache-dir=${debs}`,
      RECIPE.suite,
      tmp,
      mirror,
    ],
    { env: { ...process.env, ...chrootEnv }, timeoutMs: 40 * 60_000 },
  );
  await writeFile(join(tmp, 'etc/hostname'), `${RECIPE.hostnameV1}\n`);
  await cleanAptState(tmp);
  return { debootstrapSeconds: round(r.seconds, 1) };
}

async function withChrootMounts<T>(
  root: string,
  aptArchiveCache: string,
  log: (msg: string) => void,
  fn: () => Promise<T>,
): Promise<T> {
  // No bind of the host's /dev (mounts below it could propagate to the host): debootstrap
  // creates the device nodes apt needs in the tree itself.
  const mounts: [string, string[]][] = [
    [join(root, 'proc'), ['-t', 'proc', 'proc']],
    [join(root, 'sys'), ['-t', 'sysfs', 'sysfs']],
    [join(root, 'var/cache/apt/archives'), ['--bind', aptArchiveCache]],
  ];
  try {
    for (const [target, args] of mounts) {
      await mkdir(target, { recursive: true });
      await run('mount', [...args, target]);
    }
    return await fn();
  } finally {
    await unmountAll(root, log);
  }
}

type Apt = (args: string[]) => Promise<number>;

/**
 * Runs `fn` with apt usable in `tree` by chroot: the host's resolver, /proc and /sys mounted,
 * downloads kept in the cache, services kept from starting (policy-rc.d), conffiles kept as
 * they are. `fn` gets `apt(args)`, which returns its seconds. Everything is undone afterwards,
 * also when `fn` fails, so a tree is never renamed into the cache with the host's mounts or
 * resolver inside.
 */
async function withChrootApt<T>(
  tree: string,
  cacheDir: string,
  log: (msg: string) => void,
  fn: (apt: Apt) => Promise<T>,
): Promise<T> {
  const aptCache = join(cacheDir, 'apt-archives');
  await mkdir(join(aptCache, 'partial'), { recursive: true });
  const policy = join(tree, 'usr/sbin/policy-rc.d');
  await writeFile(policy, '#!/bin/sh\nexit 101\n');
  await chmod(policy, 0o755);
  const resolvConf = join(tree, 'etc/resolv.conf');
  const savedResolv = existsSync(resolvConf) ? await readFile(resolvConf) : undefined;
  await rm(resolvConf, { force: true });
  await writeFile(resolvConf, await readFile('/etc/resolv.conf'));
  const aptOptions = [
    '-q',
    '-o',
    'Acquire::Check-Valid-Until=false',
    '-o',
    'Dpkg::Options::=--force-confdef',
    '-o',
    'Dpkg::Options::=--force-confold',
  ];
  const apt: Apt = async (args) => {
    const r = await run('chroot', [tree, 'apt-get', ...aptOptions, ...args], {
      env: chrootEnv,
      timeoutMs: 30 * 60_000,
    });
    return round(r.seconds, 1);
  };
  try {
    return await withChrootMounts(tree, aptCache, log, () => fn(apt));
  } finally {
    await rm(policy, { force: true });
    await rm(resolvConf, { force: true });
    if (savedResolv) await writeFile(resolvConf, savedResolv);
  }
}

async function buildV2Tree(
  tmp: string,
  v1Tree: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  await run('cp', ['-a', '--', v1Tree, tmp]);
  const times: Record<string, number> = {};
  await withChrootApt(tmp, cacheDir, log, async (apt) => {
    log('images: v2: apt-get update');
    times.update = await apt(['update']);
    log(`images: v2: apt-get install ${RECIPE.v2.install.join(' ')}`);
    times.install = await apt(['install', '-y', ...RECIPE.v2.install]);
    log(`images: v2: apt-get purge ${RECIPE.v2.purge.join(' ')}`);
    times.purge = await apt(['purge', '-y', ...RECIPE.v2.purge]);
    times.autoremove = await apt(['autoremove', '--purge', '-y']);
  });
  // The admin's edits.
  await writeFile(join(tmp, 'etc/hostname'), `${RECIPE.v2.hostname}\n`);
  await writeFile(join(tmp, 'etc/motd'), RECIPE.v2.motd);
  const sshConfig = join(tmp, 'etc/ssh/ssh_config');
  if (existsSync(sshConfig)) await appendFile(sshConfig, `${RECIPE.v2.sshConfigLine}\n`);
  await cleanAptState(tmp);
  return { aptSeconds: times };
}

// ---------------------------------------------------------------------------------------------
// The desk set

/** The archive this machine's apt uses for `suite`; desk2 cannot be built without it. */
function archiveFor(suite: string): string {
  try {
    return debianMirror(suite);
  } catch (err) {
    throw new Error(
      `images: desk2 is upgraded from ${suite}, but this machine's apt has no source for it ` +
        `(/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list): add one, as Debian's ` +
        `installer does, and run again`,
      { cause: err },
    );
  }
}

/** The versioned kernel image packages installed in a tree, oldest ABI first. */
function kernelPackages(tree: string): string[] {
  const abi = (name: string) =>
    (/^linux-image-(\d+)\.(\d+)\.(\d+)-(\d+)-/.exec(name) ?? []).slice(1).map(Number);
  const older = (a: string, b: string) => {
    const [x, y] = [abi(a), abi(b)];
    for (let i = 0; i < 4; i++) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
    return a.localeCompare(b);
  };
  return Object.keys(installedPackages(tree))
    .filter((p) => /^linux-image-\d/.test(p))
    .sort(older);
}

async function buildDesk1Tree(
  tmp: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  const mirror = debianMirror(DESK_RECIPE.suite);
  const debs = join(cacheDir, 'debootstrap-debs');
  await mkdir(debs, { recursive: true });
  await mkdir(tmp, { recursive: true });
  log(`images: debootstrap ${DESK_RECIPE.suite} (takes several minutes the first time)`);
  const r = await run('debootstrap', [`--cache-dir=${debs}`, DESK_RECIPE.suite, tmp, mirror], {
    env: { ...process.env, ...chrootEnv },
    timeoutMs: 60 * 60_000,
  });
  // The rest by apt in the finished tree, not by debootstrap's --include: debootstrap configures
  // its packages in one pass without /proc or a running dbus, where polkitd's set-up fails.
  // The tree's sources name the release suite only.
  let installSeconds = 0;
  await withChrootApt(tmp, cacheDir, log, async (apt) => {
    await apt(['update']);
    log(`images: desk1: apt-get install ${DESK_RECIPE.include.length} packages`);
    installSeconds = await apt([
      'install',
      '-y',
      '--no-install-recommends',
      ...DESK_RECIPE.include,
    ]);
  });
  await writeFile(join(tmp, 'etc/hostname'), `${DESK_RECIPE.hostname}\n`);
  await writeFile(join(tmp, 'etc/locale.gen'), `${DESK_RECIPE.locale}\n`);
  const locale = await run('chroot', [tmp, 'locale-gen'], { env: chrootEnv });
  await cleanAptState(tmp);
  return {
    debootstrapSeconds: round(r.seconds, 1),
    installSeconds,
    localeGenSeconds: round(locale.seconds, 1),
    kernels: kernelPackages(tmp),
  };
}

async function buildDesk2Tree(
  tmp: string,
  desk1Tree: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  const recipe = DESK_RECIPE.desk2;
  // Before the copy: a machine without the archives fails here, not after minutes of work.
  const sources = recipe.suites.map((suite) => `deb ${archiveFor(suite)} ${suite} main`);
  await run('cp', ['-a', '--', desk1Tree, tmp]);
  await appendFile(join(tmp, 'etc/apt/sources.list'), sources.join('\n') + '\n');
  const kernelsBefore = kernelPackages(tmp);
  const times: Record<string, number> = {};
  let purgedKernels: string[] = [];
  await withChrootApt(tmp, cacheDir, log, async (apt) => {
    log(`images: desk2: apt-get update (${recipe.suites.join(', ')} added)`);
    times.update = await apt(['update']);
    // --with-new-pkgs: a kernel of a new ABI is a new package, which plain `upgrade` holds back.
    log('images: desk2: apt-get upgrade');
    times.upgrade = await apt(['-y', '--with-new-pkgs', 'upgrade']);
    // The image pipeline ships one kernel: the newest.
    const kernels = kernelPackages(tmp);
    purgedKernels = kernels.slice(0, -1);
    if (purgedKernels.length > 0) {
      log(`images: desk2: apt-get purge ${purgedKernels.join(' ')}`);
      times.purgeOldKernels = await apt(['purge', '-y', ...purgedKernels]);
    }
    log(`images: desk2: apt-get install ${recipe.install.join(' ')}`);
    times.install = await apt(['install', '-y', ...recipe.install]);
    times.autoremove = await apt(['autoremove', '--purge', '-y']);
  });
  // The admin's edits.
  await writeFile(join(tmp, 'etc/hostname'), `${recipe.hostname}\n`);
  await writeFile(join(tmp, 'etc/motd'), recipe.motd);
  await appendFile(join(tmp, 'etc/ssh/sshd_config'), `${recipe.sshdConfigLine}\n`);
  await appendFile(join(tmp, 'etc/systemd/journald.conf'), `${recipe.journaldConfigLine}\n`);
  await cleanAptState(tmp);
  return {
    aptSeconds: times,
    addedSources: sources,
    kernelsBefore,
    kernelsAfter: kernelPackages(tmp),
    purgedKernels,
  };
}

type FileSystem = (typeof DESK_RECIPE.fileSystems)[number];

/** A fresh image of `DESK_RECIPE.imageBytes` holding `tree`, made by the file system's mkfs. */
async function mkfsDeskImage(
  tmp: string,
  tree: string,
  fileSystem: FileSystem,
): Promise<Record<string, unknown>> {
  await writeFile(tmp, '');
  await truncate(tmp, DESK_RECIPE.imageBytes);
  const r =
    fileSystem === 'ext4'
      ? await run('mkfs.ext4', ['-q', '-F', '-d', tree, tmp])
      : await run('mkfs.btrfs', ['-q', '-f', '--rootdir', tree, tmp]);
  return { fileSystem, mkfsSeconds: round(r.seconds, 1) };
}

async function mkfsImage(tmp: string, tree: string): Promise<Record<string, unknown>> {
  await writeFile(tmp, '');
  await truncate(tmp, 0);
  const r = await run('mkfs.ext4', ['-q', '-F', '-d', tree, tmp, RECIPE.imageSize]);
  return { mkfsSeconds: round(r.seconds, 1) };
}

async function modifyInPlace(
  tmp: string,
  v1Raw: string,
  v2Tree: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  const cp = await run('cp', ['--sparse=always', '--', v1Raw, tmp]);
  const mnt = join(cacheDir, `mnt-${randomBytes(4).toString('hex')}.partial`);
  await mkdir(mnt);
  let rsyncSeconds = 0;
  try {
    await run('mount', ['-o', 'loop', tmp, mnt]);
    try {
      const r = await run('rsync', [
        '-aHAX',
        '--delete',
        '--exclude=/lost+found',
        `${v2Tree}/`,
        `${mnt}/`,
      ]);
      rsyncSeconds = r.seconds;
      await run('sync', ['-f', mnt]);
    } finally {
      await unmountAll(mnt, log);
    }
  } finally {
    await rmdir(mnt).catch(() => undefined);
  }
  return { copySeconds: round(cp.seconds, 1), rsyncSeconds: round(rsyncSeconds, 1) };
}

async function fsck(image: string, fileSystem: FileSystem = 'ext4'): Promise<boolean> {
  try {
    if (fileSystem === 'ext4') await run('e2fsck', ['-f', '-n', image]);
    else await run('btrfs', ['check', '--readonly', image]);
    return true;
  } catch {
    return false;
  }
}

/** What changed between two trees' package sets. */
function packageChanges(before: Record<string, string>, after: Record<string, string>) {
  return {
    added: Object.keys(after).filter((p) => !(p in before)),
    removed: Object.keys(before).filter((p) => !(p in after)),
    changedVersion: Object.keys(after).filter((p) => p in before && before[p] !== after[p]),
  };
}

async function treeInfo(b: Built, packages: Record<string, string>) {
  return {
    bytes: await duBytes(b.path),
    packages: Object.keys(packages).length,
    buildSeconds: b.seconds,
    cached: b.cached,
    ...b.extra,
  };
}

async function imageInfo(b: Built, fileSystem: FileSystem = 'ext4') {
  return {
    ...(await sizes(b.path)),
    fsckClean: await fsck(b.path, fileSystem),
    buildSeconds: b.seconds,
    cached: b.cached,
    ...b.extra,
  };
}

async function buildSmallSet(
  cache: Cache,
  paths: Images['paths'],
): Promise<Record<string, unknown>> {
  const { dir: cacheDir, log } = cache;
  const v1Key = hashKey({
    r: RECIPE.recipeVersion,
    s: RECIPE.suite,
    v: RECIPE.variant,
    i: RECIPE.include,
    h: RECIPE.hostnameV1,
  });
  const v1Tree = await cache.get('v1-tree', v1Key, (tmp) => buildV1Tree(tmp, cacheDir, log));
  const v2Key = hashKey({ up: v1Tree.identity, v2: RECIPE.v2 });
  const v2Tree = await cache.get('v2-tree', v2Key, (tmp) =>
    buildV2Tree(tmp, v1Tree.path, cacheDir, log),
  );
  const v1Raw = await cache.get(
    'v1.raw',
    hashKey({ up: v1Tree.identity, size: RECIPE.imageSize }),
    (tmp) => mkfsImage(tmp, v1Tree.path),
  );
  const v2Raw = await cache.get(
    'v2.raw',
    hashKey({ up: v2Tree.identity, size: RECIPE.imageSize }),
    (tmp) => mkfsImage(tmp, v2Tree.path),
  );
  const v2bRaw = await cache.get(
    'v2b.raw',
    hashKey({ up: [v1Raw.identity, v2Tree.identity] }),
    (tmp) => modifyInPlace(tmp, v1Raw.path, v2Tree.path, cacheDir, log),
  );
  Object.assign(paths, { v1: v1Raw.path, v2: v2Raw.path, v2b: v2bRaw.path });

  const p1 = installedPackages(v1Tree.path);
  const p2 = installedPackages(v2Tree.path);
  return {
    recipe: RECIPE,
    trees: { v1: await treeInfo(v1Tree, p1), v2: await treeInfo(v2Tree, p2) },
    packages: { ...packageChanges(p1, p2), v1: p1 },
    images: {
      v1: await imageInfo(v1Raw),
      v2: await imageInfo(v2Raw),
      v2b: await imageInfo(v2bRaw),
    },
    imageBytes: (await stat(v1Raw.path)).size,
  };
}

async function buildDeskSet(
  cache: Cache,
  paths: Images['paths'],
): Promise<Record<string, unknown>> {
  const { dir: cacheDir, log } = cache;
  const desk1Key = hashKey({
    r: DESK_RECIPE.recipeVersion,
    s: DESK_RECIPE.suite,
    i: DESK_RECIPE.include,
    l: DESK_RECIPE.locale,
    h: DESK_RECIPE.hostname,
  });
  const desk1Tree = await cache.get('desk1-tree', desk1Key, (tmp) =>
    buildDesk1Tree(tmp, cacheDir, log),
  );
  const desk2Key = hashKey({ up: desk1Tree.identity, desk2: DESK_RECIPE.desk2 });
  const desk2Tree = await cache.get('desk2-tree', desk2Key, (tmp) =>
    buildDesk2Tree(tmp, desk1Tree.path, cacheDir, log),
  );

  const images: Record<string, unknown> = {};
  const built: Partial<Record<ImageName, Built>> = {};
  for (const fileSystem of DESK_RECIPE.fileSystems) {
    const suffix = fileSystem === 'ext4' ? '' : `-${fileSystem}`;
    for (const [which, tree] of [
      ['desk1', desk1Tree],
      ['desk2', desk2Tree],
    ] as const) {
      const name = `${which}${suffix}` as ImageName;
      const key = hashKey({ up: tree.identity, bytes: DESK_RECIPE.imageBytes, fileSystem });
      const b = await cache.get(`${name}.raw`, key, (tmp) =>
        mkfsDeskImage(tmp, tree.path, fileSystem),
      );
      built[name] = b;
      paths[name] = b.path;
      images[name] = await imageInfo(b, fileSystem);
    }
  }

  // The pair's novel 4 KiB blocks (what any block-level delta must ship), counted once per
  // build of its images; the benchmark measures the compressed bound itself.
  const pairs: Record<string, unknown> = {};
  for (const [pair, { old, new: neu, set }] of Object.entries(PAIRS)) {
    const [a, b] = [built[old as ImageName], built[neu as ImageName]];
    if (set !== 'desk' || !a || !b) continue;
    const stats = await cache.get(
      `${pair}.novel.json`,
      hashKey({ up: [a.identity, b.identity] }),
      async (tmp) => {
        log(`images: novel 4 KiB blocks of ${neu} against ${old}`);
        const bound = await novelBlockBound(a.path, b.path, { zstdLevel: 3 });
        await writeFile(tmp, JSON.stringify(bound, null, 2) + '\n');
        return {
          novelBlocks: bound.novelBlocks,
          novelBytes: bound.novelBytes,
          uniqueNovelBlocks: bound.uniqueNovelBlocks,
        };
      },
    );
    pairs[pair] = { old, new: neu, ...stats.extra };
  }

  const p1 = installedPackages(desk1Tree.path);
  const p2 = installedPackages(desk2Tree.path);
  const changes = packageChanges(p1, p2);
  return {
    recipe: DESK_RECIPE,
    trees: {
      desk1: await treeInfo(desk1Tree, p1),
      desk2: await treeInfo(desk2Tree, p2),
    },
    packages: {
      desk1: Object.keys(p1).length,
      desk2: Object.keys(p2).length,
      upgraded: changes.changedVersion.length,
      added: changes.added.length,
      removed: changes.removed.length,
      names: changes,
    },
    images,
    pairs,
  };
}

/**
 * Builds (or reuses) the images of `sets`. Root only (debootstrap, chroot, mounts); one process
 * at a time per cache directory.
 */
export async function buildImages(opts: {
  sets: readonly ImageSet[];
  cacheDir?: string;
  log: (msg: string) => void;
}): Promise<Images> {
  const cacheDir = resolve(opts.cacheDir ?? defaultCacheDir);
  if (process.getuid?.() !== 0) throw new Error('images: building the images needs root');
  await mkdir(cacheDir, { recursive: true });
  const release = acquireLock(cacheDir);
  try {
    const cache = new Cache(cacheDir, opts.log);
    await cache.sweep();
    const started = process.hrtime.bigint();
    const paths: Images['paths'] = {};
    const info: Record<string, unknown> = { cacheDir };
    if (opts.sets.includes('small')) info.small = await buildSmallSet(cache, paths);
    if (opts.sets.includes('desk')) info.desk = await buildDeskSet(cache, paths);
    info.totalSeconds = round(secondsSince(started), 1);
    return { paths, info };
  } finally {
    release();
  }
}

// `node bench/images.ts [--sets=small,desk]` builds (or reuses) the images and prints their
// description.
if (import.meta.main) {
  const arg = process.argv.slice(2).find((a) => a.startsWith('--sets='));
  const sets = arg ? (arg.slice('--sets='.length).split(',') as ImageSet[]) : IMAGE_SETS;
  for (const s of sets) {
    if (!IMAGE_SETS.includes(s))
      throw new Error(`--sets: unknown set ${s} (use ${IMAGE_SETS.join(',')})`);
  }
  const images = await buildImages({ sets, log: (msg) => console.error(msg) });
  console.log(JSON.stringify(images, null, 2));
}
