import type { HealthCheck } from '../../protocol/index.ts';
import type { Clock } from '../clock.ts';

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
}

/**
 * Health as DESIGN §3 defines it: the guest agent answers within `timeoutSeconds` of the VM's
 * start, and the optional command, run through the agent, exits 0 within the same time.
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
        // A ping that timed out already waited; only a quick refusal needs a pause.
        const pause = retryMs - (clock.now() - tried);
        if (pause > 0)
          await clock.sleep(Math.min(pause, Math.max(0, deadline - clock.now())), options.signal);
      }
    }
    if (!link) {
      return {
        healthy: false,
        reason: `guest agent did not answer within ${check.timeoutSeconds} s`,
      };
    }
    if (!check.command) return { healthy: true };
    const left = Math.max(1000, deadline - clock.now());
    let exitCode: number;
    try {
      ({ exitCode } = await link.exec(check.command, left));
    } catch (err) {
      return {
        healthy: false,
        reason: `health check command did not finish within ${check.timeoutSeconds} s of boot (${err instanceof Error ? err.message : String(err)})`,
      };
    }
    return exitCode === 0
      ? { healthy: true }
      : { healthy: false, reason: `health check command exited ${exitCode}` };
  } finally {
    await link?.close();
  }
}
