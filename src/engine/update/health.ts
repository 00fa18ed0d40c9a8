import type { HealthCheck } from '../../protocol/index.ts';
import type { Clock } from '../clock.ts';
import type { BootVerdict } from '../hypervisor/index.ts';
import { BLANK_VARIANCE } from '../hypervisor/screen.ts';

/**
 * What a health check needs of the guest agent (qemu-ga): a connection that answers
 * `guest-sync`, and `guest-exec` with the exit code. The QEMU driver's guest-agent client
 * provides it; the check itself does not care how.
 */
export interface GuestAgentLink {
  /** Resolves once the agent answered `guest-sync`; rejects after `timeoutMs` without one. */
  ping(timeoutMs: number): Promise<void>;
  /** Runs argv in the guest (no shell) and resolves with its exit code. */
  exec(argv: readonly string[], timeoutMs: number): Promise<{ exitCode: number }>;
  close(): Promise<void> | void;
}

export type HealthResult = { healthy: true } | { healthy: false; reason: string };

export interface CheckHealthOptions {
  /** Opens a link to the VM's guest agent; may reject while the VM is still coming up. */
  connect: () => Promise<GuestAgentLink>;
  check: HealthCheck;
  /** When the VM was started: the timeout counts from there. */
  startedAt: number;
  clock: Clock;
  signal?: AbortSignal;
  /** Pause between attempts to reach the agent (default 1 s). */
  retryMs?: number;
  /**
   * How much the VM's screen shows now: the brightness variance of a screenshot (0 for one
   * colour). Needed when `check.screen` is on; a hypervisor without screens leaves it out.
   */
  screenVariance?: () => Promise<number>;
  /** At or below this variance the screen counts as blank (default BLANK_VARIANCE). */
  blankVariance?: number;
  /**
   * The firmware's verdict on the VM's boot (firmware-log.ts), asked while the agent is silent:
   * a final one ends the check at once with its reason, and any one is added to the reason of
   * an agent that never answered. A hypervisor without firmware logs leaves it out.
   */
  bootVerdict?: () => Promise<BootVerdict | null>;
}

/**
 * Health as DESIGN §3 defines it: the guest agent answers within `timeoutSeconds` of the VM's
 * start, the optional command, run through the agent, exits 0 within the same time, and with
 * `check.screen` the screen is not blank by then.
 * Never throws for an unhealthy guest: the reason says what failed.
 */
export async function checkHealth(options: CheckHealthOptions): Promise<HealthResult> {
  const { check, clock } = options;
  const deadline = options.startedAt + check.timeoutSeconds * 1000;
  const retryMs = options.retryMs ?? 1000;
  let link: GuestAgentLink | null = null;
  try {
    while (!link) {
      const left = deadline - clock.now();
      if (left <= 0 || options.signal?.aborted) break;
      let candidate: GuestAgentLink | null = null;
      const tried = clock.now();
      try {
        candidate = await options.connect();
        await candidate.ping(Math.min(left, 3000));
        link = candidate;
      } catch {
        await candidate?.close();
        // A firmware that gave up will not start the guest however long the check waits.
        const verdict = await verdictOf(options);
        if (verdict?.isFinal) return { healthy: false, reason: verdict.reason };
        // A ping that timed out already waited; only a quick refusal needs a pause.
        const pause = retryMs - (clock.now() - tried);
        if (pause > 0)
          await clock.sleep(Math.min(pause, Math.max(0, deadline - clock.now())), options.signal);
      }
    }
    if (!link) {
      const verdict = await verdictOf(options);
      return {
        healthy: false,
        reason:
          `guest agent did not answer within ${check.timeoutSeconds} s` +
          (verdict ? `; ${verdict.reason}` : ''),
      };
    }
    if (check.command) {
      const failed = await runCommand(link, check, check.command, deadline, clock);
      if (failed) return failed;
    }
    return check.screen ? await checkScreen(options, deadline) : { healthy: true };
  } finally {
    await link?.close();
  }
}

/** The firmware's verdict, or null without one (a log that cannot be read says nothing). */
async function verdictOf(options: CheckHealthOptions): Promise<BootVerdict | null> {
  try {
    return (await options.bootVerdict?.()) ?? null;
  } catch {
    return null;
  }
}

/** Runs the check's command; null when it exited 0, else why it failed. */
async function runCommand(
  link: GuestAgentLink,
  check: HealthCheck,
  command: readonly string[],
  deadline: number,
  clock: Clock,
): Promise<HealthResult | null> {
  const left = Math.max(1000, deadline - clock.now());
  let exitCode: number;
  try {
    ({ exitCode } = await link.exec(command, left));
  } catch (err) {
    return {
      healthy: false,
      reason: `health check command did not finish within ${check.timeoutSeconds} s of boot (${err instanceof Error ? err.message : String(err)})`,
    };
  }
  return exitCode === 0
    ? null
    : { healthy: false, reason: `health check command exited ${exitCode}` };
}

/**
 * Looks at the screen until it shows something, up to the deadline (a guest may answer its
 * agent before it has drawn anything); at least once, however late the agent answered.
 */
async function checkScreen(options: CheckHealthOptions, deadline: number): Promise<HealthResult> {
  const { clock, check } = options;
  if (!options.screenVariance) {
    return { healthy: false, reason: 'the health check looks at the screen, but this VM has none' };
  }
  const blank = options.blankVariance ?? BLANK_VARIANCE;
  let last = 'no screenshot';
  for (;;) {
    try {
      const variance = await options.screenVariance();
      if (variance > blank) return { healthy: true };
      last = `pixel variance ${variance.toFixed(2)}, at most ${blank}`;
    } catch (err) {
      last = `no screenshot: ${err instanceof Error ? err.message : String(err)}`;
    }
    const left = deadline - clock.now();
    if (left <= 0 || options.signal?.aborted) break;
    await clock.sleep(Math.min(options.retryMs ?? 1000, left), options.signal);
  }
  return {
    healthy: false,
    reason: `the screen was still blank ${check.timeoutSeconds} s after boot (${last})`,
  };
}
