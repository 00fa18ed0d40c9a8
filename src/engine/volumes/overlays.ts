import { execFile } from 'node:child_process';
import { mkdir, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { exists } from '../../durable/index.ts';
import { BulkheadError, ErrorCodes, isValidName } from '../../protocol/index.ts';
import type { VmDisk } from '../hypervisor/types.ts';
import { secretFifo, secretFifoPath } from '../secret-fifo.ts';

const exec = promisify(execFile);

/*
 * The writable side of a VM's volumes (DESIGN §2): a qcow2 overlay per system or app volume,
 * backed by its read-only golden and thrown away on every switch or rollback, and one data
 * volume that is created once and never recreated, deleted or rewritten by an update.
 * Every file is made under a temp name and renamed into place, so a crash never leaves a
 * half-made overlay or data volume under the real name.
 */

export interface VolumeLayout {
  /** `<data>/vms/<vm>`: the VM's overlays, data volume and run directory. */
  vmDir: string;
  overlay(role: string): string;
  data: string;
  runDir: string;
  /** Each boot's serial console log, the last few (hypervisor/consoles.ts). */
  consoleDir: string;
  /** The VM's UEFI variable store: persistent like the data volume, never reset or rolled back. */
  efiVars: string;
  /** The VM's TPM state (encrypted by swtpm): persistent like the data volume. */
  tpmState: string;
}

export function volumeLayout(dataDir: string, vm: string): VolumeLayout {
  if (!isValidName(vm)) {
    throw new BulkheadError(ErrorCodes.VALIDATION, `VM name ${JSON.stringify(vm)} is not valid`);
  }
  const vmDir = join(dataDir, 'vms', vm);
  return {
    vmDir,
    // Roles are `system` or `app:<name>`; the colon stays out of file names.
    overlay: (role) => {
      const app = role.startsWith('app:') ? role.slice(4) : null;
      if (role !== 'system' && (app === null || !isValidName(app))) {
        throw new BulkheadError(
          ErrorCodes.VALIDATION,
          `volume role ${JSON.stringify(role)} is not valid`,
        );
      }
      return join(vmDir, app === null ? 'system.qcow2' : `app-${app}.qcow2`);
    },
    data: join(vmDir, 'data.qcow2'),
    runDir: join(vmDir, 'run'),
    consoleDir: join(vmDir, 'consoles'),
    efiVars: join(vmDir, 'efi-vars.fd'),
    tpmState: join(vmDir, 'tpm'),
  };
}

/**
 * Runs qemu-img. With `secret`, the string `SECRET_FILE` in the arguments is replaced by a FIFO
 * that hands qemu-img the secret: a key never touches the disk, a command line or the
 * environment.
 */
async function qemuImg(args: string[], secret?: { dir: string; content: string }): Promise<string> {
  const fifo = secret ? await secretFifo(secretFifoPath(secret.dir), secret.content) : undefined;
  try {
    const argv = fifo ? args.map((a) => a.replace(SECRET_FILE, qemuOpt(fifo.path))) : args;
    return await runTool('qemu-img', argv, { what: `qemu-img ${args[0]}`, debian: 'qemu-utils' });
  } finally {
    await fifo?.close();
  }
}

/**
 * Runs `fn` again when QEMU could not time its key derivation ("Unable to get accurate CPU
 * usage"): on a machine whose cores are busy with other work that can happen several times in
 * a row, so up to ten attempts, a little further apart each time.
 */
async function retryOnCpuTiming<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (attempt >= 10 || !/accurate CPU usage/.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 100 * attempt));
    }
  }
}

/** Stands for the secret's FIFO in qemu-img's arguments. */
const SECRET_FILE = '@SECRET_FILE@';

/**
 * Replaces the overlay at `path` with a fresh, empty one on `golden`. The VM using it must be
 * stopped. Idempotent: redoing it after a crash gives the same result.
 */
export async function freshOverlay(golden: string, path: string): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  const tmp = `${path}.new`;
  await rm(tmp, { force: true });
  await qemuImg(['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', golden, tmp]);
  await rename(tmp, path);
}

/** The golden an overlay is backed by, or null when there is no overlay. */
export async function overlayBacking(path: string): Promise<string | null> {
  if (!(await exists(path))) return null;
  const info = JSON.parse(await qemuImg(['info', '--output=json', '-U', path])) as {
    'backing-filename'?: string;
  };
  return info['backing-filename'] ?? null;
}

