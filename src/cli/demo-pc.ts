import { spawn, type ChildProcess } from 'node:child_process';
import { access, constants, mkdir, open, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildGuest, GuestBuildError, type GuestArtifacts } from '../../guest/build.ts';
import {
  createQemuDriver,
  enroll,
  loadIdentity,
  readEngineStatus,
  volumeLayout,
} from '../engine/index.ts';
import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  isBulkheadError,
  type ApiClient,
} from '../protocol/index.ts';
import { optionalString, type Command, type CommandContext } from './command.ts';
import { DEMO_IMAGE } from './demo.ts';
import { CONNECTION_USAGE, connect, connectionOptions } from './session.ts';

/*
 * `bulkhead demo pc`: the whole product on one machine, against the Center `npm start` runs.
 * A real Engine, enrolled with a token made through the admin API, runs the demo image in a
 * real VM (the test guest on QEMU), and a rollout moves it from version 1 to version 2; every
 * step is printed as Center and Engine see it. Ctrl-C stops Engine and, for a demo, the VM.
 */

const BIN = fileURLToPath(new URL('../../bin/bulkhead.js', import.meta.url));
/** The group, profile (= VM name) and device name the demo PC uses at Center. */
const GROUP = 'demo';
const PROFILE = 'demo';
const PC_NAME = 'demo-pc';
/** The Debian packages the test guest is built from (guest/README.md). */
const GUEST_PACKAGES = 'linux-image-amd64 busybox-static qemu-guest-agent cpio kmod';
const POLL_MS = 1000;

