// The sync loop and a killed device: Center answers it only with a signed notice of its kill;
// Engine verifies it as it verifies a desired state, acts on it as on a kill (every VM stops),
// keeps it across restarts, never starts a VM again, and sends Center nothing but the kill's
// result. Center is played by a fetch function; the client, the queue and the files are real.
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { fixedClock, recordingLog } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import {
  DEVICE_SIGNATURE_DOMAINS as DOMAINS,
  HealthCheckSchema,
  IsolationPolicySchema,
  killResultSigned,
  type DesiredState,
  type DeviceCommand,
  type KillNotice,
  type KillResultRequest,
} from '../protocol/index.ts';
import {
  canonicalJson,
  generateKeyPair,
  signPayload,
  verifyPayload,
  wrappedKeyDigest,
} from '../signing/index.ts';
import { CenterClient } from './center-client.ts';
import { createCommandHandler } from './commands.ts';
import type { VmRunState } from './hypervisor/types.ts';
import { EventQueue } from './queue.ts';
import { plan } from './reconcile.ts';
import { engineFiles, type Identity } from './state.ts';
import { createSyncLoop } from './sync.ts';

const NOW = Date.parse('2026-03-02T09:15:00Z');
const WRAPPED = 'bhwk1.a.b.c';
const DEVICE = '0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b';
const KILL = '0195a1b2-c3d4-7e5f-8a9b-00000000000f';
const CENTER_URL = 'http://center.test';
const centerPair = generateKeyPair();
const centerPrivate = createPrivateKey(centerPair.privatePem);
const devicePair = generateKeyPairSync('ed25519');

const system = {
  image: 'os',
  imageId: 'image-os',
  version: '1',
  versionId: 'version-1',
  manifestId: 'a'.repeat(64),
  size: 1 << 20,
};

/** The desired state of an active device with an encrypted work VM. */
const activeState: DesiredState = {
  deviceId: DEVICE,
  revision: 7,
  generatedAt: NOW,
  expiresAt: NOW + 86_400_000,
  device: { state: 'active' },
  mirrors: [`${CENTER_URL}/store/`],
  publishers: [],
  vms: [
    {
      name: 'work',
      profileId: 'profile-work',
      system,
      apps: [],
      policy: IsolationPolicySchema.parse({ encryptData: true }),
      healthCheck: HealthCheckSchema.parse({}),
      resources: { cpus: 1, memoryMib: 512 },
      resetPolicy: 'on-update',
      lease: { days: 14, expiresAt: NOW + 14 * 86_400_000 },
      wrappedDataKeyDigest: wrappedKeyDigest(WRAPPED),
    },
  ],
  commands: [],
};

function signed(domain: string, body: object, key = centerPrivate, keyid = centerPair.keyid) {
  return { keyid, signature: signPayload(domain, canonicalJson(body), key) };
}

const desiredDocument = (state: DesiredState) => ({
  state,
  ...signed(DOMAINS.desiredState, state),
  wrappedKeys: Object.fromEntries(
    state.vms.flatMap((vm) => (vm.wrappedDataKeyDigest ? [[vm.profileId, WRAPPED]] : [])),
  ),
});

/** A kill notice for this device, signed by Center. */
function killNotice(over: Partial<KillNotice> = {}) {
  const notice: KillNotice = {
    deviceId: DEVICE,
    killedAt: NOW + 60_000,
    issuedAt: NOW + 61_000,
    commandId: KILL,
    ...over,
  };
  return { notice, ...signed(DOMAINS.killNotice, notice) };
}

/**
 * Center as seen through fetch: active until `killed` is set, then every device request is a
 * 403 ERR_DEVICE_KILLED carrying `notice`, and the kill's result is taken on its own route.
 */
function fakeCenter() {
  const center = {
    killed: false,
    notice: killNotice() as unknown,
    requests: [] as string[],
    killResults: [] as KillResultRequest[],
    reports: 0,
  };
  let challenges = 0;
  const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
    new Response(JSON.stringify(body), {
      status,
      headers: { 'content-type': 'application/json', ...headers },
    });
  const killed = () =>
    json(403, {
      error: { code: 'ERR_DEVICE_KILLED', message: 'killed', details: { notice: center.notice } },
    });
  const fetch = async (input: string | URL | Request, init?: RequestInit) => {
    const url = new URL(String(input instanceof Request ? input.url : input));
    const method = init?.method ?? 'GET';
    center.requests.push(`${method} ${url.pathname}`);
    const body: unknown = typeof init?.body === 'string' ? JSON.parse(init.body) : undefined;
    switch (url.pathname) {
      case '/api/v1/device/auth/challenge':
        challenges += 1;
        return json(200, { challenge: `challenge-${challenges}`, expiresAt: NOW + 60_000 });
      case '/api/v1/device/auth/token':
        return center.killed ? killed() : json(200, { token: 'tok', expiresAt: NOW + 900_000 });
      case '/api/v1/device/desired-state':
        return center.killed
          ? killed()
          : json(200, desiredDocument(activeState), { etag: '"etag-7"' });
      case '/api/v1/device/reports':
        if (center.killed) return killed();
        center.reports += 1;
        return json(200, {
          accepted: (body as { events: unknown[] }).events.length,
          duplicates: 0,
        });
      case '/api/v1/device/kill-result':
        center.killResults.push(body as KillResultRequest);
        return json(200, { accepted: 1, duplicates: 0 });
      default:
        return json(404, { error: { code: 'ERR_NOT_FOUND', message: url.pathname } });
    }
  };
  return { center, fetch: fetch as typeof globalThis.fetch };
}

