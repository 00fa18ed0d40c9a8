import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ACTIVE_STATES,
  TRANSITIONS,
  UPDATE_STATES,
  beginTransaction,
  runTransaction,
  type ActiveState,
  type Outcome,
  type Transaction,
  type UpdateExecutors,
  type UpdateState,
} from './machine.ts';
import { releaseKey } from '../volumes/index.ts';
import { systemRelease, volumeRef } from '../../../test/support/releases.ts';

/** The states an update persists on its way to its health check. */
const UP_TO_HEALTH_CHECK = ['staged', 'switching', 'booting', 'health-check'] as const;
const v1 = systemRelease('1');
const v2 = systemRelease('2');

/** Executors answering from a script per state (the last answer repeats). */
function scripted(script: Partial<Record<ActiveState, Outcome[]>>) {
  const calls: ActiveState[] = [];
  const handler = (state: ActiveState) => async (): Promise<Outcome> => {
    calls.push(state);
    const answers = script[state] ?? [];
    const answer = answers.length > 1 ? answers.shift()! : answers[0];
    if (!answer) throw new Error(`no answer scripted for ${state}`);
    return answer;
  };
  const executors = Object.fromEntries(
    ACTIVE_STATES.map((s) => [s, handler(s)]),
  ) as unknown as UpdateExecutors;
  return { executors, calls };
}

const happy: Partial<Record<ActiveState, Outcome[]>> = {
  downloading: ['downloaded'],
  staged: ['window-open'],
  switching: ['switched'],
  booting: ['booted'],
  'health-check': ['healthy'],
  committed: ['done'],
  'rolling-back': ['rolled-back'],
  'rolled-back': ['done'],
  failed: ['done'],
};

async function run(
  tx: Transaction,
  script: Partial<Record<ActiveState, Outcome[]>>,
  resumed = false,
) {
  const { executors, calls } = scripted(script);
  const persisted: (UpdateState | null)[] = [];
  let last: Transaction | null = tx;
  const result = await runTransaction(tx, {
    executors,
    persist: async (t) => {
      persisted.push(t?.state ?? null);
      if (t) last = t;
    },
    now: () => 1000,
    resumed,
  });
  return { result, calls, persisted, last: last as Transaction };
}

test('update table: every state but idle has a way back to idle, and idle only begins', () => {
  for (const state of UPDATE_STATES) {
    const seen = new Set<UpdateState>([state]);
    const queue: UpdateState[] = [state];
    while (queue.length) {
      for (const next of Object.values(TRANSITIONS[queue.shift()!])) {
        if (!seen.has(next)) {
          seen.add(next);
          queue.push(next);
        }
      }
    }
    assert.ok(seen.has('idle'), `${state} cannot reach idle`);
  }
  assert.deepEqual(Object.keys(TRANSITIONS.idle), ['begin']);
  // Before the switch a failure changes nothing; after it, failure means rollback.
  assert.equal(TRANSITIONS.downloading['download-failed'], 'failed');
  assert.equal(TRANSITIONS['health-check'].unhealthy, 'rolling-back');
  assert.equal(TRANSITIONS.switching.cancel, undefined);
});

const cases: {
  name: string;
  script: Partial<Record<ActiveState, Outcome[]>>;
  persisted: (UpdateState | null)[];
  reason: string | null;
}[] = [
  {
    name: 'a healthy update commits',
    script: happy,
    persisted: [...UP_TO_HEALTH_CHECK, 'committed', null],
    reason: null,
  },
  {
    name: 'a failed health check rolls back, keeping the reason',
    script: {
      ...happy,
      'health-check': [{ event: 'unhealthy', reason: 'health check command exited 1' }],
    },
    persisted: [...UP_TO_HEALTH_CHECK, 'rolling-back', 'rolled-back', null],
    reason: 'health check command exited 1',
  },
  {
    name: 'a boot failure rolls back',
    script: { ...happy, booting: [{ event: 'boot-failed', reason: 'qemu exited 1' }] },
    persisted: ['staged', 'switching', 'booting', 'rolling-back', 'rolled-back', null],
    reason: 'qemu exited 1',
  },
  {
    name: 'a download that fails verification fails with nothing switched',
    script: { ...happy, downloading: [{ event: 'download-failed', reason: 'chunk tampered' }] },
    persisted: ['failed', null],
    reason: 'chunk tampered',
  },
  {
    name: 'a rollback that keeps failing ends failed after its attempts',
    script: {
      ...happy,
      'health-check': [{ event: 'unhealthy', reason: 'guest agent did not answer within 5 s' }],
      'rolling-back': [{ event: 'rollback-failed', reason: 'previous version unhealthy too' }],
    },
    persisted: [
      ...UP_TO_HEALTH_CHECK,
      'rolling-back',
      'rolling-back',
      'rolling-back',
      'failed',
      null,
    ],
    reason: 'guest agent did not answer within 5 s',
  },
];

