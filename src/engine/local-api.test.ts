import assert from 'node:assert/strict';
import { request } from 'node:http';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { recordingLog } from '../../test/support/engine.ts';
import { tempDir } from '../../test/support/fixtures.ts';
import {
  BulkheadError,
  ErrorBodySchema,
  ErrorCodes,
  LOCAL_API_BODY_LIMIT,
  LocalEngineSchema,
  LocalVmsResponseSchema,
  type LocalVm,
  type ScreenInput,
} from '../protocol/index.ts';
import { systemClock } from './clock.ts';
import { localApiSocket, startLocalApi, statusVms, type VmScreens } from './local-api.ts';
import { engineFiles } from './state.ts';
import { VmRecords } from './update/records.ts';

/*
 * Engine's local API on its unix socket, with screens that stand in for QEMU's (the real screen
 * path has its QEMU test, test/qemu/screen.test.ts, which also goes through this API).
 */

const PNG = Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex');

function vm(name: string, activity: string): LocalVm {
  return {
    name,
    kind: name === 'personal' ? 'personal' : 'work',
    version: 'os@1',
    activity,
    summary: `${name}: ${activity} on os@1`,
    currentVersionId: 'ver-1',
    desiredVersionId: 'ver-1',
    transaction: 'idle',
    lastError: null,
    leaseExpiresAt: 1_900_000_000_000,
    leaseWarning: false,
    leaseExpired: false,
    update: null,
    lastOutcome: null,
  };
}

/** `work` runs, `personal` is stopped, `busy`'s screen is held by another tool. */
function fakeScreens(inputs: { vm: string; input: ScreenInput }[]): VmScreens {
  const check = (vm: string) => {
    if (vm === 'personal') {
      throw new BulkheadError(ErrorCodes.VM_NOT_RUNNING, `VM ${vm} is not running`);
    }
    if (vm === 'busy') {
      throw new BulkheadError(ErrorCodes.IN_USE, "the VM's screen is busy");
    }
    if (vm === 'broken') throw new Error('/secret/path: EIO at frame 3');
  };
  return {
    screenshot: async (vm) => {
      check(vm);
      return PNG;
    },
    input: async (vm, input) => {
      check(vm);
      if (input.pointer && input.pointer.x >= 720) {
        throw new BulkheadError(ErrorCodes.VALIDATION, 'pointer x 720 is off the screen');
      }
      inputs.push({ vm, input });
    },
  };
}

