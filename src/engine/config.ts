import { readFile } from 'node:fs/promises';
import { isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { DEFAULT_ENGINE_DATA_DIR } from './state.ts';

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
  BULKHEAD_SWITCH_DEADLINE_SECONDS: 'switchDeadlineSeconds',
  BULKHEAD_STOP_TIMEOUT_SECONDS: 'stopTimeoutSeconds',
  BULKHEAD_POLL_INTERVAL_SECONDS: 'pollIntervalSeconds',
  BULKHEAD_RECONCILE_INTERVAL_SECONDS: 'reconcileIntervalSeconds',
  BULKHEAD_LOG_LEVEL: 'logLevel',
};

const NUMERIC_KEYS: ReadonlySet<keyof EngineConfigInput> = new Set([
  'bandwidthBytesPerSec',
  'switchDeadlineSeconds',
  'stopTimeoutSeconds',
  'pollIntervalSeconds',
  'reconcileIntervalSeconds',
]);

function configError(message: string, hint?: string): BulkheadError {
  return new BulkheadError(ErrorCodes.CONFIG_INVALID, message, hint ? { hint } : {});
}

/** Reads the `--config` file: a JSON object of the schema's keys. */
export async function readEngineConfigFile(path: string): Promise<EngineConfigInput> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw configError(`cannot read the configuration file ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as EngineConfigInput;
  } catch {
    throw configError(`the configuration file ${path} is not valid JSON`);
  }
}

/**
 * Turns text (a flag's or a variable's value) into the type its key holds: numbers for the
 * numeric keys (what is not a number stays text, and validation names the key).
 */
export function engineConfigValue(key: keyof EngineConfigInput, text: string): unknown {
  if (!NUMERIC_KEYS.has(key)) return text;
  const n = Number(text);
  return text.trim() === '' || Number.isNaN(n) ? text : n;
}

/** Configuration keys given by `BULKHEAD_*` environment variables. */
export function engineConfigFromEnv(env: NodeJS.ProcessEnv): EngineConfigInput {
  const out: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    out[key] = engineConfigValue(key, value);
  }
  return out as EngineConfigInput;
}

/**
 * Merges the sources (later wins), validates, resolves the data directory against `cwd` and
 * freezes. Throws ERR_CONFIG_INVALID naming the key and what is wrong with it.
 */
export function resolveEngineConfig(
  sources: EngineConfigInput[],
  cwd = process.cwd(),
): EngineConfig {
  const merged: Record<string, unknown> = {};
  for (const s of sources) {
    for (const [k, v] of Object.entries(s)) if (v !== undefined) merged[k] = v;
  }
  const parsed = EngineConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = issue.path.join('.') || '(root)';
    const known = Object.keys(EngineConfigSchema.shape).join(', ');
    throw configError(
      `configuration key "${key}": ${issue.message}`,
      issue.code === 'unrecognized_keys' ? `known keys: ${known}` : undefined,
    );
  }
  const c = parsed.data;
  return Object.freeze({
    ...c,
    dataDir: isAbsolute(c.dataDir) ? c.dataDir : resolve(cwd, c.dataDir),
  });
}
