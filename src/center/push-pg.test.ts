import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { startPostgres } from '../../test/support/postgres.ts';
import { PATIENCE_MS } from '../../test/support/wait.ts';
import { createPgPushBus, pushPayloads } from './push-pg.ts';

test('payloads stay below the NOTIFY limit and carry every id once', () => {
  const ids = Array.from({ length: 2000 }, () => randomUUID());
  const payloads = pushPayloads('o1', ids);
  assert.ok(payloads.length > 1);
  const carried: string[] = [];
  for (const p of payloads) {
    assert.ok(Buffer.byteLength(p) < 8000, `${Buffer.byteLength(p)} bytes`);
    carried.push(...(JSON.parse(p) as { ids: string[] }).ids);
  }
  assert.deepEqual(carried, ids);
  assert.deepEqual(pushPayloads('o1', 'all'), ['{"o":"o1","all":true}']);
});

test('a notification through one replica reaches a subscriber of another', async (t) => {
  const url = await startPostgres(t);
  const first = createPgPushBus({ connectionString: url });
  const second = createPgPushBus({ connectionString: url });
  t.after(() => Promise.all([first.close(), second.close()]));
  await Promise.all([first.ready, second.ready]);

  const calls: string[] = [];
  let wake: () => void = () => undefined;
  const next = (ms = PATIENCE_MS) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no notification in ${ms} ms`)), ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  const device = randomUUID();
  const unsubscribe = first.subscribe(device, () => {
    calls.push('first');
    wake();
  });
  assert.equal(first.connections(), 1);

  let arrived = next();
  second.notify([device]);
  await arrived;
  arrived = next();
  second.notify('all');
  await arrived;
  // A long list is split across several NOTIFYs; the device at the end still hears.
  arrived = next();
  second.notify([...Array.from({ length: 1500 }, () => randomUUID()), device]);
  await arrived;
  // A replica's own notification is delivered once, not again when PostgreSQL echoes it.
  arrived = next();
  first.notify([device]);
  await arrived;
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(calls, ['first', 'first', 'first', 'first']);

  unsubscribe();
  assert.equal(first.connections(), 0);
  second.notify([device]);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(calls.length, 4);
});
