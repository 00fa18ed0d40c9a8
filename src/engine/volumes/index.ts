/*
 * A VM's disks (DESIGN §2): the golden store, the per-VM layout, fresh overlays, the data
 * volume, and preparing a whole release for a stopped VM. The update transaction and the
 * reconciler call this surface; nothing here knows about updates.
 */
export {
  GoldenStore,
  trustedKeys,
  type EnsureGoldenOptions,
  type EnsureGoldenResult,
  type Golden,
  type GoldenMeta,
} from './goldens.ts';
export {
  ensureDataVolume,
  freshOverlay,
  overlayBacking,
  vmDisks,
  volumeLayout,
  type DataVolumeOptions,
  type VolumeLayout,
} from './overlays.ts';
export {
  dataKeyOf,
  tpmKeyOf,
  prepareRelease,
  ReleaseSchema,
  releaseKey,
  releaseVolumes,
  type GoldenSources,
  type Release,
  type VolumeDeps,
} from './release.ts';
