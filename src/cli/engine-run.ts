import {
  DEFAULT_ENGINE_DATA_DIR,
  engineConfigFromEnv,
  engineConfigValue,
  readEngineConfigFile,
  resolveEngineConfig,
  startEngineRun,
  type EngineConfigInput,
} from '../engine/index.ts';
import { optionalString, type Command, type Invocation } from './command.ts';

/** Each flag and the configuration key it sets. */
const FLAGS = {
  data: 'dataDir',
  hypervisor: 'hypervisor',
  kernel: 'kernel',
  initrd: 'initrd',
  cmdline: 'cmdline',
  bandwidth: 'bandwidthBytesPerSec',
  'switch-deadline': 'switchDeadlineSeconds',
  'stop-timeout': 'stopTimeoutSeconds',
  'poll-interval': 'pollIntervalSeconds',
  'log-level': 'logLevel',
} as const satisfies Record<string, keyof EngineConfigInput>;

function configFromFlags(inv: Invocation): EngineConfigInput {
  const out: Record<string, unknown> = {};
  for (const [flag, key] of Object.entries(FLAGS)) {
    const value = optionalString(inv, flag);
    if (value !== undefined) out[key] = engineConfigValue(key, value);
  }
  return out as EngineConfigInput;
}

export const engineRunCommand: Command = {
  name: 'engine run',
  summary: "Run Engine: keep this PC's VMs at the desired state, update and roll back.",
  usage: `Usage: bulkhead engine run [--data DIR] [--hypervisor qemu|sim]
         [--kernel PATH [--initrd PATH] [--cmdline TEXT]] [--bandwidth BYTES_PER_SEC]
         [--switch-deadline SECONDS] [--stop-timeout SECONDS] [--poll-interval SECONDS]
         [--config FILE] [--log-level LEVEL]

  Syncs with Center (offline-first), downloads new versions, switches VMs when they are off,
  when the user accepts (\`bulkhead engine accept\`) or at the switch deadline (default: at
  once), checks their health through the guest agent and rolls back by itself.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.
  --kernel/--initrd/--cmdline boot VMs' kernels directly (appliance images, the test guest).
  --stop-timeout is how long a VM has to shut down before it is stopped hard (default 30 s).
  --poll-interval sets how often Center is asked for news when no push arrives (default: what
  Center says, else 60 s).
  Settings may also come from BULKHEAD_* environment variables or a JSON --config file.
  --hypervisor sim is for fleet simulation only. Stops on SIGTERM or SIGINT; VMs keep running.`,
  options: {
    ...Object.fromEntries(Object.keys(FLAGS).map((flag) => [flag, { type: 'string' as const }])),
    config: { type: 'string' },
  },
  async run(inv) {
    const file = optionalString(inv, 'config');
    const config = resolveEngineConfig([
      file ? await readEngineConfigFile(file) : {},
      engineConfigFromEnv(process.env),
      configFromFlags(inv),
    ]);
    const running = await startEngineRun(config);
    running.log.info({ dataDir: config.dataDir, hypervisor: config.hypervisor }, 'engine running');
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    });
    running.log.info({}, 'engine stopping; VMs keep running');
    await running.stop();
    return { stopped: true };
  },
};
