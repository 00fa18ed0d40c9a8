// The offline lease with real VMs: Engine's own reconciler (createEngineReconciler, as `engine
// run` builds it) on the QEMU driver (TCG) booting the test guest twice, a work VM with a
// 2-day lease and a personal VM without one, goldens pulled from a mirror, the real guest
// agent, the real event queue and the real time mark in the data directory. Only the PC's
// clock is injected (real time plus an offset the test moves); documents are signed by a
// Center key and verified as the sync loop verifies them.
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  createEngineReconciler,
  EventQueue,
  GuestAgent,
  resolveEngineConfig,
  systemClock,
  verifyDesiredState,
  type Clock,
} from '../../src/engine/index.ts';
import {
  createQemuDriver,
  type QemuDriver,
  type VmEvent,
} from '../../src/engine/hypervisor/index.ts';
import { engineFiles } from '../../src/engine/state.ts';
import { TIME_MARK_FILE } from '../../src/engine/time-mark.ts';
import { DirectoryStore, importImage } from '../../src/image/index.ts';
import {
  DEVICE_SIGNATURE_DOMAINS,
  type DesiredState,
  type DesiredVm,
} from '../../src/protocol/index.ts';
import { canonicalJson, generateKeyPair, signPayload } from '../../src/signing/index.ts';
import { osVersionRef, workDesiredState } from '../support/desired.ts';
import { makeKeys } from '../support/fixtures.ts';
import { recordingLog } from '../support/engine.ts';
import { requireQemu, testGuest } from '../support/guest.ts';
import { startStaticServer } from '../support/static-server.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The PC's clock: real time plus an offset the test sets (forward, or back). */
function movableClock(): Clock & { offsetMs: number } {
  const clock = {
    offsetMs: 0,
    now: () => Date.now() + clock.offsetMs,
    sleep: systemClock.sleep,
  };
  return clock;
}

/** Runs a command in the VM through its guest agent: the guest answers. */
async function guestAnswers(driver: QemuDriver, name: string): Promise<string> {
  const status = await driver.status(name);
  assert.equal(status.state, 'running', `${name} runs`);
  const agent = await GuestAgent.waitUntilResponsive(status.guestAgentSocket!, PATIENCE_MS);
  try {
    const r = await agent.exec(['/bin/cat', '/etc/os-release'], PATIENCE_MS);
    assert.equal(r.exitCode, 0);
    return r.stdout.toString();
  } finally {
    agent.close();
  }
}

