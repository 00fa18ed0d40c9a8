// guest/README.md's build command, run exactly as written, with the machine's own `node` first
// on PATH (Debian 12's is Node 20, which cannot run TypeScript): it must still build the guest.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { PATIENCE_MS } from '../support/wait.ts';

const exec = promisify(execFile);
const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The first command of the README's first `sh` block, without its comment. */
async function readmeCommand(): Promise<string> {
  const readme = await readFile(new URL('../../guest/README.md', import.meta.url), 'utf8');
  const block = /```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(block, 'guest/README.md has a sh block');
  return block.split('\n')[0]!.replace(/#.*$/, '').trim();
}

test("guest/README.md's build command works with the system Node first on PATH", async () => {
  const command = await readmeCommand();
  assert.equal(command, 'npm run -s guest');
  // The machine's node and npm, not the pinned ones this test runs on.
  const env = {
    ...process.env,
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  };
  const { stdout: version } = await exec('node', ['--version'], { env });
  const { stdout, stderr } = await exec('sh', ['-c', command], {
    cwd: ROOT,
    env,
    timeout: PATIENCE_MS,
    maxBuffer: 1024 * 1024,
  }).catch((err: { stdout?: string; stderr?: string; message: string }) => {
    throw new Error(
      `${command} failed with system node ${version.trim()}: ${err.stderr ?? err.message}`,
    );
  });
  const built = JSON.parse(stdout) as {
    kernel: string;
    initrd: string;
    volumes: { system: { v1: string } };
  };
  for (const file of [built.kernel, built.initrd, built.volumes.system.v1]) {
    await access(file);
  }
  assert.equal(stderr, '');
});