/** An enrolled Engine's files and queue, a hypervisor with `work` running, and a loop maker. */
async function engine(
  t: TestContext,
  hooks: { erase?: () => Promise<string>; onKillReported?: () => Promise<void> } = {},
) {
  const dataDir = join(await tempDir(t, 'bulkhead-sync-'), 'engine');
  // Between contacts the loop sleeps until it is woken or stopped: the test makes each contact.
  const clock = {
    ...fixedClock(NOW),
    sleep: (_ms: number, signal?: AbortSignal) =>
      new Promise<void>((resolve) => signal?.addEventListener('abort', () => resolve())),
  };
  const files = engineFiles(dataDir, { clock });
  const queue = await EventQueue.open({ dir: files.queueDir, clock });
  t.after(() => queue.close().catch(() => {}));
  const identity: Identity = {
    version: 1,
    deviceId: DEVICE,
    centerUrl: CENTER_URL,
    centerKey: { keyid: centerPair.keyid, publicKey: centerPair.publicPem },
    publicKey: devicePair.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    enrolledAt: NOW,
  };
  const { center, fetch } = fakeCenter();
  const vms = new Map<string, VmRunState>([['work', 'running']]);
  const hypervisor = {
    status: async (name: string) => ({ name, state: vms.get(name) ?? ('stopped' as const) }),
    stop: async (name: string) => {
      vms.set(name, 'stopped');
      return { name, state: 'stopped' as const };
    },
  };
  const log = recordingLog();
  const commands: DeviceCommand[] = [];
  const kill = createCommandHandler({
    hypervisor,
    transactions: { read: async () => undefined },
    records: { all: async () => [] },
    reconciler: { reconcile: async () => {} },
    clock,
    log,
    stopTimeoutMs: 1000,
    ...(hooks.erase ? { erase: hooks.erase } : {}),
  });
  const handed: { desired: DesiredState; source: string }[] = [];
  const makeLoop = () =>
    createSyncLoop({
      client: new CenterClient({
        identity,
        privateKey: devicePair.privateKey,
        fetch,
        clock,
        log,
        events: queue,
      }),
      queue,
      store: files,
      clock,
      log,
      push: false,
      ...(hooks.onKillReported ? { onKillReported: hooks.onKillReported } : {}),
      onDesiredState: (desired, source) => void handed.push({ desired, source }),
      handleCommand: async (command, desired) => {
        commands.push(command);
        return kill(command, desired);
      },
    });
  return { dataDir, files, queue, center, vms, handed, commands, makeLoop };
}

test('a signed kill notice stops every VM for good; only the kill’s result goes back', async (t) => {
  const e = await engine(t);
  const loop = e.makeLoop();
  await loop.start();
  t.after(() => loop.stop());
  assert.equal((await loop.syncNow()).ok, true);
  assert.equal(e.handed.at(-1)?.desired.device.state, 'active');
  await e.queue.append({ type: 'vm-state', data: { vm: 'work', profileId: null, state: 'up' } });

  // Center kills the device: whatever the PC asks, it gets the signed notice.
  e.center.killed = true;
  const outcome = await loop.syncNow();
  assert.equal(outcome.ok, true, JSON.stringify(loop.connectivity().lastError));

  // Acted on as a kill: the command ran and every VM is stopped.
  assert.deepEqual(
    e.commands.map((c) => [c.id, c.kind]),
    [[KILL, 'kill']],
  );
  assert.equal(e.vms.get('work'), 'stopped');
  const killedState = e.handed.at(-1)!.desired;
  assert.equal(killedState.device.state, 'killed');
  assert.deepEqual(
    killedState.vms.map((vm) => vm.name),
    ['work'],
  );
  assert.ok(
    killedState.vms.every((vm) => vm.wrappedDataKeyDigest === undefined),
    'no data key in what it runs',
  );
  // The planner starts nothing under it, though the VM is installed and stopped.
  const steps = plan({
    now: NOW,
    desired: killedState,
    vms: [
      {
        name: 'work',
        record: {
          current: { system, apps: [] },
          previous: null,
          badVersions: [],
          lastFailure: null,
        },
        transaction: null,
        run: 'stopped',
      },
    ],
    goldens: [],
  });
  assert.deepEqual(steps, []);

  // Kept on disk; the kill's result went back signed by the device's key, nothing else did.
  assert.equal(loop.killed()?.notice.notice.commandId, KILL);
  assert.equal((await e.files.killNotice.read())?.notice.notice.killedAt, NOW + 60_000);
  assert.equal(e.center.killResults.length, 1);
  const [result] = e.center.killResults;
  assert.deepEqual(result!.event.data, {
    commandId: KILL,
    kind: 'kill',
    ok: true,
    message: 'every VM is stopped (stopped now: work); the device is killed; no VM starts again',
  });
  const { signature, ...body } = result!;
  assert.ok(
    verifyPayload(
      DOMAINS.killResult,
      canonicalJson(killResultSigned(body)),
      signature,
      devicePair.publicKey,
    ),
  );
  assert.equal(e.center.reports, 0, 'the event queued before the kill is not reported');
  assert.equal(e.queue.depth(), 0, 'what Center would refuse forever is dropped');

  // Killed, with nothing to send: no more contact, whatever a poll would bring.
  e.center.killed = false;
  const asked = e.center.requests.length;
  await loop.syncNow();
  await loop.syncNow();
  assert.equal(e.center.requests.length, asked);
  assert.equal(e.vms.get('work'), 'stopped');
  await loop.stop();

  // A restart starts from the kill, not from the desired state kept from before it.
  const handedBefore = e.handed.length;
  const restarted = e.makeLoop();
  await restarted.start();
  t.after(() => restarted.stop());
  assert.deepEqual(
    e.handed.slice(handedBefore).map((h) => [h.desired.device.state, h.source]),
    [['killed', 'disk']],
  );
  assert.equal(e.commands.length, 1, 'the kill is not carried out twice');
  assert.equal((await e.files.desiredState.read())?.document.state.device.state, 'active');
  await restarted.syncNow();
  assert.equal(e.center.requests.length, asked, 'still no contact');
  assert.equal(restarted.killed()?.notice.notice.commandId, KILL);
});

