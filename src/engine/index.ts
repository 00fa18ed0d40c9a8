// Engine, the agent on each PC (DESIGN §1, §3): its configuration and composition root,
// identity, contact with Center, the event queue, the sync loop and the state files. The
// hypervisor, volumes and update transaction have their own folders.
export { createEngine, type Engine, type EngineDeps } from './agent.ts';
export {
  CenterClient,
  verifyDesiredState,
  DESIRED_STATE_REFUSALS,
  type CenterClientOptions,
  type DesiredStateAnswer,
  type PushSubscription,
} from './center-client.ts';
export { systemClock, type Clock } from './clock.ts';
export {
  DEFAULT_SWITCHER_PORT,
  EngineConfigSchema,
  engineConfigFromEnv,
  engineConfigValue,
  readEngineConfigFile,
  resolveEngineConfig,
  type EngineConfig,
  type EngineConfigInput,
} from './config.ts';
export { enroll, gatherInventory, loadIdentity, normalizeCenterUrl } from './identity.ts';
export type { EnrollOptions } from './identity.ts';
export {
  choosePersonal,
  KeyFileStore,
  PassphraseKeyStore,
  personalDir,
  personalSource,
  personalSummary,
  readPersonalChoice,
  type PersonalChoice,
  type PersonalKeyStore,
  type PersonalSource,
  type PersonalSummary,
} from './personal.ts';
export { silentLog, type Log } from './log.ts';
export {
  createEngineReconciler,
  startEngineRun,
  type EngineParts,
  type EngineReconciler,
  type EngineReconcilerParts,
  type RunningEngine,
} from './run.ts';
export { EventQueue, PROTECTED_EVENT_TYPES, readQueueDepth, type NewEvent } from './queue.ts';
export * from './state.ts';
export { formatEngineStatus, readEngineStatus, type EngineStatus } from './status.ts';
export { takeScreenshot, type Screenshot } from './screenshot.ts';
export {
  qemuDisplays,
  readSwitcherUrl,
  startSwitcher,
  switcherUrlFile,
  SWITCHER_WEB_DIR,
  type Switcher,
  type SwitcherDeps,
  type SwitcherOptions,
} from './switcher.ts';
export { acceptUpdate } from './update/accept.ts';
export { UPDATE_STATES, type UpdateState } from './update/machine.ts';
export {
  GoldenStore,
  ensureDataVolume,
  volumeLayout,
  type Release,
  type VolumeLayout,
} from './volumes/index.ts';
export {
  createSyncLoop,
  type CommandHandler,
  type CommandOutcome,
  type SyncLoop,
  type SyncLoopDeps,
  type SyncOutcome,
} from './sync.ts';
export { GuestAgent } from './guest-agent.ts';
export { createQemuDriver, type HypervisorDriver } from './hypervisor/index.ts';
