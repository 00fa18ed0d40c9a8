/*
 * Builds a full Debian 12 system as a bootable disk image, from Debian's packages only
 * (guest/README.md, "The full Debian guest"):
 *
 *   - a GPT disk with an EFI system partition and an ext4 root file system;
 *   - systemd, Debian's kernel for virtual machines (`linux-image-cloud-amd64`, signed), an
 *     initramfs made by initramfs-tools;
 *   - `shim-signed` + `grub-efi-amd64-signed` on the ESP as the removable-media loader
 *     (\EFI\BOOT\BOOTX64.EFI), so it boots with Secure Boot on: Microsoft's key in OVMF's db
 *     accepts shim, shim accepts Debian's grub and kernel;
 *   - qemu-guest-agent, tpm2-tools, a console login on the VM's screen (user `pc`), and the
 *     data volume (ext4 labelled `data`, as Engine makes it) mounted at /home.
 *
 * Versions, as a real patch differs:
 *   - `v1`: the stable release as it was published (the base suite only);
 *   - `v2`: the same system with the stable updates and security suites (packages upgraded),
 *     one package added (`less`) and changes in /etc;
 *   - `v3-unsigned`: v2 whose boot loader lost its signature, which Secure Boot refuses.
 *
 * mmdebstrap fetches the packages from the Debian archive this machine's apt is configured
 * with (`/etc/apt/sources.list.d/*.sources`, `/etc/apt/sources.list`); set
 * BULKHEAD_DEBIAN_MIRROR to another archive URL (and BULKHEAD_DEBIAN_SECURITY for its
 * security suite) to use another one.
 *
 * Run: `npm run -s guest -- --debian [--out DIR]` (prints the paths), or import
 * `buildDebianGuest`.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import {
  appendFile,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readFile,
  rename,
  rm,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

const GUEST_DIR = dirname(fileURLToPath(import.meta.url));
const DEFAULT_CACHE = join(GUEST_DIR, '.cache');

/** The release the guest is built from. */
export const DEBIAN_SUITE = 'bookworm';

/** The user who logs in on the console; their home is on the data volume. */
export const DEBIAN_USER = { name: 'pc', password: 'bulkhead' } as const;

/** The health check a profile running this guest uses: systemd's own verdict. */
export const DEBIAN_HEALTH_CHECK = ['/usr/bin/systemctl', 'is-system-running', '--wait'];

/** File-system labels the boot loader and fstab find the partitions by. */
export const ROOT_LABEL = 'bulkhead-root';
const ESP_LABEL = 'ESP';

/** Packages of every version (besides minbase). */
const PACKAGES = [
  'systemd-sysv',
  'udev',
  'dbus',
  'linux-image-cloud-amd64',
  'initramfs-tools',
  'shim-signed',
  'grub-efi-amd64-signed',
  'qemu-guest-agent',
  'tpm2-tools',
  'e2fsprogs',
  'dosfstools',
  'login',
  'passwd',
  'kmod',
  'procps',
  'iproute2',
];

/** The package v2 adds. */
const ADDED_IN_V2 = 'less';

/** Sizes: a 64 MiB ESP at 1 MiB, the root file system after it, 1 MiB for the backup GPT. */
const ESP_MIB = 64;
const ROOT_MIB = 1536;
const DISK_MIB = 1 + ESP_MIB + ROOT_MIB + 1;

/** Fixed identifiers, so the same packages give the same layout. */
const DISK_GUID = '6b1d1f0e-4b59-4d3e-9a3c-0b7e5d1c2a01';
const ESP_GUID = '6b1d1f0e-4b59-4d3e-9a3c-0b7e5d1c2a02';
const ROOT_GUID = '6b1d1f0e-4b59-4d3e-9a3c-0b7e5d1c2a03';
const ROOT_FS_UUID = '3f9c2a51-7d44-4c1e-8f0b-5a6e2d9b7c10';
const ESP_VOLUME_ID = '2b0c1a7e';
/** SOURCE_DATE_EPOCH for the build: 2024-01-01. */
const EPOCH = 1_704_067_200;

/** The GPT partition types (UEFI's ESP, and the x86-64 root of the Discoverable Partitions spec). */
const ESP_TYPE = 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B';
const ROOT_TYPE = '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709';

/** The Debian package each host tool of the build comes from. */
const PACKAGE_OF: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  'mkfs.ext4': 'e2fsprogs',
  'mkfs.vfat': 'dosfstools',
  mcopy: 'mtools',
  mmd: 'mtools',
  sfdisk: 'fdisk',
  chroot: 'coreutils',
};

