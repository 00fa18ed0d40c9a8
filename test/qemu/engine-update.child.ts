// An Engine reconciler as its own process, without Center, for the crash-safety tests: the
// desired state comes from a JSON file the test rewrites, events go to a JSON-lines file.
// The test kills it (BULKHEAD_TEST_CRASH_AT makes it kill itself in a chosen update state)
// and starts it again on the same data directory.
//
// env: ENGINE_DATA, ENGINE_DESIRED, ENGINE_EVENTS, GUEST_KERNEL, GUEST_INITRD, GUEST_CMDLINE,
//      BULKHEAD_TEST_CRASH_AT (optional), ENGINE_TRACE (optional: each persisted state and when)
import { appendFileSync } from 'node:fs';
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { systemClock } from '../../src/engine/clock.ts';
import { GuestAgent } from '../../src/engine/guest-agent.ts';
import { createQemuDriver } from '../../src/engine/hypervisor/index.ts';
import { createReconciler } from '../../src/engine/reconcile.ts';
import { crashAtFromEnv } from '../../src/engine/run.ts';
import { engineFiles } from '../../src/engine/state.ts';
import { TransactionFiles, VmRecords } from '../../src/engine/update/records.ts';
import type { UpdateState } from '../../src/engine/update/machine.ts';
import { GoldenStore } from '../../src/engine/volumes/goldens.ts';
import { volumeLayout } from '../../src/engine/volumes/overlays.ts';
import type { DesiredState } from '../../src/protocol/index.ts';

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const dataDir = env('ENGINE_DATA');
const eventsPath = env('ENGINE_EVENTS');
const clock = systemClock;
const log = {
  debug: () => {},
  info: () => {},
  warn: (o: object, m: string) => process.stderr.write(`warn ${m} ${JSON.stringify(o)}\n`),
  error: (o: object, m: string) =>
    process.stderr.write(`error ${m} ${String((o as { err?: unknown }).err)}\n`),
};
const hypervisor = createQemuDriver({});
const records = new VmRecords(engineFiles(dataDir, { clock, log }).engineState, clock);
for (const r of await records.all())
  await hypervisor.attach(r.name, volumeLayout(dataDir, r.name).runDir);

const crashAt = crashAtFromEnv();
const tracePath = process.env.ENGINE_TRACE;
const reconciler = createReconciler({
  dataDir,
  goldens: new GoldenStore({ dir: join(dataDir, 'goldens') }),
  hypervisor,
  records,
  transactions: new TransactionFiles(dataDir, clock, log),
  report: (event) => appendFile(eventsPath, `${JSON.stringify({ at: clock.now(), ...event })}\n`),
  connectAgent: (status) => GuestAgent.connect(status.guestAgentSocket!, { timeoutMs: 2000 }),
  clock,
  log,
  kernel: { path: env('GUEST_KERNEL'), initrd: env('GUEST_INITRD'), cmdline: env('GUEST_CMDLINE') },
  stopTimeoutMs: 10_000,
  afterPersist: (state: UpdateState) => {
    if (tracePath) appendFileSync(tracePath, `${JSON.stringify({ state, at: clock.now() })}\n`);
    if (state === crashAt) process.kill(process.pid, 'SIGKILL');
  },
});

for (;;) {
  const desired = JSON.parse(await readFile(env('ENGINE_DESIRED'), 'utf8')) as DesiredState;
  await reconciler.reconcile(desired);
  process.stdout.write('pass\n');
  await clock.sleep(300);
}