export interface DataVolumeOptions {
  /** Virtual size; default 1 GiB (qcow2 takes only what is written). */
  sizeBytes?: number;
  /** The LUKS key (32 bytes) for an encrypted data volume; absent: not encrypted. */
  key?: Buffer;
  /** File-system label; default `data`. */
  label?: string;
}

/**
 * Creates the VM's data volume if it does not exist: an empty ext4 file system in a qcow2
 * file, LUKS-encrypted with QEMU's native encryption when a key is given. An existing volume
 * is never touched. QEMU wants a UTF-8 LUKS passphrase, so the passphrase is the key in base64
 * (as the desired state carries it); the hypervisor must pass the same text. It reaches
 * qemu-img through a FIFO, never through a file, and is never logged.
 * Returns true when it created the volume.
 */
export async function ensureDataVolume(
  path: string,
  options: DataVolumeOptions = {},
): Promise<boolean> {
  if (await exists(path)) return false;
  await mkdir(join(path, '..'), { recursive: true });
  const raw = `${path}.fs.tmp`;
  const tmp = `${path}.new`;
  try {
    await writeFile(raw, '');
    const size = options.sizeBytes ?? 1024 ** 3;
    await truncate(raw, size);
    await mkfs(raw, options.label ?? 'data');
    if (options.key) {
      const passphrase = { dir: join(path, '..'), content: options.key.toString('base64') };
      const object = ['--object', `secret,id=datakey,file=${SECRET_FILE}`];
      // Create the encrypted volume empty, then copy in only the file system's non-zero
      // clusters: converting straight into an encrypted target would encrypt every zero.
      // The key is 256 random bits, so a long key-derivation time buys nothing (and slows boots).
      // QEMU times its key derivation by CPU time and, on a busy machine, sometimes fails with
      // "Unable to get accurate CPU usage"; that is worth another try.
      await retryOnCpuTiming(() =>
        qemuImg(
          [
            'create',
            '-q',
            '-f',
            'qcow2',
            ...object,
            '-o',
            'encrypt.format=luks,encrypt.key-secret=datakey,encrypt.iter-time=10',
            tmp,
            String(size),
          ],
          passphrase,
        ),
      );
      await qemuImg(
        [
          'convert',
          '-q',
          '-n',
          '--target-is-zero',
          ...object,
          '-f',
          'raw',
          raw,
          '--target-image-opts',
          `driver=qcow2,file.filename=${qemuOpt(tmp)},encrypt.key-secret=datakey`,
        ],
        passphrase,
      );
    } else {
      await qemuImg(['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, tmp]);
    }
    await rename(tmp, path);
    return true;
  } finally {
    await rm(raw, { force: true });
    await rm(tmp, { force: true });
  }
}

/** Escapes a value inside QEMU's `key=value,…` option syntax. */
function qemuOpt(value: string): string {
  return value.replaceAll(',', ',,');
}

async function mkfs(path: string, label: string): Promise<void> {
  await runTool('mkfs.ext4', ['-q', '-F', '-b', '4096', '-L', label, path], {
    what: 'mkfs.ext4',
    debian: 'e2fsprogs',
  });
}

/** Runs a tool and answers its stdout; a missing tool names the Debian package that has it. */
async function runTool(
  command: string,
  args: string[],
  about: { what: string; debian: string },
): Promise<string> {
  try {
    const { stdout } = await exec(command, args, { maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new BulkheadError(ErrorCodes.TOOL_MISSING, `${command} was not found`, {
        hint: `install the Debian package ${about.debian}`,
      });
    }
    throw new BulkheadError(
      ErrorCodes.INTERNAL,
      `${about.what} failed: ${(e.stderr ?? e.message).trim()}`,
      { cause: err },
    );
  }
}

/** The disks of a VM for the hypervisor: system, apps (read-only), data. */
export function vmDisks(
  layout: VolumeLayout,
  apps: readonly { name: string }[],
  dataKey?: Buffer,
): VmDisk[] {
  return [
    { role: 'system', path: layout.overlay('system'), format: 'qcow2', readOnly: false },
    ...apps.map((a): VmDisk => ({
      role: `app:${a.name}`,
      path: layout.overlay(`app:${a.name}`),
      format: 'qcow2',
      readOnly: true,
    })),
    {
      role: 'data',
      path: layout.data,
      format: 'qcow2',
      readOnly: false,
      ...(dataKey ? { encryptionKey: dataKey } : {}),
    },
  ];
}