export type DebianVersion = 'v1' | 'v2' | 'v3-unsigned';
export const DEBIAN_VERSIONS: readonly DebianVersion[] = ['v1', 'v2', 'v3-unsigned'];

export class DebianBuildError extends Error {
  /** The Debian package to install, when the failure is a missing one. */
  readonly debianPackage: string | undefined;
  constructor(message: string, debianPackage?: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DebianBuildError';
    this.debianPackage = debianPackage;
  }
}

export interface DebianGuest {
  dir: string;
  /** Raw GPT disk images, one per version. */
  disks: Record<DebianVersion, string>;
  /** What v2 changes over v1, from the two package lists. */
  changes: { upgraded: string[]; added: string[]; removed: string[]; etc: string[] };
  user: typeof DEBIAN_USER;
  healthCheck: string[];
}

async function run(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ stdout: string; stderr: string }> {
  try {
    return await execFileAsync(command, args, {
      maxBuffer: 64 * 1024 * 1024,
      env: { ...process.env, ...env },
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      const pkg = PACKAGE_OF[basename(command)] ?? basename(command);
      throw new DebianBuildError(
        `${command} was not found: install the Debian package ${pkg} (apt-get install ${pkg})`,
        pkg,
        { cause: err },
      );
    }
    const tail = (e.stderr ?? e.message).trim().split('\n').slice(-15).join('\n');
    throw new DebianBuildError(
      `${command} ${args.slice(0, 4).join(' ')} … failed:\n${tail}`,
      undefined,
      {
        cause: err,
      },
    );
  }
}

/** The archive and security URLs: from the environment, else from this machine's apt sources. */
export function debianMirrors(
  env: NodeJS.ProcessEnv = process.env,
  readSources: () => string = hostSources,
): { archive: string; security: string } {
  if (env.BULKHEAD_DEBIAN_MIRROR) {
    const archive = env.BULKHEAD_DEBIAN_MIRROR.replace(/\/+$/, '');
    const security =
      env.BULKHEAD_DEBIAN_SECURITY?.replace(/\/+$/, '') ??
      archive.replace(/\/debian$/, '/debian-security');
    return { archive, security };
  }
  const text = readSources();
  let archive: string | undefined;
  let security: string | undefined;
  // deb822 stanzas (URIs:/Suites:) and one-line entries (deb URI SUITE COMPONENTS).
  const entries: { uri: string; suites: string[] }[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const uris = /^URIs:\s*(.+)$/im.exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
    const suites = /^Suites:\s*(.+)$/im.exec(stanza)?.[1]?.trim().split(/\s+/) ?? [];
    for (const uri of uris) entries.push({ uri, suites });
  }
  for (const line of text.split('\n')) {
    const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
    if (m) entries.push({ uri: m[1]!, suites: [m[2]!] });
  }
  for (const { uri, suites } of entries) {
    const clean = uri.replace(/\/+$/, '');
    if (suites.includes(`${DEBIAN_SUITE}-security`)) security ??= clean;
    else if (suites.includes(DEBIAN_SUITE)) archive ??= clean;
  }
  if (!archive) {
    throw new DebianBuildError(
      `no Debian ${DEBIAN_SUITE} archive in this machine's apt sources: set BULKHEAD_DEBIAN_MIRROR ` +
        'to the URL of a Debian archive (the directory holding dists/ and pool/)',
    );
  }
  return { archive, security: security ?? archive.replace(/\/debian$/, '/debian-security') };
}

function hostSources(): string {
  const files = ['/etc/apt/sources.list'];
  try {
    for (const name of readdirSync('/etc/apt/sources.list.d').sort()) {
      if (name.endsWith('.sources') || name.endsWith('.list')) {
        files.push(join('/etc/apt/sources.list.d', name));
      }
    }
  } catch {
    // no sources.list.d
  }
  const parts: string[] = [];
  for (const file of files) {
    try {
      parts.push(readFileSync(file, 'utf8'));
    } catch {
      // absent
    }
  }
  return parts.join('\n\n');
}

/** mmdebstrap's sources: the base suite only (v1), or with its updates and security (v2). */
function sourcesOf(version: 'v1' | 'v2', mirrors: { archive: string; security: string }): string[] {
  const base = [`deb ${mirrors.archive} ${DEBIAN_SUITE} main`];
  if (version === 'v1') return base;
  return [
    ...base,
    `deb ${mirrors.archive} ${DEBIAN_SUITE}-updates main`,
    `deb ${mirrors.security} ${DEBIAN_SUITE}-security main`,
  ];
}

async function bootstrap(
  root: string,
  version: 'v1' | 'v2',
  mirrors: { archive: string; security: string },
): Promise<void> {
  const include = version === 'v2' ? [...PACKAGES, ADDED_IN_V2] : PACKAGES;
  await run(
    'mmdebstrap',
    [
      '--variant=minbase',
      `--include=${include.join(',')}`,
      '--aptopt=Acquire::Retries "3"',
      // What a VM's system does not need: manuals, docs and translations.
      '--dpkgopt=path-exclude=/usr/share/man/*',
      '--dpkgopt=path-exclude=/usr/share/doc/*',
      '--dpkgopt=path-include=/usr/share/doc/*/copyright',
      '--dpkgopt=path-exclude=/usr/share/locale/*',
      DEBIAN_SUITE,
      root,
      ...sourcesOf(version, mirrors),
    ],
    { SOURCE_DATE_EPOCH: String(EPOCH) },
  );
}

const GRUB_CFG = `set timeout=0
search --no-floppy --label --set=root ${ROOT_LABEL}
linux /vmlinuz root=LABEL=${ROOT_LABEL} ro console=tty0 console=ttyS0,115200 panic=10
initrd /initrd.img
boot
`;

const FSTAB = `# The root file system and the ESP, by label.
LABEL=${ROOT_LABEL} / ext4 errors=remount-ro 0 1
LABEL=${ESP_LABEL} /boot/efi vfat umask=0077,nofail 0 2
# The VM's data volume (Engine formats it as ext4 labelled "data"): the users' homes.
LABEL=data /home ext4 nofail,x-systemd.device-timeout=60s 0 2
`;

/** The /etc changes v2 makes (paths under the root), as a patch by an administrator would. */
const ETC_CHANGES_V2: Record<string, string> = {
  '/etc/motd': 'This PC runs a managed system (Bulkhead). Your files are in /home.\n',
  '/etc/systemd/journald.conf.d/50-size.conf': '[Journal]\nSystemMaxUse=64M\n',
  '/etc/sysctl.d/90-swappiness.conf': 'vm.swappiness = 10\n',
};

async function configure(root: string, version: 'v1' | 'v2'): Promise<void> {
  await writeFile(join(root, 'etc/fstab'), FSTAB);
  await mkdir(join(root, 'boot/efi'), { recursive: true });
  await writeFile(join(root, 'etc/hostname'), 'bulkhead-pc\n');
  await writeFile(join(root, 'etc/hosts'), '127.0.0.1 localhost\n127.0.1.1 bulkhead-pc\n');
  // Each VM makes its own machine id at first boot.
  await writeFile(join(root, 'etc/machine-id'), '');
  // systemd-firstboot would ask for a locale and a password on the console of a first boot.
  await rm(join(root, 'etc/systemd/system/systemd-firstboot.service'), { force: true });
  await symlink('/dev/null', join(root, 'etc/systemd/system/systemd-firstboot.service'));
  await run('chroot', [
    root,
    'useradd',
    '--no-create-home',
    '--shell',
    '/bin/bash',
    DEBIAN_USER.name,
  ]);
  await run('chroot', [
    root,
    '/bin/sh',
    '-c',
    `echo '${DEBIAN_USER.name}:${DEBIAN_USER.password}' | chpasswd`,
  ]);
  // Homes live on the data volume, which starts empty: made at the first login.
  await appendFile(join(root, 'etc/pam.d/login'), 'session optional pam_mkhomedir.so umask=0077\n');
  if (version === 'v2') {
    for (const [path, text] of Object.entries(ETC_CHANGES_V2)) {
      await mkdir(dirname(join(root, path)), { recursive: true });
      await writeFile(join(root, path), text);
    }
  }
}

async function packageList(root: string): Promise<Map<string, string>> {
  const { stdout } = await run('chroot', [root, 'dpkg-query', '-W', '-f=${Package} ${Version}\\n']);
  const list = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    const [name, version] = line.split(' ');
    if (name && version) list.set(name, version);
  }
  return list;
}

