import { pino } from 'pino';
import { DEFAULT_ENGINE_DATA_DIR } from '../engine/index.ts';
import { GuestAgent } from '../engine/guest-agent.ts';
import { createQemuDriver, createSimDriver } from '../engine/hypervisor/index.ts';
import type { HypervisorDriver, VmStatus } from '../engine/hypervisor/types.ts';
import { crashAtFromEnv, startEngineRun } from '../engine/run.ts';
import type { GuestAgentLink } from '../engine/update/health.ts';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { integerOption, optionalString, type Command } from './command.ts';

/** The simulated hypervisor's guest agent: answers while the VM runs, every command exits 0. */
function simAgent(driver: HypervisorDriver, name: string): GuestAgentLink {
  return {
    ping: async () => {
      if ((await driver.status(name)).state !== 'running') throw new Error('not running');
    },
    exec: async () => ({ exitCode: 0 }),
    close: () => {},
  };
}

export const engineRunCommand: Command = {
  name: 'engine run',
  summary: "Run Engine: keep this PC's VMs at the desired state, update and roll back.",
  usage: `Usage: bulkhead engine run [--data DIR] [--hypervisor qemu|sim]
         [--kernel PATH [--initrd PATH] [--cmdline TEXT]] [--bandwidth BYTES_PER_SEC]
         [--switch-deadline SECONDS] [--poll SECONDS] [--log-level LEVEL]

  Syncs with Center (offline-first), downloads new versions, switches VMs when they are off,
  when the user accepts (\`bulkhead engine accept\`) or at the switch deadline (default: at
  once), checks their health through the guest agent and rolls back by itself.
  --kernel/--initrd/--cmdline boot VMs' kernels directly (appliance images, the test guest).
  --poll sets how often Center is asked for news when no push arrives (default 60 s).
  --hypervisor sim is for fleet simulation only. Stops on SIGTERM or SIGINT; VMs keep running.`,
  options: {
    data: { type: 'string' },
    hypervisor: { type: 'string' },
    kernel: { type: 'string' },
    initrd: { type: 'string' },
    cmdline: { type: 'string' },
    bandwidth: { type: 'string' },
    'switch-deadline': { type: 'string' },
    poll: { type: 'string' },
    'log-level': { type: 'string' },
  },
  async run(inv) {
    const dataDir =
      optionalString(inv, 'data') ?? process.env.BULKHEAD_ENGINE_DATA ?? DEFAULT_ENGINE_DATA_DIR;
    const kind = optionalString(inv, 'hypervisor') ?? 'qemu';
    if (kind !== 'qemu' && kind !== 'sim') {
      throw new BulkheadError(ErrorCodes.USAGE, `--hypervisor must be qemu or sim, not "${kind}"`);
    }
    const kernelPath = optionalString(inv, 'kernel');
    const initrd = optionalString(inv, 'initrd');
    const cmdline = optionalString(inv, 'cmdline');
    if (!kernelPath && (initrd || cmdline)) {
      throw new BulkheadError(ErrorCodes.USAGE, '--initrd and --cmdline need --kernel');
    }
    const bandwidth = integerOption(inv, 'bandwidth', 1024, 2 ** 40);
    const deadline = integerOption(inv, 'switch-deadline', 0, 365 * 86_400);
    const poll = integerOption(inv, 'poll', 1, 86_400);
    const log = pino(
      { level: optionalString(inv, 'log-level') ?? 'info', base: { component: 'engine' } },
      pino.destination(2),
    );
    const hypervisor = kind === 'sim' ? createSimDriver() : createQemuDriver();
    const connectAgent = (status: VmStatus): Promise<GuestAgentLink> =>
      kind === 'sim'
        ? Promise.resolve(simAgent(hypervisor, status.name))
        : GuestAgent.connect(status.guestAgentSocket ?? '', { timeoutMs: 2000 });
    const crashAt = crashAtFromEnv();
    const running = await startEngineRun({
      dataDir,
      hypervisor,
      connectAgent,
      log,
      ...(kernelPath
        ? {
            kernel: {
              path: kernelPath,
              ...(initrd ? { initrd } : {}),
              ...(cmdline ? { cmdline } : {}),
            },
          }
        : {}),
      ...(bandwidth ? { bandwidthBytesPerSec: bandwidth } : {}),
      ...(deadline !== undefined ? { switchDeadlineMs: deadline * 1000 } : {}),
      ...(crashAt ? { crashAt } : {}),
      ...(poll ? { syncIntervalMs: poll * 1000 } : {}),
    });
    log.info({ dataDir, hypervisor: kind }, 'engine running');
    await new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    });
    log.info({}, 'engine stopping; VMs keep running');
    await running.stop();
    return { stopped: true };
  },
};
