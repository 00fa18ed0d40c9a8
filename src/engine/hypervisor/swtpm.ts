import { spawn } from 'node:child_process';
import { closeSync, constants, openSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BulkheadError, ErrorCodes, errnoCode } from '../../protocol/index.ts';
import { isAlive } from './alive.ts';
import { buildSwtpmArgs, ovmfFiles, type RunFiles } from './qemu-args.ts';
import type { VmMachine, VmSpec } from './types.ts';

/*
 * The per-VM pieces of firmware and TPM that live outside QEMU: the UEFI variable store, made
 * once from OVMF's template and kept with the VM's persistent state, and the VM's swtpm, a
 * detached process (like QEMU, it outlives Engine) started before QEMU and stopped after it.
 */

/** Makes the VM's UEFI variable store from OVMF's template unless it exists; never replaces it. */
export async function ensureVarsStore(machine: VmMachine): Promise<void> {
  if (machine.firmware !== 'uefi' || !machine.varsPath) return;
  try {
    await stat(machine.varsPath);
    return;
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
  const { varsTemplate } = ovmfFiles(machine.secureBoot);
  await mkdir(dirname(machine.varsPath), { recursive: true, mode: 0o700 });
  const tmp = `${machine.varsPath}.tmp`;
  try {
    await copyFile(varsTemplate, tmp, constants.COPYFILE_FICLONE);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      throw new BulkheadError(ErrorCodes.TOOL_MISSING, `${varsTemplate} was not found`, {
        hint: 'install the Debian package ovmf',
        cause: err,
      });
    }
    throw err;
  }
  await rename(tmp, machine.varsPath);
}

/**
 * Starts the VM's swtpm and resolves once its control socket exists. The state key goes
 * through a pipe on fd 3; it is never on a command line, in the environment or in a file.
 * @throws BulkheadError TOOL_MISSING without swtpm, INTERNAL when swtpm does not come up.
 */
export async function startSwtpm(spec: VmSpec, files: RunFiles, binary = 'swtpm'): Promise<void> {
  const tpm = spec.machine?.tpm;
  if (!tpm) return;
  await stopSwtpm(files);
  await mkdir(tpm.stateDir, { recursive: true, mode: 0o700 });
  await rm(files.tpmSocket, { force: true });
  const log = openSync(files.log, 'a', 0o600);
  let spawnError: Error | undefined;
  let exited = false;
  try {
    const child = spawn(binary, buildSwtpmArgs(spec), {
      detached: true,
      stdio: ['ignore', log, log, 'pipe'],
      cwd: spec.runDir,
    });
    child.on('error', (err) => (spawnError = err));
    child.on('exit', () => (exited = true));
    const keyPipe = child.stdio[3] as NodeJS.WritableStream | null;
    keyPipe?.on('error', () => {});
    keyPipe?.end(tpm.key);
    child.unref();
  } finally {
    closeSync(log);
  }
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (spawnError && errnoCode(spawnError) === 'ENOENT') {
      throw new BulkheadError(ErrorCodes.TOOL_MISSING, `${binary} was not found`, {
        hint: 'install the Debian package swtpm',
      });
    }
    if (await exists(files.tpmSocket)) return;
    if (spawnError || exited || Date.now() > deadline) {
      await stopSwtpm(files);
      throw new BulkheadError(
        ErrorCodes.INTERNAL,
        `swtpm did not start for VM ${spec.name}: ${await tail(files.tpmLog)}`,
        { retryable: true },
      );
    }
    await sleep(20);
  }
}

/** Stops the run directory's swtpm, if one runs (it ends by itself once QEMU lets go). */
export async function stopSwtpm(files: RunFiles): Promise<void> {
  const pid = await swtpmPid(files);
  if (pid !== undefined) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
    for (let i = 0; i < 100 && isAlive(pid); i++) await sleep(20);
    if (isAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  await rm(files.tpmSocket, { force: true });
  await rm(files.tpmPidfile, { force: true });
}

/** The pid of the swtpm serving this run directory, while it runs (pids get reused). */
export async function swtpmPid(files: RunFiles): Promise<number | undefined> {
  try {
    const pid = Number((await readFile(files.tpmPidfile, 'utf8')).trim());
    if (!Number.isInteger(pid) || pid <= 1 || !isAlive(pid)) return undefined;
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes(files.tpmSocket) ? pid : undefined;
  } catch {
    return undefined;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function tail(path: string): Promise<string> {
  try {
    const text = (await readFile(path, 'utf8')).trim();
    return text.split('\n').slice(-3).join(' | ') || 'no message';
  } catch {
    return 'no message';
  }
}