async function api(t: TestContext) {
  const dataDir = await tempDir(t);
  const inputs: { vm: string; input: ScreenInput }[] = [];
  const log = recordingLog();
  const server = await startLocalApi(localApiSocket(dataDir), {
    vms: async () => ['work', 'personal', 'busy', 'broken'].map((n) => vm(n, 'running')),
    screens: fakeScreens(inputs),
    log,
  });
  t.after(() => server.close());
  return { dataDir, server, inputs, log };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

function call(
  socketPath: string,
  method: string,
  path: string,
  body?: string | Buffer,
  contentType = 'application/json',
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: body === undefined ? {} : { 'content-type': contentType },
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (p: Buffer) => parts.push(p));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(parts),
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function errorOf(answer: Answer) {
  return ErrorBodySchema.parse(JSON.parse(answer.body.toString())).error;
}

test('local API: the socket is 0660 in a 0700 directory, lists the VMs, and is gone once closed', async (t) => {
  const { dataDir, server } = await api(t);
  assert.equal(server.path, join(dataDir, 'run', 'engine.sock'));
  const socket = await stat(server.path);
  assert.ok(socket.isSocket());
  assert.equal(socket.mode & 0o777, 0o660);
  assert.equal((await stat(join(dataDir, 'run'))).mode & 0o777, 0o700);

  const answer = await call(server.path, 'GET', '/v1/vms');
  assert.equal(answer.status, 200);
  assert.match(String(answer.headers['content-type']), /^application\/json/);
  const { vms } = LocalVmsResponseSchema.parse(JSON.parse(answer.body.toString()));
  assert.deepEqual(
    vms.map((v) => v.name),
    ['work', 'personal', 'busy', 'broken'],
  );

  await server.close();
  await assert.rejects(stat(server.path), { code: 'ENOENT' });
});

test('local API: a screenshot is a PNG, never cached', async (t) => {
  const { server } = await api(t);
  const answer = await call(server.path, 'GET', '/v1/vms/work/screen.png');
  assert.equal(answer.status, 200);
  assert.equal(answer.headers['content-type'], 'image/png');
  assert.equal(answer.headers['cache-control'], 'no-store');
  assert.deepEqual(answer.body, PNG);
});

test('local API: text, a key combination and a click reach the screen', async (t) => {
  const { server, inputs } = await api(t);
  const post = (body: unknown) =>
    call(server.path, 'POST', '/v1/vms/work/input', JSON.stringify(body));
  for (const body of [
    { text: 'echo Hi!\n' },
    { keys: ['ctrl', 'alt', 'f2'] },
    { pointer: { x: 10, y: 20, button: 'left' } },
    { pointer: { x: 0, y: 0 } },
  ]) {
    const answer = await post(body);
    assert.equal(answer.status, 204, answer.body.toString());
  }
  assert.deepEqual(inputs, [
    { vm: 'work', input: { text: 'echo Hi!\n' } },
    { vm: 'work', input: { keys: ['ctrl', 'alt', 'f2'] } },
    { vm: 'work', input: { pointer: { x: 10, y: 20, button: 'left' } } },
    { vm: 'work', input: { pointer: { x: 0, y: 0 } } },
  ]);
});

test("local API: the user's choice of a VM's apps goes to Center; Center's refusal comes back", async (t) => {
  const dataDir = await tempDir(t);
  const chosen: { vm: string; apps: string[] }[] = [];
  const server = await startLocalApi(localApiSocket(dataDir), {
    vms: async () => [vm('work', 'running'), vm('kiosk', 'running')],
    screens: fakeScreens([]),
    chooseApps: async (name, apps) => {
      if (name === 'kiosk') {
        throw new BulkheadError(
          ErrorCodes.FORBIDDEN,
          'profile "kiosk" leaves the choice of apps to administrators',
        );
      }
      if (apps.includes('cad')) {
        throw new BulkheadError(
          ErrorCodes.CENTER_UNREACHABLE,
          'cannot reach Center at https://center.example: ECONNREFUSED',
          { retryable: true },
        );
      }
      chosen.push({ vm: name, apps });
      return { profileId: 'p-work', chosen: apps, offered: ['editor', 'viewer'] };
    },
    log: recordingLog(),
  });
  t.after(() => server.close());
  const post = (path: string, body: unknown) =>
    call(server.path, 'POST', path, JSON.stringify(body));

  const ok = await post('/v1/vms/work/apps', { apps: ['editor'] });
  assert.equal(ok.status, 200, ok.body.toString());
  assert.deepEqual(JSON.parse(ok.body.toString()), {
    profileId: 'p-work',
    chosen: ['editor'],
    offered: ['editor', 'viewer'],
  });
  assert.deepEqual(chosen, [{ vm: 'work', apps: ['editor'] }]);

  const refused = await post('/v1/vms/kiosk/apps', { apps: ['editor'] });
  assert.equal(refused.status, 403);
  assert.deepEqual(errorOf(refused), {
    code: 'ERR_FORBIDDEN',
    message: 'profile "kiosk" leaves the choice of apps to administrators',
  });
  const away = await post('/v1/vms/work/apps', { apps: ['cad'] });
  assert.equal(away.status, 503);
  assert.deepEqual(errorOf(away), {
    code: 'ERR_CENTER_UNREACHABLE',
    message: 'cannot reach Center at https://center.example: ECONNREFUSED',
  });
  const badBody = await post('/v1/vms/work/apps', { apps: 'editor' });
  assert.equal(badBody.status, 400);
  assert.match(errorOf(badBody).message, /^apps apps: /);
  assert.equal((await post('/v1/vms/work/apps', { apps: [], more: 1 })).status, 400);
  assert.equal((await post('/v1/vms/nope/apps', { apps: [] })).status, 404);
  assert.equal((await call(server.path, 'GET', '/v1/vms/work/apps')).status, 404);
  assert.deepEqual(chosen.length, 1, 'only the good request reached Center');
});

test('local API: without Center, the apps route is not there', async (t) => {
  const { server } = await api(t);
  const answer = await call(server.path, 'POST', '/v1/vms/work/apps', '{"apps":[]}');
  assert.equal(answer.status, 404);
  assert.match(errorOf(answer).message, /not a route of Engine's local API/);
});

test('local API: bad requests get a JSON error with a stable code and the right status', async (t) => {
  const { server, inputs, log } = await api(t);
  const input = (vm: string, body: string, type?: string) =>
    call(server.path, 'POST', `/v1/vms/${vm}/input`, body, type);
  const cases: [string, Promise<Answer>, number, string, RegExp][] = [
    [
      'an unknown VM',
      call(server.path, 'GET', '/v1/vms/nosuch/screen.png'),
      404,
      'ERR_NOT_FOUND',
      /^this PC has no VM named nosuch$/,
    ],
    [
      'a VM that is not running',
      call(server.path, 'GET', '/v1/vms/personal/screen.png'),
      409,
      'ERR_VM_NOT_RUNNING',
      /VM personal is not running/,
    ],
    ['a screen in use', input('busy', '{"text":"a"}'), 409, 'ERR_IN_USE', /busy/],
    [
      'an unknown route',
      call(server.path, 'GET', '/v1/nothing'),
      404,
      'ERR_NOT_FOUND',
      /GET \/v1\/nothing is not a route/,
    ],
    [
      'the wrong method',
      call(server.path, 'GET', '/v1/vms/work/input'),
      404,
      'ERR_NOT_FOUND',
      /is not a route/,
    ],
    [
      'a path that climbs out (dot segments are resolved first)',
      call(server.path, 'GET', '/v1/vms/%2e%2e/screen.png'),
      404,
      'ERR_NOT_FOUND',
      /^GET \/v1\/screen\.png is not a route/,
    ],
    [
      'a VM name that is not one',
      call(server.path, 'GET', '/v1/vms/a%2Fb/screen.png'),
      400,
      'ERR_VALIDATION',
      /^VM name "a\/b" must be a VM name/,
    ],
    ['a body that is not JSON', input('work', '{text'), 400, 'ERR_VALIDATION', /not JSON/],
    [
      'a body of another type',
      input('work', 'text=a', 'application/x-www-form-urlencoded'),
      415,
      'ERR_UNSUPPORTED_MEDIA_TYPE',
      /application\/json/,
    ],
    [
      'two inputs at once',
      input('work', '{"text":"a","keys":["esc"]}'),
      400,
      'ERR_VALIDATION',
      /^input body: give exactly one of text, keys or pointer$/,
    ],
    ['no input', input('work', '{}'), 400, 'ERR_VALIDATION', /exactly one of/],
    [
      'a key QEMU has no code for',
      input('work', '{"keys":["ctrl","hyper"]}'),
      400,
      'ERR_VALIDATION',
      /^input keys\.1: /,
    ],
    [
      'text no US keyboard types',
      input('work', '{"text":"naïve"}'),
      400,
      'ERR_VALIDATION',
      /^input text: must be printable ASCII/,
    ],
    [
      'a negative coordinate',
      input('work', '{"pointer":{"x":-1,"y":0}}'),
      400,
      'ERR_VALIDATION',
      /^input pointer\.x: /,
    ],
    [
      'an unknown field',
      input('work', '{"pointer":{"x":1,"y":1,"double":true}}'),
      400,
      'ERR_VALIDATION',
      /^input pointer: .*double/,
    ],
    [
      'a point off the screen',
      input('work', '{"pointer":{"x":720,"y":0}}'),
      400,
      'ERR_VALIDATION',
      /off the screen/,
    ],
    [
      'a body over the limit',
      input('work', JSON.stringify({ text: 'a'.repeat(LOCAL_API_BODY_LIMIT) })),
      413,
      'ERR_OBJECT_TOO_LARGE',
      /larger than 65536 bytes/,
    ],
    [
      'a fault of Engine (no detail leaks)',
      call(server.path, 'GET', '/v1/vms/broken/screen.png'),
      500,
      'ERR_INTERNAL',
      /^Engine could not answer; see its log$/,
    ],
  ];
  for (const [what, pending, status, code, message] of cases) {
    const answer = await pending;
    assert.equal(answer.status, status, `${what}: ${answer.body.toString()}`);
    assert.match(String(answer.headers['content-type']), /^application\/json/, what);
    const error = errorOf(answer);
    assert.equal(error.code, code, what);
    assert.match(error.message, message, what);
    assert.doesNotMatch(answer.body.toString(), /\bat \/|secret/, `${what}: no stack`);
  }
  assert.deepEqual(inputs, [], 'nothing bad reached a screen');
  assert.ok(log.entries.some((e) => e.level === 'error' && e.msg === 'local API request failed'));
});

test('local API: the VMs are those `engine status` shows', async (t) => {
  const dataDir = await tempDir(t);
  const records = new VmRecords(engineFiles(dataDir).engineState, systemClock);
  await records.update('work', (r) => ({ ...r, currentVersionId: 'ver-1' }));
  const [work, ...rest] = await statusVms(dataDir)();
  assert.deepEqual(rest, []);
  assert.equal(work?.name, 'work');
  assert.equal(work?.currentVersionId, 'ver-1');
  assert.equal(work?.activity, 'stopped');
  assert.match(work?.summary ?? '', /^work: stopped/);
});

test("local API: Engine's state, and the user's restart now for a staged update only", async (t) => {
  const dataDir = await tempDir(t);
  const accepted: string[] = [];
  const engine = {
    online: true,
    lastContactAt: 1_800_000_000_000,
    push: 'open' as const,
    locked: false,
    killed: false,
    lease: null,
    now: 1_800_000_000_500,
  };
  const server = await startLocalApi(localApiSocket(dataDir), {
    vms: async () => [
      { ...vm('work', 'updating'), update: { to: 'os@2', stagedAt: 1, deadlineAt: 2 } },
      vm('personal', 'running'),
    ],
    screens: fakeScreens([]),
    engine: async () => engine,
    accept: async (name) => {
      accepted.push(name);
    },
    log: recordingLog(),
  });
  t.after(() => server.close());
  const state = await call(server.path, 'GET', '/v1/engine');
  assert.equal(state.status, 200);
  assert.deepEqual(LocalEngineSchema.parse(JSON.parse(state.body.toString())), engine);

  const now = await call(server.path, 'POST', '/v1/vms/work/accept');
  assert.equal(now.status, 204, now.body.toString());
  assert.deepEqual(accepted, ['work']);
  const nothing = await call(server.path, 'POST', '/v1/vms/personal/accept');
  assert.equal(nothing.status, 409);
  assert.deepEqual(errorOf(nothing), {
    code: 'ERR_NO_UPDATE_WAITING',
    message: 'no update of personal is waiting for a restart',
  });
  assert.equal((await call(server.path, 'GET', '/v1/vms/work/accept')).status, 404);
  assert.equal((await call(server.path, 'POST', '/v1/vms/nosuch/accept')).status, 404);
  assert.deepEqual(accepted, ['work'], 'no marker for a VM without a staged update');
});

test('local API: without an Engine to describe, GET /v1/engine and accept are not there', async (t) => {
  const { server } = await api(t);
  assert.equal((await call(server.path, 'GET', '/v1/engine')).status, 404);
  assert.equal((await call(server.path, 'POST', '/v1/vms/work/accept')).status, 404);
});