/** Resolves on the first SIGINT or SIGTERM; `stop()` removes the handlers. */
function stopSignal(): { stopped: Promise<NodeJS.Signals>; done(): void } {
  let handler: (s: NodeJS.Signals) => void = () => {};
  const stopped = new Promise<NodeJS.Signals>((r) => (handler = r));
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
  return {
    stopped,
    done: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}

/** Center as an administrator, or an error saying what `demo pc` needs and how to give it. */
async function adminApi(inv: Parameters<Command['run']>[0]): Promise<ApiClient> {
  const needs =
    'demo pc acts as an administrator of the demo Center (it makes a group, a profile, an ' +
    'enrolment token and a rollout)';
  const hint =
    'log in first: bulkhead login --center http://127.0.0.1:8080 --username admin ' +
    '(the URL `npm start` printed), or give --center URL --token TOKEN';
  try {
    const api = await connect(inv);
    await api.call(endpoints.me);
    return api;
  } catch (err) {
    if (
      isBulkheadError(err) &&
      (err.code === ErrorCodes.USAGE ||
        err.code === ErrorCodes.UNAUTHENTICATED ||
        err.code === ErrorCodes.FORBIDDEN)
    ) {
      throw new BulkheadError(err.code, `${needs}: ${err.message}`, { hint, cause: err });
    }
    throw err;
  }
}

async function requireTools(): Promise<void> {
  try {
    await access('/usr/bin/qemu-system-x86_64', constants.X_OK);
  } catch {
    throw new BulkheadError(
      ErrorCodes.TOOL_MISSING,
      'qemu-system-x86_64 is needed to run the demo PC',
      { hint: 'apt-get install qemu-system-x86 qemu-utils' },
    );
  }
}

async function guest(): Promise<GuestArtifacts> {
  try {
    return await buildGuest();
  } catch (err) {
    if (err instanceof GuestBuildError) {
      throw new BulkheadError(
        err.debianPackage ? ErrorCodes.TOOL_MISSING : ErrorCodes.INTERNAL,
        `cannot build the test guest: ${err.message}`,
        {
          cause: err,
          hint: `the guest needs the Debian packages ${GUEST_PACKAGES} (apt-get install ${GUEST_PACKAGES}, or node scripts/setup.js --test)`,
        },
      );
    }
    throw err;
  }
}

/** The demo image's id and the ids of its versions 1 and 2 at Center. */
async function demoImage(api: ApiClient) {
  const { images } = await api.call(endpoints.listImages);
  const image = images.find((i) => i.name === DEMO_IMAGE);
  if (!image) {
    throw new BulkheadError(ErrorCodes.NOT_FOUND, `Center has no image ${DEMO_IMAGE}`, {
      hint: 'run Center with the demo image: npm start (bulkhead center serve --demo)',
    });
  }
  const detail = await api.call(endpoints.getImage, { params: { id: image.id } });
  const id = (version: string) => {
    const v = detail.versions.find((x) => x.version === version);
    if (!v) {
      throw new BulkheadError(ErrorCodes.NOT_FOUND, `Center has no ${DEMO_IMAGE}@${version}`, {
        hint: 'run Center with the demo image: npm start (bulkhead center serve --demo)',
      });
    }
    return v.id;
  };
  return { id: image.id, v1: id('1'), v2: id('2') };
}

async function ensureGroup(api: ApiClient): Promise<string> {
  const { groups } = await api.call(endpoints.listGroups);
  const found = groups.find((g) => g.name === GROUP);
  if (found) return found.id;
  return (
    await api.call(endpoints.createGroup, {
      body: { name: GROUP, description: 'The PC of `bulkhead demo pc`' },
    })
  ).id;
}

async function ensureProfile(api: ApiClient, imageId: string): Promise<string> {
  const { profiles } = await api.call(endpoints.listProfiles);
  const found = profiles.find((p) => p.name === PROFILE);
  if (found) return found.id;
  const created = await api.call(endpoints.createProfile, {
    body: {
      name: PROFILE,
      description: 'The VM of `bulkhead demo pc`: the demo image on the test guest',
      systemImageId: imageId,
      isolation: { network: 'none' },
      // The test guest answers in seconds with KVM; under TCG on a busy machine it may take
      // minutes, and a broken version fails its check command at once anyway.
      healthCheck: { timeoutSeconds: 300, command: ['/usr/libexec/health-check'] },
      cpus: 1,
      memoryMib: 256,
    },
  });
  return created.id;
}

/**
 * The demo PC's device id: the PC enrolled in `dataDir` when Center still knows it as active,
 * else a new enrolment with a one-use token made for it.
 */
async function ensureEnrolled(
  api: ApiClient,
  dataDir: string,
  groupId: string,
  say: (line: string) => void,
): Promise<string> {
  const existing = await loadIdentity(dataDir).catch(() => undefined);
  if (existing && new URL(existing.identity.centerUrl).origin === new URL(api.baseUrl).origin) {
    const device = await api
      .call(endpoints.getDevice, { params: { id: existing.identity.deviceId } })
      .catch(() => undefined);
    if (device?.state === 'active') {
      say(`Reusing the demo PC enrolled in ${dataDir} (device ${device.name}).`);
      return device.id;
    }
  }
  const { token } = await api.call(endpoints.createEnrolmentToken, {
    body: { groupId, uses: 1, expiresInHours: 1, note: 'bulkhead demo pc' },
  });
  const identity = await enroll({
    centerUrl: api.baseUrl,
    token,
    dataDir,
    name: PC_NAME,
    force: true,
  });
  say(
    `Enrolled the demo PC with ${api.baseUrl} (a one-use token, made just now); data in ${dataDir}.`,
  );
  return identity.deviceId;
}

/** Starts `bulkhead engine run` for the demo PC, its log appended to DIR/engine.log. */
async function startEngine(dataDir: string, g: GuestArtifacts): Promise<ChildProcess> {
  const log = await open(join(dataDir, 'engine.log'), 'a', 0o600);
  try {
    return spawn(
      process.execPath,
      [
        BIN,
        'engine',
        'run',
        '--data',
        dataDir,
        '--kernel',
        g.kernel,
        '--initrd',
        g.initrd,
        '--cmdline',
        g.cmdline,
        '--poll-interval',
        '2',
        '--log-level',
        'info',
      ],
      // A process group of its own: Ctrl-C reaches this command, which stops Engine once.
      { detached: true, stdio: ['ignore', log.fd, log.fd] },
    );
  } finally {
    await log.close();
  }
}

async function stopEngine(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

async function lastLines(path: string, n: number): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trim().split('\n').slice(-n).join('\n');
}

export const demoPcCommand: Command = {
  name: 'demo pc',
  summary:
    'Run a real PC against the demo Center: Engine and a VM of the test guest, then a rollout of the patch.',
  usage: `Usage: bulkhead demo pc [--dir DIR] [--center URL] [--token TOKEN]

  The whole product on this machine, after \`npm start\`: builds the small test guest
  (guest/README.md), enrols a real Engine with Center (data in DIR/demo-pc; default DIR:
  ./data), gives it the profile "${PROFILE}" (the ${DEMO_IMAGE} image, group "${GROUP}"), runs
  \`bulkhead engine run\` (log in DIR/demo-pc/engine.log) and prints what happens: the PC
  appears in Center, its VM boots and is healthy on version 1; then a rollout of
  ${DEMO_IMAGE}@2 to the group updates the VM, which comes up healthy on version 2.
  Run again, it reuses the PC. Ctrl-C stops Engine and, for a demo, the VM too (a real PC's
  VMs keep running when Engine stops).
  Needs QEMU (KVM when it works, else TCG: a few minutes), the Debian packages of the guest
  (${GUEST_PACKAGES}), and an administrator's login.

${CONNECTION_USAGE}`,
  options: { ...connectionOptions, dir: { type: 'string' } },
  async run(inv, ctx: CommandContext) {
    const dataDir = resolve(optionalString(inv, 'dir') ?? 'data', 'demo-pc');
    const say = (line: string) => {
      if (!inv.json) ctx.out(line);
    };
    const api = await adminApi(inv);
    const image = await demoImage(api);
    await requireTools();
    say('Building the test guest (Debian kernel, busybox, qemu-ga; cached in guest/.cache) …');
    const g = await guest();
    const groupId = await ensureGroup(api);
    const profileId = await ensureProfile(api, image.id);
    await mkdir(dataDir, { recursive: true, mode: 0o700 });
    const deviceId = await ensureEnrolled(api, dataDir, groupId, say);
    await api.call(endpoints.updateDevice, {
      params: { id: deviceId },
      body: { groupId, profiles: [profileId] },
    });
    say(`Center gives the PC the profile "${PROFILE}": one VM running ${DEMO_IMAGE}.`);

    const signal = stopSignal();
    const engine = await startEngine(dataDir, g);
    say(`Engine runs (log: ${join(dataDir, 'engine.log')}); Ctrl-C stops it and the VM.`);
    const engineExited = new Promise<number | null>((r) => engine.once('exit', (code) => r(code)));
    const versionName = (id: string | undefined) =>
      id === image.v1 ? 1 : id === image.v2 ? 2 : null;
    const result = {
      deviceId,
      dataDir,
      center: api.baseUrl,
      rollout: null as string | null,
      healthyOn: null as number | null,
      stopped: false,
    };

    let lastSummary = '';
    let online = false;
    let healthy: number | null = null;
    let rolling = false;
    const watch = async (): Promise<void> => {
      for (;;) {
        const status = await readEngineStatus(dataDir).catch(() => undefined);
        const vm = status?.vms.find((v) => v.name === PROFILE);
        if (vm && vm.summary !== lastSummary) {
          lastSummary = vm.summary;
          say(`  Engine: ${vm.summary}`);
        }
        const device = await api
          .call(endpoints.getDevice, { params: { id: deviceId } })
          .catch(() => undefined);
        if (device && !online && status?.connectivity.online) {
          online = true;
          say(
            `  Center: the PC ${device.name} is online, ${device.state}, in group ${device.group.name} with profile ${device.profiles.map((p) => p.name).join(', ')}.`,
          );
        }
        // Healthy on a version: Center has the PC's report of it, and the VM runs it now.
        const reported = (
          device?.currentVersions as Record<string, { system?: string }> | undefined
        )?.[profileId]?.system;
        const current =
          vm?.activity === 'running' && vm.currentVersionId === reported
            ? versionName(reported)
            : null;
        if (current !== null && current !== healthy) {
          healthy = current;
          result.healthyOn = current;
          say(
            `The VM ${PROFILE} is healthy on version ${current} (${DEMO_IMAGE}@${current}), as Center reports.`,
          );
        }
        if (healthy === 1 && !rolling) {
          rolling = true;
          result.rollout = await startRollout(api, image.v2, groupId, say);
        }
        if (healthy === 2) {
          if (!rolling) say(`The PC already runs ${DEMO_IMAGE}@2 (an earlier run rolled it out).`);
          return;
        }
        if (engine.exitCode !== null) return;
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    };

    try {
      const first = await Promise.race([
        watch().then(() => 'watched' as const),
        signal.stopped.then(() => 'signal' as const),
        engineExited.then(() => 'engine' as const),
      ]);
      if (first === 'engine' || engine.exitCode !== null) {
        throw new BulkheadError(
          ErrorCodes.INTERNAL,
          `Engine exited with ${engine.exitCode}; its last words (${join(dataDir, 'engine.log')}):\n${await lastLines(join(dataDir, 'engine.log'), 5)}`,
        );
      }
      if (first === 'watched') {
        say('');
        say(
          rolling
            ? `Done: a PC appeared in Center, booted ${DEMO_IMAGE}@1 and took the patch to @2.`
            : `Done: the PC is back, on ${DEMO_IMAGE}@2.`,
        );
        say('Look around in another shell:');
        say('  bulkhead devices list --group demo');
        say(`  bulkhead engine status --data ${dataDir}`);
        say('The PC keeps running. Ctrl-C stops Engine and the VM.');
        await Promise.race([signal.stopped, engineExited]);
      }
    } finally {
      signal.done();
      // Another Ctrl-C while stopping hurries Engine along; the VM is still stopped after it.
      const hurry = () => engine.kill('SIGKILL');
      process.on('SIGINT', hurry);
      process.on('SIGTERM', hurry);
      say('Stopping Engine …');
      await stopEngine(engine);
      // A real PC's VMs keep running when Engine stops (it finds them again at its next
      // start); the demo's VM is stopped too, so nothing is left running.
      const driver = createQemuDriver();
      const { runDir } = volumeLayout(dataDir, PROFILE);
      await driver
        .attach(PROFILE, runDir)
        .then(() => driver.stop(PROFILE, { timeoutMs: 20_000 }))
        .catch(() => undefined);
      process.off('SIGINT', hurry);
      process.off('SIGTERM', hurry);
      say(
        `Stopped Engine and the VM ${PROFILE} (a real PC's VMs keep running when Engine stops; the demo stops its VM too). Run \`bulkhead demo pc\` again to start it again.`,
      );
    }
    result.stopped = true;
    return result;
  },
};

/**
 * Starts a rollout of version 2 to the demo group: one phase of every device, halting on a
 * failure. Rollouts an earlier, interrupted run left pending, paused or halted are aborted
 * first; one still running is kept.
 */
async function startRollout(
  api: ApiClient,
  versionId: string,
  groupId: string,
  say: (line: string) => void,
): Promise<string> {
  const { rollouts } = await api.call(endpoints.listRollouts, {
    query: { imageVersionId: versionId, limit: 100 },
  });
  for (const r of rollouts.filter((x) => x.groupId === groupId)) {
    if (r.state === 'running') {
      say(`A rollout of ${DEMO_IMAGE}@2 to the group ${GROUP} runs already: waiting for it.`);
      return r.id;
    }
    if (r.state === 'pending' || r.state === 'paused' || r.state === 'halted') {
      await api.call(endpoints.actOnRollout, {
        params: { id: r.id, action: 'abort' },
        body: { reason: 'replaced by a new bulkhead demo pc run' },
      });
    }
  }
  const created = await api.call(endpoints.createRollout, {
    body: {
      imageVersionId: versionId,
      groupId,
      phases: [100],
      soakMinutes: 60,
      failureThreshold: 0,
      minReports: 1,
      start: true,
    },
  });
  say(
    `Rolling out ${DEMO_IMAGE}@2 to the group ${GROUP} (bulkhead rollout status ${created.id}): the PC downloads only the chunks that changed, then switches its VM.`,
  );
  return created.id;
}