test('a kill notice that does not verify changes nothing', async (t) => {
  const other = generateKeyPair();
  const forged: [string, () => unknown, string][] = [
    [
      'signed by another key',
      () => {
        const notice = killNotice().notice;
        return {
          notice,
          ...signed(DOMAINS.killNotice, notice, createPrivateKey(other.privatePem), other.keyid),
        };
      },
      'ERR_DESIRED_STATE_KEY',
    ],
    [
      'another key claiming the pinned id',
      () => {
        const notice = killNotice().notice;
        return {
          notice,
          ...signed(DOMAINS.killNotice, notice, createPrivateKey(other.privatePem)),
        };
      },
      'ERR_DESIRED_STATE_SIGNATURE',
    ],
    [
      'a desired-state signature',
      () => {
        const notice = killNotice().notice;
        return { notice, ...signed(DOMAINS.desiredState, notice) };
      },
      'ERR_DESIRED_STATE_SIGNATURE',
    ],
    [
      'the notice of another device',
      () => killNotice({ deviceId: '0195a1b2-c3d4-7e5f-8a9b-ffffffffffff' }),
      'ERR_DESIRED_STATE_DEVICE',
    ],
    ['no notice at all', () => undefined, 'ERR_DESIRED_STATE_MALFORMED'],
  ];
  for (const [what, make, code] of forged) {
    await t.test(what, async (t) => {
      const e = await engine(t);
      const loop = e.makeLoop();
      await loop.start();
      t.after(() => loop.stop());
      await loop.syncNow();
      e.center.killed = true;
      e.center.notice = make();
      await loop.syncNow();
      assert.equal(loop.killed(), undefined);
      await assert.rejects(stat(join(e.dataDir, 'kill-notice.json')), { code: 'ENOENT' });
      assert.deepEqual(e.commands, []);
      assert.equal(e.vms.get('work'), 'running');
      assert.equal(e.handed.at(-1)?.desired.device.state, 'active');
      const refused = e.queue.peek(10).filter((ev) => ev.type === 'desired-state-refused');
      assert.deepEqual(
        refused.map((ev) => ev.data['code']),
        [code],
      );
    });
  }
});

test('a kill crypto-erases once every VM is stopped, then destroys the identity key once its result reached Center', async (t) => {
  const steps: string[] = [];
  const box: { e?: Awaited<ReturnType<typeof engine>> } = {};
  const e = await engine(t, {
    erase: async () => {
      const { vms, center } = box.e!;
      steps.push(`erase (work ${vms.get('work')}, results sent: ${center.killResults.length})`);
      return 'crypto-erased';
    },
    onKillReported: async () => {
      steps.push(`identity key destroyed (results sent: ${box.e!.center.killResults.length})`);
    },
  });
  box.e = e;
  const loop = e.makeLoop();
  await loop.start();
  t.after(() => loop.stop());
  await loop.syncNow();
  e.center.killed = true;
  assert.equal((await loop.syncNow()).ok, true);
  assert.deepEqual(steps, [
    'erase (work stopped, results sent: 0)',
    'identity key destroyed (results sent: 1)',
  ]);
  assert.match(
    (e.center.killResults[0]!.event.data as { message: string }).message,
    /the device is killed; no VM starts again; crypto-erased$/,
  );
  // Nothing more: no contact, and the key is not destroyed twice.
  const asked = e.center.requests.length;
  await loop.syncNow();
  assert.equal(e.center.requests.length, asked);
  assert.equal(steps.length, 2);
});
