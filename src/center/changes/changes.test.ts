import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import {
  CENTER_TARGETS,
  insertDevices,
  insertGroup,
  insertImage,
  insertProfile,
} from '../../../test/support/center.ts';
import { migrateToLatest, openDatabase } from '../db/index.ts';
import { createLocalPushBus, type PushBus } from '../push.ts';
import { markChanged, runCommand, transact, type ChangeTarget } from './index.ts';

const AT = Date.UTC(2026, 5, 1, 12);

/** A push bus that records what it was told, and whether a transaction was open then. */
function recordingBus(): PushBus & { told: (string[] | 'all')[] } {
  const bus = createLocalPushBus();
  const told: (string[] | 'all')[] = [];
  return {
    ...bus,
    told,
    notify(ids) {
      told.push(ids === 'all' ? 'all' : [...ids].sort());
      bus.notify(ids);
    },
  };
}

/** A migrated database with two groups of devices and a profile some of them hold. */
async function fleet(t: TestContext, url: string) {
  const database = await openDatabase({ url });
  t.after(() => database.close());
  await migrateToLatest(database.db);
  const { db } = database;
  const image = await insertImage(db, 'os', 'system', AT);
  const profile = await insertProfile(db, { name: 'work', systemImageId: image }, AT);
  const office = await insertGroup(db, 'office', AT);
  const lab = await insertGroup(db, 'lab', AT);
  // Written "in the future": a bump must still move them forward.
  const [a, b] = await insertDevices(db, office, 2, [profile], AT + 5);
  const [c] = await insertDevices(db, lab, 1, [], AT + 5);
  const push = recordingBus();
  const updatedAt = async () => {
    const rows = await db.selectFrom('devices').select(['id', 'updated_at']).execute();
    return new Map(rows.map((r) => [r.id, Number(r.updated_at)]));
  };
  return { db, push, profile, office, lab, a: a!, b: b!, c: c!, updatedAt };
}

for (const target of CENTER_TARGETS) {
  test(`markChanged and runCommand on ${target.dialect}`, async (t) => {
    const newUrl = await target.setUp(t);

    await t.test('each target moves its devices forward; they are told after commit', async (t) => {
      const f = await fleet(t, await newUrl(t));
      const deps = { db: f.db, push: f.push };
      const cases: { target: ChangeTarget; moved: string[] }[] = [
        { target: { devices: [f.b] }, moved: [f.b] },
        { target: { group: f.office }, moved: [f.a, f.b] },
        { target: { profiles: [f.profile] }, moved: [f.a, f.b] },
        { target: { profiles: [] }, moved: [] },
      ];
      for (const { target, moved } of cases) {
        const before = await f.updatedAt();
        await transact(deps, async (trx) => {
          await markChanged(trx, target, AT);
          assert.deepEqual(f.push.told, [], 'nobody is told before the commit');
        });
        const after = await f.updatedAt();
        for (const [id, at] of after) {
          assert.equal(at, moved.includes(id) ? before.get(id)! + 1 : before.get(id), id);
        }
        assert.deepEqual(f.push.told, moved.length === 0 ? [] : [[...moved].sort()]);
        f.push.told.length = 0;
      }
      // 'all' moves every device, to now when now is later, and tells them all at once.
      await transact(deps, (trx) => markChanged(trx, 'all', AT + 1000));
      assert.deepEqual([...(await f.updatedAt()).values()], [AT + 1000, AT + 1000, AT + 1000]);
      assert.deepEqual(f.push.told, ['all']);
    });

    await t.test('a rolled-back change tells nobody and moves nothing', async (t) => {
      const f = await fleet(t, await newUrl(t));
      const before = await f.updatedAt();
      await assert.rejects(
        transact({ db: f.db, push: f.push }, async (trx) => {
          await markChanged(trx, { group: f.office }, AT);
          throw new Error('refused');
        }),
        /refused/,
      );
      assert.deepEqual(await f.updatedAt(), before);
      assert.deepEqual(f.push.told, []);
    });

    await t.test('markChanged refuses a transaction nobody will tell the devices of', async (t) => {
      const f = await fleet(t, await newUrl(t));
      await assert.rejects(
        f.db.transaction().execute((trx) => markChanged(trx, { devices: [f.a] }, AT)),
        /not opened by transact/,
      );
    });

    await t.test('more devices than a notification lists are told as all', async (t) => {
      const f = await fleet(t, await newUrl(t));
      const many = await insertDevices(f.db, f.lab, 1000, [], AT);
      await transact({ db: f.db, push: f.push }, (trx) =>
        markChanged(trx, { devices: [...many, f.a] }, AT),
      );
      assert.deepEqual(f.push.told, ['all']);
    });

    await t.test('runCommand writes one audit entry, none when nothing changed', async (t) => {
      const f = await fleet(t, await newUrl(t));
      const deps = { db: f.db, push: f.push, nowMs: AT + 7 };
      const actor = { label: 'user:ops' };
      const spec = { action: 'device.touch', target: 'device', id: f.c };
      const result = await runCommand(deps, actor, spec, async (trx, at) => {
        await markChanged(trx, { devices: [f.c] }, at);
        return { result: 'done', before: { n: 1 }, after: { n: 2 } };
      });
      assert.equal(result, 'done');
      const same = await runCommand(deps, actor, spec, () =>
        Promise.resolve({ result: 'same', unchanged: true as const }),
      );
      assert.equal(same, 'same');
      const entries = await f.db.selectFrom('audit_log').selectAll().execute();
      assert.deepEqual(
        entries.map((e) => [e.actor, e.action, e.target_type, e.target_id, e.before, e.after]),
        [['user:ops', 'device.touch', 'device', f.c, '{"n":1}', '{"n":2}']],
      );
      assert.equal(Number(entries[0]!.at), AT + 7);
      assert.deepEqual(f.push.told, [[f.c]]);
    });
  });
}
