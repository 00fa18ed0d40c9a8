import {
  DEFAULT_ENGINE_DATA_DIR,
  DEFAULT_SWITCHER_PORT,
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
  'switcher-port': 'switcherPort',
  'log-level': 'logLevel',
} as const satisfies Record<string, keyof EngineConfigInput>;

/** How long `engine run` waits for a step under way to end after SIGTERM before it exits. */
const STOP_GRACE_MS = 5000;

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
         [--switcher-port PORT] [--config FILE] [--log-level LEVEL]

  Syncs with Center (offline-first), downloads new versions, switches VMs when they are off,
  when the user accepts (\`bulkhead engine accept\`) or at the switch deadline (default: at
  once), checks their health through the guest agent and rolls back by itself.
  DIR defaults to $BULKHEAD_ENGINE_DATA or ${DEFAULT_ENGINE_DATA_DIR}.
  --kernel/--initrd/--cmdline boot VMs' kernels directly (appliance images, the test guest).
  --stop-timeout is how long a VM has to shut down before it is stopped hard (default 30 s).
  --poll-interval sets how often Center is asked for news when no push arrives (default: what
  Center says, else 60 s).
  --switcher-port is the port of the switcher, the page for the person at this PC, on
  127.0.0.1 only (default ${DEFAULT_SWITCHER_PORT}; 0 takes a free one): \`bulkhead engine switcher\`
  prints the URL to open, with this boot's secret.
  Settings may also come from BULKHEAD_* environment variables or a JSON --config file.
  --hypervisor sim is for fleet simulation only. Stops on SIGTERM or SIGINT within seconds
  (at once on a second one); VMs keep running. One engine run per data directory.`,
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
    const signal = await new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGTERM', resolve);
      process.once('SIGINT', resolve);
    });
    running.log.info({ signal }, 'engine stopping; VMs keep running');
    // A second signal means now. Exiting in the middle of a step is safe: every update step
    // is persisted before it runs and is redone at the next start (update/machine.ts).
    const again = () => {
      running.log.warn({}, 'engine stopped at once on a second signal; VMs keep running');
      process.exit(1);
    };
    process.once('SIGTERM', again);
    process.once('SIGINT', again);
    const stopped = await Promise.race([
      running.stop().then(() => true),
      new Promise<false>((resolve) => setTimeout(resolve, STOP_GRACE_MS, false).unref()),
    ]);
    if (!stopped) {
      running.log.warn(
        { graceSeconds: STOP_GRACE_MS / 1000 },
        'engine stopping: a step under way did not end in time; it resumes at the next start',
      );
    }
    // Whatever is still open (a connection to a running VM's QMP, a step that did not end)
    // must not keep the process: systemd waits for it to exit.
    setTimeout(() => process.exit(process.exitCode ?? 0), 1000).unref();
    return { stopped: true };
  },
};