for (const c of cases) {
  test(`update table: ${c.name}`, async () => {
    const tx = beginTransaction('work', 'p1', v1, v2, 0);
    const { result, persisted, last } = await run(tx, c.script);
    assert.equal(result, null);
    assert.deepEqual(persisted, c.persisted);
    assert.equal(last.reason, c.reason);
  });
}

test('update table: a closed switch window stops the run in staged, to be run again', async () => {
  const tx = beginTransaction('work', 'p1', v1, v2, 0);
  const { result, persisted } = await run(tx, { ...happy, staged: ['wait'] });
  assert.equal(result?.state, 'staged');
  assert.deepEqual(persisted, ['staged']);
});

// Killed in state X: the restarted Engine loads the transaction as persisted and goes on.
const resumeCases: {
  state: ActiveState;
  attempt: number;
  firstCall: ActiveState | null;
  end: (UpdateState | null)[];
}[] = [
  { state: 'downloading', attempt: 0, firstCall: 'downloading', end: ['committed', null] },
  { state: 'staged', attempt: 0, firstCall: 'staged', end: ['committed', null] },
  { state: 'switching', attempt: 1, firstCall: 'switching', end: ['committed', null] },
  { state: 'booting', attempt: 1, firstCall: 'switching', end: ['committed', null] },
  { state: 'health-check', attempt: 1, firstCall: 'switching', end: ['committed', null] },
  { state: 'health-check', attempt: 2, firstCall: 'rolling-back', end: ['rolled-back', null] },
  { state: 'committed', attempt: 1, firstCall: 'committed', end: [null] },
  { state: 'rolling-back', attempt: 1, firstCall: 'rolling-back', end: ['rolled-back', null] },
  { state: 'rolled-back', attempt: 1, firstCall: 'rolled-back', end: [null] },
  { state: 'failed', attempt: 0, firstCall: 'failed', end: [null] },
];

for (const c of resumeCases) {
  test(`update table: killed in ${c.state} (boot ${c.attempt}) resumes`, async () => {
    const tx: Transaction = {
      ...beginTransaction('work', 'p1', v1, v2, 0),
      state: c.state,
      attempt: c.attempt,
    };
    const { result, calls, persisted } = await run(tx, happy, true);
    assert.equal(result, null);
    assert.equal(calls[0], c.firstCall);
    assert.deepEqual(persisted.slice(-c.end.length), c.end);
    if (c.state === 'booting' || c.state === 'health-check') {
      assert.equal(persisted[0], c.attempt >= 2 ? 'rolling-back' : 'switching');
    }
  });
}

test('update table: an event the table does not allow is an error, not a silent move', async () => {
  const tx = beginTransaction('work', 'p1', v1, v2, 0);
  await assert.rejects(run(tx, { downloading: ['healthy'] }), /not allowed in state downloading/);
});

test('release keys name every volume version, apps in a stable order', () => {
  const a = { ...volumeRef('9'), appId: 'a', name: 'office' };
  const b = { ...volumeRef('8'), appId: 'b', name: 'cad' };
  assert.equal(
    releaseKey({ system: volumeRef('1'), apps: [a, b] }),
    releaseKey({ system: volumeRef('1'), apps: [b, a] }),
  );
  assert.notEqual(releaseKey(v1), releaseKey(v2));
});