function diffPackages(
  v1: Map<string, string>,
  v2: Map<string, string>,
): Pick<DebianGuest['changes'], 'upgraded' | 'added' | 'removed'> {
  const upgraded: string[] = [];
  const added: string[] = [];
  const removed: string[] = [];
  for (const [name, version] of v2) {
    const old = v1.get(name);
    if (old === undefined) added.push(`${name} ${version}`);
    else if (old !== version) upgraded.push(`${name} ${old} -> ${version}`);
  }
  for (const name of v1.keys()) if (!v2.has(name)) removed.push(name);
  return { upgraded: upgraded.sort(), added: added.sort(), removed: removed.sort() };
}

/**
 * `efi` without its Authenticode signature: the PE's security directory entry is cleared and
 * the certificate table after the image cut off. Firmware with Secure Boot on refuses it.
 * @throws DebianBuildError when `efi` is not a PE32+ image.
 */
export function stripSignature(efi: Buffer): Buffer {
  const pe = efi.readUInt32LE(0x3c);
  if (efi.toString('latin1', 0, 2) !== 'MZ' || efi.toString('latin1', pe, pe + 4) !== 'PE\0\0') {
    throw new DebianBuildError('not a PE image');
  }
  const optional = pe + 24;
  if (efi.readUInt16LE(optional) !== 0x20b) throw new DebianBuildError('not a PE32+ image');
  const security = optional + 112 + 4 * 8;
  const offset = efi.readUInt32LE(security);
  const size = efi.readUInt32LE(security + 4);
  const out = Buffer.from(efi);
  out.writeUInt32LE(0, security);
  out.writeUInt32LE(0, security + 4);
  return size > 0 && offset + size === efi.length ? out.subarray(0, offset) : out;
}

