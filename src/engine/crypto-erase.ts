import { randomBytes } from 'node:crypto';
import { open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode } from '../protocol/index.ts';
import { destroyEncryptionKey } from './device-keys.ts';
import type { Log } from './log.ts';
import { engineFiles } from './state.ts';
import { volumeLayout } from './volumes/index.ts';

/*
 * Kill = crypto-erase (docs/keys.md). After every VM has stopped, Engine destroys what could
 * open the work data, in this order, each step idempotent so that a crash part-way is finished
 * by the next start (the kill notice on disk says the device is killed):
 *
 *   1. the VMs' wrapped data keys (`keys/wrapped/`, each overwritten, then removed) and the
 *      device's encryption key (sealed TPM blobs, or the key file overwritten, then removed);
 *   2. the desired state (file and backup), which names the keys by digest only;
 *   3. the LUKS header inside each VM's encrypted data volume, overwritten with random bytes;
 *   4. each VM's TPM state, UEFI variables, overlays and run files, and every golden.
 *
 * The data volume file itself stays: without its LUKS header no key opens it. The identity key
 * (`device.key`) goes last, once the kill's result reached Center (`destroyIdentityKey`).
 */

/** qcow2's "full disk encryption header pointer" header extension. */
const QCOW2_CRYPT_HEADER_EXT = 0x0537be77;
const QCOW2_MAGIC = 0x514649fb;

/**
 * Where the LUKS header of an encrypted qcow2 file lies, from its header extensions; null when
 * the file is not qcow2 with LUKS encryption.
 */
export async function qcow2LuksHeader(
  path: string,
): Promise<{ offset: number; length: number } | null> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(64 * 1024);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    if (bytesRead < 104 || head.readUInt32BE(0) !== QCOW2_MAGIC) return null;
    const version = head.readUInt32BE(4);
    const cryptMethod = head.readUInt32BE(32);
    if (cryptMethod !== 2) return null;
    let at = version >= 3 ? head.readUInt32BE(100) : 72;
    while (at + 8 <= bytesRead) {
      const type = head.readUInt32BE(at);
      const length = head.readUInt32BE(at + 4);
      if (type === 0) break;
      if (type === QCOW2_CRYPT_HEADER_EXT && length >= 16 && at + 24 <= bytesRead) {
        return {
          offset: Number(head.readBigUInt64BE(at + 8)),
          length: Number(head.readBigUInt64BE(at + 16)),
        };
      }
      at += 8 + Math.ceil(length / 8) * 8;
    }
    return null;
  } finally {
    await handle.close();
  }
}

/**
 * Overwrites the LUKS header of an encrypted qcow2 data volume with random bytes and syncs it.
 * Answers whether there was one; a missing or unencrypted file is left as it is.
 */
export async function destroyLuksHeader(path: string): Promise<boolean> {
  let where;
  try {
    where = await qcow2LuksHeader(path);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
  if (where === null) return false;
  const handle = await open(path, 'r+');
  try {
    const step = 1024 * 1024;
    for (let done = 0; done < where.length; done += step) {
      const n = Math.min(step, where.length - done);
      await handle.write(randomBytes(n), 0, n, where.offset + done);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  return true;
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
}

/** What `cryptoErase` destroyed, for the kill's result. */
export interface EraseSummary {
  /** VMs whose data volume's LUKS header was overwritten. */
  erasedVolumes: string[];
}

/** Crypto-erases this PC's VMs (steps 1–4 above). Idempotent; every VM must be stopped. */
export async function cryptoErase(dataDir: string, log: Log): Promise<EraseSummary> {
  // The wrapped keys are overwritten one by one before the directory that holds them goes.
  await engineFiles(dataDir).wrappedKeys.destroyAll();
  await destroyEncryptionKey(dataDir);
  await engineFiles(dataDir).desiredState.remove();
  const erasedVolumes: string[] = [];
  for (const vm of (await listDir(join(dataDir, 'vms'))).sort()) {
    let layout;
    try {
      layout = volumeLayout(dataDir, vm);
    } catch {
      continue;
    }
    if (await destroyLuksHeader(layout.data)) erasedVolumes.push(vm);
    for (const entry of await listDir(layout.vmDir)) {
      const path = join(layout.vmDir, entry);
      if (path !== layout.data) await rm(path, { recursive: true, force: true });
    }
  }
  await rm(join(dataDir, 'goldens'), { recursive: true, force: true });
  log.warn(
    { component: 'sync', erasedVolumes },
    'kill: keys destroyed, LUKS headers overwritten, goldens and overlays deleted',
  );
  return { erasedVolumes };
}

/** Destroys the device's identity key: the device can no longer speak to Center. Idempotent. */
export async function destroyIdentityKey(dataDir: string): Promise<void> {
  const files = engineFiles(dataDir);
  await rm(files.privateKeyPath, { force: true });
}