test('lease on QEMU: warned, the work VM powers itself off at expiry and stays off (clock set back, Engine restarted) until renewed; the personal VM runs on', async (t) => {
  const started = Date.now();
  await requireQemu();
  const { guest, volumes } = await testGuest();
  const dir = await mkdtemp(join(tmpdir(), 'bulkhead-lease-qemu-'));
  const dataDir = join(dir, 'engine');

  // Version 1 of `os`, published to a mirror.
  const keys = await makeKeys(dir);
  const store = new DirectoryStore(join(dir, 'store'));
  const v1 = await importImage({
    store,
    name: 'os',
    key: keys.key,
    tempDir: join(dir, 'tmp'),
    file: volumes.system.v1,
    version: '1',
    parent: null,
  });
  const server = await startStaticServer(join(dir, 'store'));

  // Center's signing key, pinned by Engine.
  const center = generateKeyPair();
  const centerKey = { keyid: center.keyid, key: createPublicKey(center.publicPem) };
  const base = workDesiredState({
    system: osVersionRef('1', v1),
    mirrors: [server.url],
    publishers: [{ keyid: keys.key.keyid, publicKey: await readFile(keys.publicPath, 'utf8') }],
  });
  const work = base.vms[0]!;
  const personal: DesiredVm = { ...work, name: 'personal', profileId: 'profile-personal' };
  delete personal.lease;

  /** Center's document at `generatedAt`: the work VM's lease runs 2 days from it. */
  const signedDocument = (generatedAt: number, revision: number) => {
    const state: DesiredState = {
      ...base,
      revision,
      generatedAt,
      expiresAt: generatedAt + DAY,
      vms: [{ ...work, lease: { days: 2, expiresAt: generatedAt + 2 * DAY } }, personal],
    };
    return {
      state,
      keyid: center.keyid,
      signature: signPayload(
        DEVICE_SIGNATURE_DOMAINS.desiredState,
        canonicalJson(state),
        createPrivateKey(center.privatePem),
      ),
    };
  };

  const clock = movableClock();
  const config = resolveEngineConfig([
    {
      dataDir,
      hypervisor: 'qemu',
      kernel: guest.kernel,
      initrd: guest.initrd,
      cmdline: guest.cmdline,
      dataVolumeBytes: 64 * 1024 ** 2,
      // Long enough that a slow guest powers itself off before a forced quit.
      stopTimeoutSeconds: 120,
    },
  ]);
  const files = engineFiles(dataDir);

  /** Engine's reconciler over `dataDir` as `engine run` builds it, with a fresh driver. */
  const startEngine = async () => {
    const log = recordingLog();
    const hypervisor = createQemuDriver({ accel: 'tcg' });
    const vmEvents: VmEvent[] = [];
    hypervisor.onEvent((e) => vmEvents.push(e));
    const starts: string[] = [];
    const start = hypervisor.start.bind(hypervisor);
    hypervisor.start = (spec) => {
      starts.push(spec.name);
      return start(spec);
    };
    const queue = await EventQueue.open({ dir: files.queueDir, clock, log });
    const engine = await createEngineReconciler(config, {
      clock,
      log,
      hypervisor,
      report: (event) => queue.append(event),
    });
    /** What the sync loop does with a document: verify, keep, move the mark, reconcile. */
    const fromCenter = async (raw: unknown, minRevision?: number) => {
      const document = verifyDesiredState(raw, {
        centerKey,
        deviceId: base.deviceId,
        now: clock.now(),
        ...(minRevision !== undefined ? { minRevision } : {}),
      });
      await files.desiredState.write({ etag: null, document, verifiedAt: clock.now() });
      await engine.timeMark.observe(document.state.generatedAt, 'center');
      await engine.reconciler.reconcile(document.state);
    };
    /** What the sync loop does at start with the document it kept. */
    const fromDisk = async () => {
      const stored = await files.desiredState.read();
      assert.ok(stored, 'the document was kept');
      await engine.timeMark.observe(stored.document.state.generatedAt, 'disk');
      await engine.reconciler.reconcile(stored.document.state);
    };
    const leaseExpired = () => queue.peek(100).filter((e) => e.type === 'lease-expired');
    return {
      ...engine,
      hypervisor,
      log,
      vmEvents,
      starts,
      queue,
      fromCenter,
      fromDisk,
      leaseExpired,
    };
  };

  let e = await startEngine();
  t.after(async () => {
    await Promise.all(['work', 'personal'].map((n) => e.hypervisor.stop(n, { timeoutMs: 5000 })));
    await e.queue.close();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  const state = async (name: string) => (await e.hypervisor.status(name)).state;

  // 1. Both VMs boot (installed through the update transaction and its health check) and
  // their guests answer.
  const T0 = clock.now();
  const first = signedDocument(T0, 1);
  const expiresAt = first.state.vms[0]!.lease!.expiresAt;
  await e.fromCenter(first);
  await waitFor('both VMs running', async () =>
    (await state('work')) === 'running' && (await state('personal')) === 'running' ? true : null,
  );
  assert.match(await guestAnswers(e.hypervisor, 'work'), /VERSION_ID=1\n/);
  assert.match(await guestAnswers(e.hypervisor, 'personal'), /VERSION_ID=1\n/);
  const booted = Date.now();

  // 2. In the warning window (the last 4.8 hours of a 2-day lease): warned once over two
  // passes; both keep running.
  clock.offsetMs = 2 * DAY - 2 * HOUR;
  await e.reconciler.pass();
  await e.reconciler.pass();
  const warnings = e.log.warnings.filter((w) => /^work: its lease runs out at/.test(w));
  assert.equal(warnings.length, 1, e.log.warnings.join('\n'));
  assert.ok(!e.log.warnings.some((w) => w.startsWith('personal:')), 'no lease, no warning');
  assert.equal(await state('work'), 'running');
  assert.equal(await state('personal'), 'running');

  // 3. Past expiry: the work VM gets the ACPI power button and powers itself off; one
  // lease-expired event is queued; the personal VM's guest still answers.
  clock.offsetMs = 2 * DAY + 60_000;
  await e.reconciler.pass();
  const off = await e.hypervisor.status('work');
  assert.equal(off.state, 'stopped');
  assert.equal(off.lastExit, 'guest-shutdown', 'the guest powered off, not a forced quit');
  const workEvents = e.vmEvents.filter((x) => x.name === 'work').map((x) => x.event);
  const powerdown = workEvents.indexOf('POWERDOWN');
  const shutdown = workEvents.indexOf('SHUTDOWN');
  assert.ok(powerdown >= 0 && shutdown > powerdown, `POWERDOWN then SHUTDOWN: ${workEvents}`);
  const guestSaid = e.vmEvents.find((x) => x.name === 'work' && x.event === 'SHUTDOWN')!;
  assert.equal(guestSaid.detail?.['guest'], true, 'the guest itself shut down');
  assert.deepEqual(
    e.leaseExpired().map((x) => [x.id, x.data]),
    [
      [
        `lease-expired-work-${expiresAt}`,
        { vm: 'work', profileId: 'profile-work', expiresAt, wasRunning: true },
      ],
    ],
  );
  assert.equal(await state('personal'), 'running');
  assert.match(await guestAnswers(e.hypervisor, 'personal'), /VERSION_ID=1\n/);
  await e.reconciler.pass();
  assert.equal(e.leaseExpired().length, 1, 'queued once');

  // 4. The PC's clock set back to before expiry: neither a later pass nor an Engine restart
  // (new driver, reconciler and time mark over the same data directory, the kept document)
  // starts the work VM: the persisted mark is past the lease.
  clock.offsetMs = HOUR;
  await e.reconciler.pass();
  assert.equal(await state('work'), 'stopped');
  assert.deepEqual(e.starts, ['work', 'personal'], 'each started once');
  const mark = JSON.parse(await readFile(join(dataDir, TIME_MARK_FILE), 'utf8')) as {
    mark: number;
  };
  assert.ok(mark.mark > expiresAt, 'the mark on disk is past the lease');

  e.hypervisor.close();
  await e.queue.close();
  e = await startEngine();
  await e.fromDisk();
  await e.reconciler.pass();
  assert.equal(await state('personal'), 'running', 'the personal VM is found running');
  assert.equal(await state('work'), 'stopped', 'the work VM is not started');
  assert.deepEqual(e.starts, [], 'nothing started');
  assert.match(await guestAnswers(e.hypervisor, 'personal'), /VERSION_ID=1\n/);
  // Reported again after the restart under the same id: Center counts it once.
  assert.deepEqual(
    new Set(e.leaseExpired().map((x) => x.id)),
    new Set([`lease-expired-work-${expiresAt}`]),
  );

  // 5. Center reached: a newer verified document renews the lease (Center's time, not the
  // PC's) and the work VM starts; its guest answers.
  await e.fromCenter(signedDocument(T0 + 2 * DAY + 2 * HOUR, 2), 1);
  await waitFor('the work VM running again', async () =>
    (await state('work')) === 'running' ? true : null,
  );
  assert.deepEqual(e.starts, ['work']);
  assert.match(await guestAnswers(e.hypervisor, 'work'), /VERSION_ID=1\n/);
  t.diagnostic(
    `boot of both ${Math.round((booted - started) / 1000)} s, whole test ` +
      `${Math.round((Date.now() - started) / 1000)} s`,
  );
});