async function buildEsp(root: string, out: string, unsigned: boolean, work: string): Promise<void> {
  await run('mkfs.vfat', ['-C', '-n', ESP_LABEL, '-i', ESP_VOLUME_ID, out, String(ESP_MIB * 1024)]);
  const env = { MTOOLS_SKIP_CHECK: '1' };
  await run('mmd', ['-i', out, '::/EFI', '::/EFI/BOOT', '::/EFI/debian'], env);
  const shim = join(root, 'usr/lib/shim/shimx64.efi.signed');
  let loader = shim;
  if (unsigned) {
    loader = join(work, 'BOOTX64.EFI');
    await writeFile(loader, stripSignature(await readFile(shim)));
  }
  const grubCfg = join(work, 'grub.cfg');
  await writeFile(grubCfg, GRUB_CFG);
  const files: [string, string][] = [
    [loader, '::/EFI/BOOT/BOOTX64.EFI'],
    [join(root, 'usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed'), '::/EFI/BOOT/grubx64.efi'],
    [join(root, 'usr/lib/shim/mmx64.efi.signed'), '::/EFI/BOOT/mmx64.efi'],
    // Debian's signed grub reads its configuration from its prefix (\EFI\debian) or, failing
    // that, from the directory it was started from.
    [grubCfg, '::/EFI/debian/grub.cfg'],
    [grubCfg, '::/EFI/BOOT/grub.cfg'],
  ];
  for (const [from, to] of files) await run('mcopy', ['-i', out, from, to], env);
}

async function buildRootFs(root: string, out: string): Promise<void> {
  await writeFile(out, '');
  await truncate(out, ROOT_MIB * 1024 * 1024);
  await run(
    'mkfs.ext4',
    [
      '-q',
      '-F',
      '-b',
      '4096',
      '-L',
      ROOT_LABEL,
      '-U',
      ROOT_FS_UUID,
      '-E',
      `root_owner=0:0,hash_seed=${ROOT_FS_UUID},lazy_itable_init=0`,
      '-d',
      root,
      out,
    ],
    { E2FSPROGS_FAKE_TIME: String(EPOCH), SOURCE_DATE_EPOCH: String(EPOCH) },
  );
}

/** Copies the non-zero MiBs of `part` into `disk` at `offsetMib`: the disk stays sparse. */
async function writePartition(disk: string, part: string, offsetMib: number): Promise<void> {
  const out = await open(disk, 'r+');
  const input = await open(part, 'r');
  try {
    const block = Buffer.alloc(1024 * 1024);
    for (let i = 0; ; i++) {
      const { bytesRead } = await input.read(block, 0, block.length, i * block.length);
      if (bytesRead === 0) break;
      const chunk = block.subarray(0, bytesRead);
      if (chunk.some((b) => b !== 0)) {
        await out.write(chunk, 0, bytesRead, (offsetMib + i) * block.length);
      }
    }
  } finally {
    await input.close();
    await out.close();
  }
}

