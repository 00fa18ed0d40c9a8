import { readFileSync } from 'node:fs';
import { chmod, mkdir, open, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, replaceFile } from '../durable/index.ts';
import {
  errnoCode,
  WRAPPED_KEY_PROFILE_ID,
  type DesiredState,
  type DesiredVm,
} from '../protocol/index.ts';
import { wrappedKeyDigest } from '../signing/index.ts';

/*
 * The VMs' wrapped data keys on the PC (docs/keys.md), one file each:
 *
 *   <data>/keys/wrapped/<profileId>   the key as Center wrapped it (`bhwk1.…`), mode 0600
 *
 * apart from the signed desired state (`desired-state.json`), which carries only their digests.
 * That split is what lets Engine destroy one VM's key at its lease expiry while keeping the
 * document that says what the PC runs: an offline PC past its lease holds no wrapped key, so
 * nothing on it, TPM included, opens that VM's data until Center sends the key again.
 *
 * A key file is trusted only through the signed document: it is used when its SHA-256 equals
 * the VM's signed `wrappedDataKeyDigest`, and ignored otherwise (a file swapped on the disk is
 * as good as none).
 */

export interface WrappedKeyFiles {
  readonly dir: string;
  /**
   * Stores the keys of a verified envelope, each durably (0600, fsync, rename, directory fsync).
   * Called before the document itself is stored: a crash in between leaves the previous
   * document, whose ETag makes the next contact fetch the new one again.
   */
  save(keys: Readonly<Record<string, string>>): Promise<void>;
  /**
   * The wrapped key of `vm` as on disk, only if its digest is the one the signed document
   * carries; undefined when there is none or it does not match. Synchronous: the key ring
   * unwraps synchronously.
   */
  get(vm: Pick<DesiredVm, 'profileId' | 'wrappedDataKeyDigest'>): string | undefined;
  /** Whether every VM of `state` that has a wrapped key has it here, matching. */
  isComplete(state: Pick<DesiredState, 'vms'>): boolean;
  /**
   * Destroys the key of `profileId`: overwritten in place, flushed, unlinked, and the unlink
   * made durable. Idempotent.
   * @returns whether there was a file.
   */
  destroy(profileId: string): Promise<boolean>;
  /** Destroys every key (kill's crypto-erase). Idempotent. */
  destroyAll(): Promise<void>;
}

/** The wrapped-key files of the Engine whose data directory is `dataDir`. */
export function wrappedKeyFiles(dataDir: string): WrappedKeyFiles {
  const dir = join(dataDir, 'keys', 'wrapped');
  const pathOf = (profileId: string): string | undefined =>
    WRAPPED_KEY_PROFILE_ID.test(profileId) ? join(dir, profileId) : undefined;

  function read(profileId: string): string | undefined {
    const path = pathOf(profileId);
    if (path === undefined) return undefined;
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  function get(vm: Pick<DesiredVm, 'profileId' | 'wrappedDataKeyDigest'>): string | undefined {
    if (vm.wrappedDataKeyDigest === undefined) return undefined;
    const wrapped = read(vm.profileId);
    if (wrapped === undefined) return undefined;
    return wrappedKeyDigest(wrapped) === vm.wrappedDataKeyDigest ? wrapped : undefined;
  }

  async function destroy(profileId: string): Promise<boolean> {
    const path = pathOf(profileId);
    if (path === undefined) return false;
    let handle;
    try {
      handle = await open(path, 'r+');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return false;
      throw err;
    }
    try {
      // Overwritten before the unlink, so the key's bytes do not linger in freed blocks (on a
      // filesystem that writes in place; SSDs and copy-on-write filesystems may keep old blocks,
      // which is why the key is wrapped to a TPM-sealed key in the first place).
      const { size } = await handle.stat();
      await handle.write(Buffer.alloc(size), 0, size, 0);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rm(path, { force: true });
    await fsyncDir(dir);
    return true;
  }

  return {
    dir,
    async save(keys) {
      const entries = Object.entries(keys);
      if (entries.length === 0) return;
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await chmod(dir, 0o700);
      for (const [profileId, wrapped] of entries) {
        const path = pathOf(profileId);
        if (path === undefined) continue;
        const current = read(profileId);
        if (current === wrapped) continue;
        // A different key (the device enrolled again, say): the old one is destroyed, not left
        // in the blocks a rename frees.
        if (current !== undefined) await destroy(profileId);
        await replaceFile(path, wrapped, { mode: 0o600 });
      }
    },
    get,
    isComplete(state) {
      return state.vms.every(
        (vm) => vm.wrappedDataKeyDigest === undefined || get(vm) !== undefined,
      );
    },
    destroy,
    async destroyAll() {
      let names: string[];
      try {
        names = await readdir(dir);
      } catch (err) {
        if (errnoCode(err) === 'ENOENT') return;
        throw err;
      }
      for (const name of names) {
        if (pathOf(name) !== undefined) await destroy(name);
        else await rm(join(dir, name), { recursive: true, force: true });
      }
    },
  };
}
