import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { exists } from '../../src/durable/index.ts';
import { tempDir, type Cleanups } from './fixtures.ts';
import { waitFor } from './wait.ts';

/** A host TPM for tests: a real TPM 2.0 emulator (swtpm) on TCP, as tpm2-tools reaches it. */
export interface TestTpm {
  /** The tpm2-tools TCTI (`swtpm:host=127.0.0.1,port=N`), as Engine's `tpm` setting takes it. */
  tcti: string;
  /** Where its state (its seeds) lives. */
  stateDir: string;
  process: ChildProcess;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts `swtpm socket --tpm2` on two TCP ports (commands on a free one, control on the next), already started up,
 * and stops it when the test ends. `stateDir` reuses a TPM's state (the same seeds: blobs it
 * sealed open again). A missing swtpm fails naming the Debian package.
 */
export async function startTestTpm(t: Cleanups, stateDir?: string): Promise<TestTpm> {
  const dir = stateDir ?? join(await tempDir(t, 'bulkhead-swtpm-'), 'state');
  await mkdir(dir, { recursive: true });
  for (let attempt = 0; ; attempt += 1) {
    // The swtpm TCTI reaches the control channel on the next port up.
    const port = await freePort();
    const ctrl = port + 1;
    const pidFile = join(dir, `swtpm-${port}.pid`);
    const child = spawn(
      'swtpm',
      [
        'socket',
        '--tpm2',
        '--tpmstate',
        `dir=${dir}`,
        '--server',
        `type=tcp,port=${port},bindaddr=127.0.0.1`,
        '--ctrl',
        `type=tcp,port=${ctrl},bindaddr=127.0.0.1`,
        '--flags',
        'not-need-init,startup-clear',
        '--pid',
        `file=${pidFile}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
    let exit: { code: number | null; error?: NodeJS.ErrnoException } | undefined;
    child.on('error', (error: NodeJS.ErrnoException) => (exit = { code: null, error }));
    child.on('exit', (code) => (exit ??= { code }));
    await waitFor('swtpm to listen', async () => exit !== undefined || (await exists(pidFile)), {
      timeoutMs: 30_000,
    });
    if (exit?.error?.code === 'ENOENT') {
      throw new Error(
        'swtpm was not found: install the Debian package swtpm (apt-get install swtpm)',
      );
    }
    if (exit === undefined) {
      t.after(async () => {
        if (child.exitCode !== null) return;
        const gone = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await gone;
      });
      return { tcti: `swtpm:host=127.0.0.1,port=${port}`, stateDir: dir, process: child };
    }
    // A port taken between the probe and swtpm's bind: try others.
    if (attempt >= 5) throw new Error(`swtpm did not start: ${stderr.trim()}`);
  }
}