async function assembleDisk(out: string, esp: string, rootFs: string): Promise<void> {
  await writeFile(out, '');
  await truncate(out, DISK_MIB * 1024 * 1024);
  const table = [
    'label: gpt',
    `label-id: ${DISK_GUID}`,
    `start=1MiB, size=${ESP_MIB}MiB, type=${ESP_TYPE}, uuid=${ESP_GUID}, name="EFI system"`,
    `start=${1 + ESP_MIB}MiB, size=${ROOT_MIB}MiB, type=${ROOT_TYPE}, uuid=${ROOT_GUID}, name=root`,
    '',
  ].join('\n');
  const child = execFile('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', out]);
  const done = new Promise<void>((resolve, reject) => {
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', (err) =>
      reject(
        (err as NodeJS.ErrnoException).code === 'ENOENT'
          ? new DebianBuildError('sfdisk was not found: install the Debian package fdisk', 'fdisk')
          : err,
      ),
    );
    child.on('exit', (code) =>
      code === 0 ? resolve() : reject(new DebianBuildError(`sfdisk failed: ${stderr.trim()}`)),
    );
  });
  child.stdin?.end(table);
  await done;
  await writePartition(out, esp, 1);
  await writePartition(out, rootFs, 1 + ESP_MIB);
}

async function exists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch {
    return false;
  }
}

function layout(dir: string): DebianGuest {
  return {
    dir,
    disks: {
      v1: join(dir, 'debian-v1.img'),
      v2: join(dir, 'debian-v2.img'),
      'v3-unsigned': join(dir, 'debian-v3-unsigned.img'),
    },
    changes: { upgraded: [], added: [], removed: [], etc: Object.keys(ETC_CHANGES_V2) },
    user: DEBIAN_USER,
    healthCheck: DEBIAN_HEALTH_CHECK,
  };
}

/**
 * Builds (or finds in `cacheDir`) the full Debian guest's disks. The cache key covers this
 * script and the archive it fetches from; packages published since do not rebuild it (delete
 * the directory for fresh ones). Several processes may build at once: each builds in its own
 * directory and the first rename wins. Needs root (mmdebstrap, chroot) and about 3 GB free.
 * @throws DebianBuildError naming the Debian package when a tool is missing.
 */
export async function buildDebianGuest(
  options: { cacheDir?: string; log?: (line: string) => void } = {},
): Promise<DebianGuest> {
  const cacheDir = options.cacheDir ?? DEFAULT_CACHE;
  const log = options.log ?? (() => {});
  const mirrors = debianMirrors();
  const key = createHash('sha256')
    .update(await readFile(fileURLToPath(import.meta.url)))
    .update(JSON.stringify(mirrors))
    .digest('hex')
    .slice(0, 16);
  const dir = join(cacheDir, `debian-${key}`);
  if (await exists(join(dir, 'changes.json'))) {
    return {
      ...layout(dir),
      changes: JSON.parse(await readFile(join(dir, 'changes.json'), 'utf8')),
    };
  }
  if (process.getuid?.() !== 0) {
    throw new DebianBuildError(
      'building the Debian guest needs root (mmdebstrap and chroot): run it as root or with sudo',
    );
  }
  await mkdir(cacheDir, { recursive: true });
  const work = await mkdtemp(join(cacheDir, 'debian-build-'));
  try {
    const out = layout(join(work, 'out'));
    await mkdir(out.dir);
    const roots = { v1: join(work, 'root-v1'), v2: join(work, 'root-v2') };
    log(`debian guest: mmdebstrap ${DEBIAN_SUITE} (v1: base suite; v2: with updates and security)`);
    await Promise.all(
      (['v1', 'v2'] as const).map(async (v) => {
        await bootstrap(roots[v], v, mirrors);
        await configure(roots[v], v);
      }),
    );
    const changes = {
      ...diffPackages(await packageList(roots.v1), await packageList(roots.v2)),
      etc: Object.keys(ETC_CHANGES_V2),
    };
    log(
      `debian guest: v2 upgrades ${changes.upgraded.length} packages, adds ${changes.added.length}`,
    );
    for (const v of ['v1', 'v2'] as const) {
      const esp = join(work, `esp-${v}.img`);
      const rootFs = join(work, `root-${v}.img`);
      await buildEsp(roots[v], esp, false, work);
      await buildRootFs(roots[v], rootFs);
      await assembleDisk(out.disks[v], esp, rootFs);
      if (v === 'v2') {
        const unsigned = join(work, 'esp-v3.img');
        await buildEsp(roots.v2, unsigned, true, work);
        await assembleDisk(out.disks['v3-unsigned'], unsigned, rootFs);
      }
      await rm(esp, { force: true });
      await rm(rootFs, { force: true });
      await rm(roots[v], { recursive: true, force: true });
    }
    await writeFile(join(out.dir, 'changes.json'), `${JSON.stringify(changes, null, 2)}\n`);
    try {
      await rename(out.dir, dir);
    } catch (err) {
      // Another process finished first: its result is as good as ours.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    }
    return { ...layout(dir), changes };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
