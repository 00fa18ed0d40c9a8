import assert from 'node:assert/strict';
import { readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../../test/support/fixtures.ts';
import type { DesiredState, DesiredVm, VolumeRef } from '../protocol/index.ts';
import {
  choosePersonal,
  KeyFileStore,
  localizePersonal,
  PassphraseKeyStore,
  personalDir,
  personalSource,
  personalSummary,
  readPersonalChoice,
  withPersonalKeys,
} from './personal.ts';

const volume = (image: string, version: string): VolumeRef => ({
  image,
  imageId: `id-${image}`,
  version,
  versionId: `v-${image}-${version}`,
  manifestId: 'a'.repeat(64),
  size: 1024,
});

function personalVm(images: VolumeRef[]): DesiredVm {
  return {
    name: 'mine',
    profileId: 'p-mine',
    system: images[0]!,
    personal: { images },
  } as DesiredVm;
}

/** Every byte Engine keeps about the personal VM, as one buffer. */
async function everything(dataDir: string): Promise<Buffer> {
  const dir = personalDir(dataDir);
  const names = await readdir(dir);
  return Buffer.concat(await Promise.all(names.map((n) => readFile(join(dir, n)))));
}

test("the user's choice is kept on the PC: an offered image or a disk that exists", async (t) => {
  const dataDir = await tempDir(t);
  assert.equal(await readPersonalChoice(dataDir), undefined);
  assert.deepEqual(await choosePersonal(dataDir, { image: 'debian-next' }), {
    image: 'debian-next',
  });
  assert.deepEqual(await readPersonalChoice(dataDir), { image: 'debian-next' });
  assert.equal((await stat(personalDir(dataDir))).mode & 0o777, 0o700);

  const disk = join(dataDir, 'mine.qcow2');
  await assert.rejects(choosePersonal(dataDir, { disk }), {
    code: 'ERR_INPUT_UNREADABLE',
    message: /mine\.qcow2: no such file/,
  });
  await assert.rejects(choosePersonal(dataDir, { disk: dataDir }), /not a regular file/);
  // The failed choices left the earlier one in place.
  assert.deepEqual(await readPersonalChoice(dataDir), { image: 'debian-next' });
  await writeFile(disk, 'disk');
  await choosePersonal(dataDir, { disk });
  assert.deepEqual(await readPersonalChoice(dataDir), { disk });
});

test('the personal source: the default, the chosen offered image, a brought disk; refused when not offered', () => {
  const vm = personalVm([volume('debian', '12.1'), volume('debian-next', '13.0')]);
  assert.deepEqual(personalSource(vm, undefined), {
    kind: 'image',
    volume: volume('debian', '12.1'),
  });
  assert.deepEqual(personalSource(vm, { image: 'debian-next' }), {
    kind: 'image',
    volume: volume('debian-next', '13.0'),
  });
  assert.deepEqual(personalSource(vm, { disk: '/home/u/mine.qcow2' }), {
    kind: 'disk',
    path: '/home/u/mine.qcow2',
  });
  assert.throws(() => personalSource(vm, { image: 'windows' }), {
    code: 'ERR_NOT_FOUND',
    message: /windows is not offered by profile mine \(offered: debian, debian-next\)/,
  });
  // What Center may learn: existence, state, size, version, nothing of the disk's path.
  assert.deepEqual(personalSummary(personalSource(vm, { disk: '/home/u/x' }), 'running', 5), {
    exists: true,
    state: 'running',
    sizeBytes: 5,
    version: 'local',
  });
  assert.equal(
    personalSummary(personalSource(vm, { image: 'debian-next' }), 'stopped', 0).version,
    'debian-next@13.0',
  );
});

test('a key file: 32 random bytes, 0600, the same on every use', async (t) => {
  const dataDir = await tempDir(t);
  const store = new KeyFileStore(dataDir);
  const key = await store.key();
  assert.equal(key.length, 32);
  assert.deepEqual(await new KeyFileStore(dataDir).key(), key);
  const info = await stat(join(personalDir(dataDir), 'data.key'));
  assert.equal(info.mode & 0o777, 0o600);
  const other = await new KeyFileStore(await tempDir(t)).key();
  assert.notDeepEqual(other, key);
});

test('a passphrase key: the same passphrase gives the same key, a wrong one is refused, the key is not on disk', async (t) => {
  const dataDir = await tempDir(t);
  const cost = { N: 2 ** 12 };
  const key = await new PassphraseKeyStore(dataDir, 'correct horse', cost).key();
  assert.equal(key.length, 32);
  assert.deepEqual(await new PassphraseKeyStore(dataDir, 'correct horse', cost).key(), key);
  await assert.rejects(new PassphraseKeyStore(dataDir, 'wrong horse!', cost).key(), {
    code: 'ERR_WRONG_PASSWORD',
  });
  assert.throws(() => new PassphraseKeyStore(dataDir, 'short'), { code: 'ERR_VALIDATION' });
  // Salted: the same passphrase on another PC gives another key.
  assert.notDeepEqual(
    await new PassphraseKeyStore(await tempDir(t), 'correct horse', cost).key(),
    key,
  );
  const kept = await everything(dataDir);
  assert.equal(kept.indexOf(key), -1, 'the key bytes');
  assert.equal(kept.indexOf(key.toString('base64')), -1, 'the key in base64');
  assert.equal(kept.indexOf('correct horse'), -1, 'the passphrase');
});

test("localized for this PC: the personal VM boots the user's choice with the user's key; Center's document is untouched", async (t) => {
  const dataDir = await tempDir(t);
  const warnings: string[] = [];
  const deps = {
    dataDir,
    keys: new KeyFileStore(dataDir),
    localKeys: new Map<string, Buffer>(),
    log: { warn: (_: object, msg: string) => warnings.push(msg) },
  };
  const work = {
    name: 'work',
    system: volume('debian', '12.1'),
    policy: { network: 'restricted', encryptData: true },
    wrappedDataKeyDigest: 'a'.repeat(64),
  } as unknown as DesiredVm;
  const mine = {
    ...personalVm([volume('debian', '12.1'), volume('debian-next', '13.0')]),
    policy: { network: 'nat', encryptData: false },
  } as DesiredVm;
  const desired = { vms: [work, mine] } as unknown as DesiredState;
  const before = JSON.stringify(desired);

  const byDefault = await localizePersonal(desired, deps);
  assert.equal(byDefault.vms[0], work, 'the work VM as Center sent it');
  const key = await deps.keys.key();
  assert.deepEqual(byDefault.vms[1]!.system, volume('debian', '12.1'));
  assert.deepEqual(
    deps.localKeys.get(mine.profileId),
    key,
    "the user's key, kept for the key ring",
  );
  assert.equal(byDefault.vms[1]!.wrappedDataKeyDigest, undefined, 'no key from Center');
  // The key ring hands the personal VM the user's key, and the work VM Center's as before.
  const center = { protection: 'file' as const, dataKey: () => Buffer.from('center') };
  const ring = withPersonalKeys(center, deps.localKeys);
  assert.deepEqual(ring.dataKey(byDefault.vms[1]!), key);
  assert.deepEqual(ring.dataKey(work), Buffer.from('center'));
  assert.throws(() => withPersonalKeys(center, new Map()).dataKey(byDefault.vms[1]!), {
    code: 'ERR_DATA_KEY_UNAVAILABLE',
  });
  assert.equal(byDefault.vms[1]!.policy.encryptData, true, "encrypted under the user's key");
  assert.equal(JSON.stringify(desired), before, "Center's document is not changed");

  await choosePersonal(dataDir, { image: 'debian-next' });
  const chosen = await localizePersonal(desired, deps);
  assert.deepEqual(chosen.vms[1]!.system, volume('debian-next', '13.0'));

  await choosePersonal(dataDir, { image: 'gone' });
  assert.deepEqual(
    (await localizePersonal(desired, deps)).vms.map((v) => v.name),
    ['work'],
  );
  assert.match(warnings.at(-1)!, /not offered/);
  const disk = join(dataDir, 'mine.qcow2');
  await writeFile(disk, 'x');
  await choosePersonal(dataDir, { disk });
  assert.deepEqual(
    (await localizePersonal(desired, deps)).vms.map((v) => v.name),
    ['work'],
  );
  assert.match(warnings.at(-1)!, /brought disk is not supported yet/);
});
