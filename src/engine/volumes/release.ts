import { hkdfSync } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { z } from 'zod';
import {
  AppVolumeRefSchema,
  BulkheadError,
  ErrorCodes,
  VolumeRefSchema,
  type DesiredVm,
  type PublicKeyRef,
  type VolumeRef,
} from '../../protocol/index.ts';
import type { KeyRing } from '../device-keys.ts';
import type { GoldenStore } from './goldens.ts';
import { ensureDataVolume, freshOverlay, volumeLayout, type VolumeLayout } from './overlays.ts';

/** The volumes a VM boots: one system volume and its app layers. */
export const ReleaseSchema = z.strictObject({
  system: VolumeRefSchema,
  apps: z.array(AppVolumeRefSchema),
});
export type Release = z.infer<typeof ReleaseSchema>;

/** A release's identity: the versions of all its volumes (a bad one is never tried again). */
export function releaseKey(release: Release): string {
  return [
    release.system.versionId,
    ...release.apps.map((a) => `${a.name}=${a.versionId}`).sort(),
  ].join('+');
}

/** Every volume version of a release, system first. */
export function releaseVolumes(release: Release): VolumeRef[] {
  return [release.system, ...release.apps];
}

/**
 * The data volume's LUKS key, unwrapped in memory from the desired VM's wrapped key; none: not
 * encrypted. Center also sends the key for a VM with a TPM whose policy does not encrypt data:
 * then the volume stays plain (the key is only the TPM's, see `tpmKeyOf`).
 * @throws BulkheadError ERR_TPM_REQUIRED, ERR_DATA_KEY_UNAVAILABLE, ERR_DATA_KEY_UNWRAP.
 */
export function dataKeyOf(vm: DesiredVm | undefined, keys: KeyRing): Buffer | undefined {
  if (vm === undefined) return undefined;
  refuseWithoutTpm(vm, keys);
  return vm.policy.encryptData ? keys.dataKey(vm) : undefined;
}

/**
 * A profile that requires a TPM runs only where Engine seals its keys with one.
 * @throws BulkheadError ERR_TPM_REQUIRED, the reason reported for the VM.
 */
export function refuseWithoutTpm(vm: DesiredVm, keys: KeyRing): void {
  if (!vm.policy.requireTpm || keys.protection === 'tpm') return;
  throw new BulkheadError(
    ErrorCodes.TPM_REQUIRED,
    `VM ${vm.name} requires a TPM and this PC keeps its keys ${keys.protection === 'file' ? 'in a key file (no TPM)' : 'without a device key'}: it does not run here`,
    {
      hint: "run it on a PC with a TPM (Engine's tpm setting auto or a TCTI, then enrol again), or turn requireTpm off in the profile",
    },
  );
}

/**
 * The key the VM's TPM state is encrypted with at rest: derived from its data key (HKDF-SHA256,
 * its own label, so neither key reveals the other).
 * @throws BulkheadError ERR_DATA_KEY_UNAVAILABLE when the desired VM has a TPM but no data key.
 */
export function tpmKeyOf(vm: DesiredVm, keys: KeyRing): Buffer {
  refuseWithoutTpm(vm, keys);
  return Buffer.from(hkdfSync('sha256', keys.dataKey(vm), '', 'bulkhead tpm state v1', 32));
}

/** Where a VM's volumes live and how new ones are made. */
export interface VolumeDeps {
  dataDir: string;
  /** The device's keys: data keys are unwrapped from the desired state only when needed. */
  keys: KeyRing;
  goldens: GoldenStore;
  /** Virtual size of a new VM's data volume. */
  dataVolumeBytes: number;
}

/** Where goldens missing on this PC come from, as the desired state names them. */
export interface GoldenSources {
  mirrors: readonly string[];
  publishers: readonly PublicKeyRef[];
}

/**
 * Puts `release` in place for a stopped VM: a fresh overlay on each golden (fetched first if
 * it is missing, e.g. a previous version that was collected), and the data volume if the VM
 * has none yet. The data volume is never touched otherwise. Idempotent, so a step redone after
 * a crash gives the same disks.
 */
export async function prepareRelease(
  deps: VolumeDeps,
  vm: DesiredVm,
  release: Release,
  sources: GoldenSources,
): Promise<VolumeLayout> {
  const layout = volumeLayout(deps.dataDir, vm.name);
  const { mirrors, publishers } = sources;
  for (const [role, ref] of [
    ['system', release.system] as const,
    ...release.apps.map((a) => [`app:${a.name}`, a] as const),
  ]) {
    const golden = await deps.goldens.ensure(ref, { mirrors, publishers });
    await freshOverlay(golden.golden.path, layout.overlay(role));
  }
  const key = dataKeyOf(vm, deps.keys);
  await ensureDataVolume(layout.data, {
    ...(key ? { key } : {}),
    sizeBytes: deps.dataVolumeBytes,
  });
  await mkdir(layout.runDir, { recursive: true });
  return layout;
}
