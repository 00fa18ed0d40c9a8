import assert from 'node:assert/strict';
import { access, constants } from 'node:fs/promises';
import {
  buildGuest,
  buildTestVolumes,
  type GuestArtifacts,
  type TestVolumes,
} from '../../guest/build.ts';
import { GuestAgent, type HypervisorDriver } from '../../src/engine/index.ts';
import { PATIENCE_MS } from './wait.ts';

export type { GuestArtifacts, TestVolumes };

/**
 * The test guest's kernel and initramfs and the raw system/app volume images, built once into
 * guest/.cache (later calls, from any test file, reuse them). Fails naming the Debian package
 * when one the build needs is missing.
 */
export async function testGuest(): Promise<{ guest: GuestArtifacts; volumes: TestVolumes }> {
  const [guest, volumes] = await Promise.all([buildGuest(), buildTestVolumes()]);
  return { guest, volumes };
}

/** Fails naming the Debian package when QEMU or qemu-img is not installed. */
export async function requireQemu(): Promise<void> {
  for (const [path, pkg] of [
    ['/usr/bin/qemu-system-x86_64', 'qemu-system-x86'],
    ['/usr/bin/qemu-img', 'qemu-utils'],
  ] as const) {
    try {
      await access(path, constants.X_OK);
    } catch {
      throw new Error(
        `${path} was not found: install the Debian package ${pkg} (apt-get install ${pkg})`,
      );
    }
  }
}

/**
 * Runs `argv` in the running VM `name` (attached from `runDir`) through its guest agent,
 * waiting as long as a guest on a busy machine needs; stdout as text.
 */
export async function runInGuest(
  driver: HypervisorDriver,
  name: string,
  runDir: string,
  argv: string[],
): Promise<{ exitCode: number; stdout: string }> {
  await driver.attach(name, runDir);
  const status = await driver.status(name);
  assert.equal(status.state, 'running', 'the VM runs');
  const agent = await GuestAgent.waitUntilResponsive(status.guestAgentSocket!, PATIENCE_MS);
  try {
    const r = await agent.exec(argv, PATIENCE_MS);
    return { exitCode: r.exitCode, stdout: r.stdout.toString() };
  } finally {
    agent.close();
  }
}
