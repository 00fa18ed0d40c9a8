// Builds (and caches) a realistic pair of Debian disk images, the way an admin's image pipeline
// would: a debootstrapped bookworm tree (v1), the same tree a month later with packages added,
// one removed and some /etc edits (v2), each written to a fresh 2 GiB ext4 image by
// `mkfs.ext4 -d`, plus v2b: v1's image modified in place (the easy case for delta tools).
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
import { debianMirror, errorMessage, round, run, secondsSince, sizes } from './util.ts';

const benchDir = dirname(fileURLToPath(import.meta.url));
export const defaultCacheDir = join(benchDir, '.cache');

/** What the images contain. Changing anything here rebuilds the affected artifacts. */
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

export interface ImagePair {
  v1: string;
  v2: string;
  v2b: string;
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

async function buildV2Tree(
  tmp: string,
  v1Tree: string,
  cacheDir: string,
  log: (msg: string) => void,
): Promise<Record<string, unknown>> {
  await run('cp', ['-a', '--', v1Tree, tmp]);
  const aptCache = join(cacheDir, 'apt-archives');
  await mkdir(join(aptCache, 'partial'), { recursive: true });
  const policy = join(tmp, 'usr/sbin/policy-rc.d');
  await writeFile(policy, '#!/bin/sh\nexit 101\n');
  await chmod(policy, 0o755);
  const resolvConf = join(tmp, 'etc/resolv.conf');
  const savedResolv = existsSync(resolvConf) ? await readFile(resolvConf) : undefined;
  await rm(resolvConf, { force: true });
  await writeFile(resolvConf, await readFile('/etc/resolv.conf'));
  const apt = (args: string[]) =>
    run('chroot', [tmp, 'apt-get', '-q', '-o', 'Acquire::Check-Valid-Until=false', ...args], {
      env: chrootEnv,
      timeoutMs: 30 * 60_000,
    });
  const times: Record<string, number> = {};
  await withChrootMounts(tmp, aptCache, log, async () => {
    log('images: v2: apt-get update');
    times.update = round((await apt(['update'])).seconds, 1);
    log(`images: v2: apt-get install ${RECIPE.v2.install.join(' ')}`);
    times.install = round((await apt(['install', '-y', ...RECIPE.v2.install])).seconds, 1);
    log(`images: v2: apt-get purge ${RECIPE.v2.purge.join(' ')}`);
    times.purge = round((await apt(['purge', '-y', ...RECIPE.v2.purge])).seconds, 1);
    times.autoremove = round((await apt(['autoremove', '--purge', '-y'])).seconds, 1);
  });
  // The admin's edits.
  await writeFile(join(tmp, 'etc/hostname'), `${RECIPE.v2.hostname}\n`);
  await writeFile(join(tmp, 'etc/motd'), RECIPE.v2.motd);
  const sshConfig = join(tmp, 'etc/ssh/ssh_config');
  if (existsSync(sshConfig)) await appendFile(sshConfig, `${RECIPE.v2.sshConfigLine}\n`);
  await rm(policy, { force: true });
  await rm(resolvConf, { force: true });
  if (savedResolv) await writeFile(resolvConf, savedResolv);
  await cleanAptState(tmp);
  return { aptSeconds: times };
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

async function fsck(image: string): Promise<boolean> {
  try {
    await run('e2fsck', ['-f', '-n', image]);
    return true;
  } catch {
    return false;
  }
}

export async function buildImagePair(opts: {
  cacheDir?: string;
  log: (msg: string) => void;
}): Promise<ImagePair> {
  const cacheDir = resolve(opts.cacheDir ?? defaultCacheDir);
  const log = opts.log;
  if (process.getuid?.() !== 0) throw new Error('images: building the images needs root');
  await mkdir(cacheDir, { recursive: true });
  const release = acquireLock(cacheDir);
  try {
    const cache = new Cache(cacheDir, log);
    await cache.sweep();
    const started = process.hrtime.bigint();

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

    const p1 = installedPackages(v1Tree.path);
    const p2 = installedPackages(v2Tree.path);
    const added = Object.keys(p2).filter((p) => !(p in p1));
    const removed = Object.keys(p1).filter((p) => !(p in p2));
    const changed = Object.keys(p2).filter((p) => p in p1 && p1[p] !== p2[p]);

    const imageInfo = async (b: Built) => ({
      ...(await sizes(b.path)),
      fsckClean: await fsck(b.path),
      buildSeconds: b.seconds,
      cached: b.cached,
      ...b.extra,
    });
    const st = await stat(v1Raw.path);
    const info: Record<string, unknown> = {
      recipe: RECIPE,
      cacheDir,
      trees: {
        v1: {
          bytes: await duBytes(v1Tree.path),
          packages: Object.keys(p1).length,
          buildSeconds: v1Tree.seconds,
          cached: v1Tree.cached,
          ...v1Tree.extra,
        },
        v2: {
          bytes: await duBytes(v2Tree.path),
          packages: Object.keys(p2).length,
          buildSeconds: v2Tree.seconds,
          cached: v2Tree.cached,
          ...v2Tree.extra,
        },
      },
      packages: { added, removed, changedVersion: changed, v1: p1 },
      images: {
        v1: await imageInfo(v1Raw),
        v2: await imageInfo(v2Raw),
        v2b: await imageInfo(v2bRaw),
      },
      imageBytes: st.size,
      totalSeconds: round(secondsSince(started), 1),
    };
    return { v1: v1Raw.path, v2: v2Raw.path, v2b: v2bRaw.path, info };
  } finally {
    release();
  }
}

// `node bench/images.ts` builds (or reuses) the images and prints their description.
if (import.meta.main) {
  const pair = await buildImagePair({ log: (msg) => console.error(msg) });
  console.log(JSON.stringify(pair, null, 2));
}
