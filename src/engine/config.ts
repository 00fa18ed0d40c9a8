import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import {
  configFromVariables,
  numberOrText,
  readConfigFile,
  validateConfig,
} from '../config/index.ts';
import { DEFAULT_ENGINE_DATA_DIR } from './state.ts';

/** The switcher's port on 127.0.0.1 unless configured otherwise. */
export const DEFAULT_SWITCHER_PORT = 7470;

const seconds = (max: number) => z.number().int().min(0).max(max);

/**
 * Engine's configuration: one schema, every key documented, validated at start. Values come
 * from (lowest first) the defaults, a JSON file (`--config`), `BULKHEAD_*` environment variables
 * and command-line flags. Every default Engine uses lives here.
 */
export const EngineConfigSchema = z
  .strictObject({
    /** Directory of Engine's state: identity, desired state, queue, goldens, VMs' disks. */
    dataDir: z.string().min(1).default(DEFAULT_ENGINE_DATA_DIR),
    /** Which hypervisor runs the VMs: `qemu` on a PC, `sim` for fleet simulation only. */
    hypervisor: z.enum(['qemu', 'sim']).default('qemu'),
    /** A kernel to boot VMs with directly (appliance images, the test guest); none by default. */
    kernel: z.string().min(1).optional(),
    /** The initramfs for `kernel`. */
    initrd: z.string().min(1).optional(),
    /** The kernel command line for `kernel`. */
    cmdline: z.string().optional(),
    /** Download cap for images in bytes per second; none when absent. */
    bandwidthBytesPerSec: z
      .number()
      .int()
      .min(1024)
      .max(2 ** 40)
      .optional(),
    /**
     * How long a staged update waits for its VM to be off or for the user to accept it before it
     * switches anyway, in seconds (0: at once).
     */
    switchDeadlineSeconds: seconds(365 * 86_400).default(0),
    /**
     * Virtual size of a new VM's data volume in bytes (qcow2 takes only what is written). An
     * existing data volume is never resized.
     */
    dataVolumeBytes: z
      .number()
      .int()
      .min(64 * 1024 ** 2)
      .max(2 ** 50)
      .default(1024 ** 3),
    /** How long a VM has to shut down when asked before it is stopped hard, in seconds. */
    stopTimeoutSeconds: seconds(3600).min(1).default(30),
    /**
     * How often Center is asked for news when no push arrives, in seconds. When absent, Engine
     * follows the `pollIntervalSeconds` Center sends in the desired state, else 60 s.
     */
    pollIntervalSeconds: seconds(86_400).min(1).optional(),
    /**
     * How often the reconciler looks again between desired states, in seconds: staged updates
     * waiting for their window and crashed VMs need it.
     */
    reconcileIntervalSeconds: seconds(3600).min(1).default(5),
    /**
     * The host TPM that seals the device's encryption key (docs/keys.md): `auto` uses
     * /dev/tpmrm0 when the PC has one, `off` keeps the key in a file (the weaker fallback), any
     * other value is a tpm2-tools TCTI (`device:/dev/tpm0`, `swtpm:host=127.0.0.1,port=2321`).
     * Read at enrolment (which chooses the protection) and at every start (which unseals).
     */
    tpm: z.string().min(1).max(500).default('auto'),
    /**
     * TCP port of the switcher (the PC user's page: VMs, screens, update prompts, lease), served
     * on 127.0.0.1 only, behind a per-boot secret (`bulkhead engine switcher` prints its URL);
     * 0 takes any free port.
     */
    switcherPort: z.number().int().min(0).max(65_535).default(DEFAULT_SWITCHER_PORT),
    /** Log level of the structured (pino) log, written to stderr. */
    logLevel: z
      .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
      .default('info'),
  })
  .superRefine((c, ctx) => {
    for (const key of ['initrd', 'cmdline'] as const) {
      if (c[key] !== undefined && c.kernel === undefined) {
        ctx.addIssue({ code: 'custom', path: [key], message: 'needs a kernel' });
      }
    }
  });

export type EngineConfigInput = z.input<typeof EngineConfigSchema>;

/** The validated, resolved, frozen configuration. */
export type EngineConfig = Readonly<z.infer<typeof EngineConfigSchema>>;

/** Environment variables Engine reads, and the key each sets. */
const ENV: Record<string, keyof EngineConfigInput> = {
  BULKHEAD_ENGINE_DATA: 'dataDir',
  BULKHEAD_HYPERVISOR: 'hypervisor',
  BULKHEAD_KERNEL: 'kernel',
  BULKHEAD_INITRD: 'initrd',
  BULKHEAD_CMDLINE: 'cmdline',
  BULKHEAD_BANDWIDTH: 'bandwidthBytesPerSec',
  BULKHEAD_DATA_VOLUME_BYTES: 'dataVolumeBytes',
  BULKHEAD_SWITCH_DEADLINE_SECONDS: 'switchDeadlineSeconds',
  BULKHEAD_STOP_TIMEOUT_SECONDS: 'stopTimeoutSeconds',
  BULKHEAD_POLL_INTERVAL_SECONDS: 'pollIntervalSeconds',
  BULKHEAD_RECONCILE_INTERVAL_SECONDS: 'reconcileIntervalSeconds',
  BULKHEAD_LOG_LEVEL: 'logLevel',
  BULKHEAD_TPM: 'tpm',
  BULKHEAD_SWITCHER_PORT: 'switcherPort',
};

const NUMERIC_KEYS: ReadonlySet<keyof EngineConfigInput> = new Set([
  'bandwidthBytesPerSec',
  'dataVolumeBytes',
  'switchDeadlineSeconds',
  'stopTimeoutSeconds',
  'pollIntervalSeconds',
  'reconcileIntervalSeconds',
  'switcherPort',
]);

/** Reads the `--config` file: a JSON object of the schema's keys. */
export function readEngineConfigFile(path: string): Promise<EngineConfigInput> {
  return readConfigFile<EngineConfigInput>(path);
}

/**
 * Turns text (a flag's or a variable's value) into the type its key holds: numbers for the
 * numeric keys (what is not a number stays text, and validation names the key).
 */
export function engineConfigValue(key: keyof EngineConfigInput, text: string): unknown {
  return NUMERIC_KEYS.has(key) ? numberOrText(text) : text;
}

/** Configuration keys given by `BULKHEAD_*` environment variables. */
export function engineConfigFromEnv(env: NodeJS.ProcessEnv): EngineConfigInput {
  return configFromVariables(env, ENV, engineConfigValue) as EngineConfigInput;
}

/**
 * Merges the sources (later wins), validates, resolves the data directory against `cwd` and
 * freezes. Throws ERR_CONFIG_INVALID naming the key and what is wrong with it.
 */
export function resolveEngineConfig(
  sources: EngineConfigInput[],
  cwd = process.cwd(),
): EngineConfig {
  const c = validateConfig(EngineConfigSchema, sources);
  return Object.freeze({
    ...c,
    dataDir: isAbsolute(c.dataDir) ? c.dataDir : resolve(cwd, c.dataDir),
  });
}
