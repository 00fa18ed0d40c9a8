import { spawn } from 'node:child_process';
import { access, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';

/**
 * The host TPM, driven with tpm2-tools (docs/keys.md, "Sealing"). A secret is sealed as a
 * keyed-hash data object under the owner hierarchy's primary storage key: `tpm2_createprimary`
 * makes the primary again from the TPM's owner seed each time (same template, same key, so it
 * is never stored), `tpm2_create` seals the secret read from stdin, and only the two blobs it
 * returns (`sealed.pub`, `sealed.priv`, encrypted by the TPM) are kept. `tpm2_load` +
 * `tpm2_unseal` give the secret back on stdout. The secret is never in argv, in the
 * environment or in a file; transient objects are flushed after use. No persistent object is
 * made (nothing for `tpm2_evictcontrol` to remove at a kill): deleting the blobs is the erase.
 */

/** Engine's `tpm` setting: `auto` (the PC's TPM when there is one), `off`, or a TCTI. */
export type TpmSetting = string;

export const DEFAULT_TPM_DEVICE = '/dev/tpmrm0';

/** The TCTI to use, or null for no TPM. */
export async function resolveTcti(
  setting: TpmSetting,
  device = DEFAULT_TPM_DEVICE,
): Promise<string | null> {
  if (setting === 'off') return null;
  if (setting !== 'auto') return setting;
  return access(device).then(
    () => `device:${device}`,
    () => null,
  );
}

/** Runs one tpm2-tools command against `tcti`; stdin is written, stdout returned. */
function tpm2(tcti: string, command: string, args: string[], stdin?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { ...process.env, TPM2TOOLS_TCTI: tcti },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) =>
      reject(
        e.code === 'ENOENT'
          ? new BulkheadError(ErrorCodes.TOOL_MISSING, `${command} was not found`, {
              hint: 'install the Debian package tpm2-tools',
            })
          : e,
      ),
    );
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else {
        reject(
          new BulkheadError(
            ErrorCodes.TPM,
            `${command} failed against the TPM (${tcti}): ${Buffer.concat(err).toString().trim().slice(0, 500)}`,
            { hint: "check Engine's tpm setting; with tpm: off Engine keeps a key file instead" },
          ),
        );
      }
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(stdin ?? Buffer.alloc(0));
  });
}

/** A scratch directory for the TPM's context files (not secrets: only this TPM loads them). */
async function withWorkDir<T>(dir: string, body: (work: string) => Promise<T>): Promise<T> {
  const work = await mkdtemp(join(dir, '.tpm-'));
  try {
    return await body(work);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

async function createPrimary(tcti: string, ctx: string): Promise<void> {
  await tpm2(tcti, 'tpm2_createprimary', ['-Q', '-C', 'o', '-g', 'sha256', '-G', 'ecc', '-c', ctx]);
  await flushTransient(tcti);
}

/**
 * Flushes the transient objects the tools left loaded. Behind the kernel's resource manager
 * (/dev/tpmrm0) a connection sees only its own, which go at its close anyway; on a TPM reached
 * directly (a TCP simulator, /dev/tpm0) they would fill its few object slots otherwise. The
 * saved context files stay loadable after this.
 */
async function flushTransient(tcti: string): Promise<void> {
  await tpm2(tcti, 'tpm2_flushcontext', ['-t']).catch(() => undefined);
}

/** The blobs a sealed secret is kept as, in `dir`. */
export function sealedBlobs(dir: string): { pub: string; priv: string } {
  return { pub: join(dir, 'sealed.pub'), priv: join(dir, 'sealed.priv') };
}

/**
 * Seals `secret` (at most 128 bytes) with the TPM; writes `sealed.pub` and `sealed.priv` to
 * `out` (paths from `sealedBlobs`).
 * @throws BulkheadError ERR_TPM when the TPM refuses, ERR_TOOL_MISSING without tpm2-tools.
 */
export async function tpmSeal(
  tcti: string,
  secret: Buffer,
  workDir: string,
  out: { pub: string; priv: string },
): Promise<void> {
  await withWorkDir(workDir, async (work) => {
    const primary = join(work, 'primary.ctx');
    await createPrimary(tcti, primary);
    try {
      await tpm2(
        tcti,
        'tpm2_create',
        ['-Q', '-C', primary, '-i', '-', '-u', out.pub, '-r', out.priv],
        secret,
      );
    } finally {
      await flushTransient(tcti);
    }
  });
}

/**
 * The secret sealed in `blobs`, from the TPM that sealed it.
 * @throws BulkheadError ERR_TPM when this TPM cannot load or unseal them.
 */
export async function tpmUnseal(
  tcti: string,
  workDir: string,
  blobs: { pub: string; priv: string },
): Promise<Buffer> {
  return withWorkDir(workDir, async (work) => {
    const primary = join(work, 'primary.ctx');
    const sealed = join(work, 'sealed.ctx');
    await createPrimary(tcti, primary);
    try {
      await tpm2(tcti, 'tpm2_load', [
        '-Q',
        '-C',
        primary,
        '-u',
        blobs.pub,
        '-r',
        blobs.priv,
        '-c',
        sealed,
      ]);
      await flushTransient(tcti);
      return await tpm2(tcti, 'tpm2_unseal', ['-c', sealed]);
    } finally {
      await flushTransient(tcti);
    }
  });
}
