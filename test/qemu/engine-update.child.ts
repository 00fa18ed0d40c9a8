// An Engine reconciler as its own process, without Center, for the crash-safety tests: the
// desired state comes from a JSON file the test rewrites, events go to a JSON-lines file.
// It is built by Engine's own composition root (createEngineReconciler) from an Engine
// configuration, as `engine run` builds it; only the crash hook is this entry's own. The test
// kills it (ENGINE_CRASH_AT makes it kill itself in a chosen update state) and starts it again
// on the same data directory.
//
// env: ENGINE_DATA, ENGINE_DESIRED, ENGINE_EVENTS, GUEST_KERNEL, GUEST_INITRD, GUEST_CMDLINE,
//      ENGINE_CRASH_AT (optional), ENGINE_TRACE (optional: each persisted state and when)
import { testKeyRing } from '../support/keys.ts';
import { wrappedKeyFiles } from '../../src/engine/wrapped-keys.ts';
import { appendFileSync } from 'node:fs';
import { appendFile, readFile } from 'node:fs/promises';
import {
  createEngineReconciler,
  resolveEngineConfig,
  systemClock,
  UPDATE_STATES,
  type UpdateState,
} from '../../src/engine/index.ts';
import type { DesiredState } from '../../src/protocol/index.ts';

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};

function crashAtFromEnv(): UpdateState | undefined {
  const value = process.env.ENGINE_CRASH_AT;
  if (!value) return undefined;
  if (!(UPDATE_STATES as readonly string[]).includes(value)) {
    throw new Error(`ENGINE_CRASH_AT must be one of ${UPDATE_STATES.join(', ')}`);
  }
  return value as UpdateState;
}

const eventsPath = env('ENGINE_EVENTS');
const clock = systemClock;
const log = {
  debug: () => {},
  info: () => {},
  warn: (o: object, m: string) => process.stderr.write(`warn ${m} ${JSON.stringify(o)}\n`),
  error: (o: object, m: string) =>
    process.stderr.write(`error ${m} ${String((o as { err?: unknown }).err)}\n`),
};
const config = resolveEngineConfig([
  {
    dataDir: env('ENGINE_DATA'),
    hypervisor: 'qemu',
    kernel: env('GUEST_KERNEL'),
    initrd: env('GUEST_INITRD'),
    cmdline: env('GUEST_CMDLINE'),
    stopTimeoutSeconds: 10,
  },
]);

const crashAt = crashAtFromEnv();
const tracePath = process.env.ENGINE_TRACE;
const { reconciler } = await createEngineReconciler(config, {
  // Not enrolled: the data key is wrapped for the test device's fixed key; the test stores it
  // in the data directory as Engine's sync would.
  keys: testKeyRing('file', undefined, wrappedKeyFiles(env('ENGINE_DATA'))),
  clock,
  log,
  report: (event) => appendFile(eventsPath, `${JSON.stringify({ at: clock.now(), ...event })}\n`),
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
