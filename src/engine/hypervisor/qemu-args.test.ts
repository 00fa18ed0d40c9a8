import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IsolationPolicySchema } from '../../protocol/index.ts';
import { buildQemuArgs, diskSerial } from './qemu-args.ts';
import type { VmSpec } from './types.ts';

/** The VM's run directory; these tests only build arguments, nothing is created there. */
const RUN_DIR = 'vm-run/work';

function spec(policy: Partial<VmSpec['policy']> = {}, extra: Partial<VmSpec> = {}): VmSpec {
  return {
    name: 'work',
    cpus: 2,
    memoryMib: 512,
    runDir: RUN_DIR,
    disks: [
      { role: 'system', path: 'volumes/system.qcow2', format: 'qcow2', readOnly: false },
      { role: 'app:editor', path: 'volumes/app,1.qcow2', format: 'qcow2', readOnly: true },
      {
        role: 'data',
        path: 'volumes/data.qcow2',
        format: 'qcow2',
        readOnly: false,
        encryptionKey: Buffer.alloc(32, 1),
      },
    ],
    policy: IsolationPolicySchema.parse(policy),
    ...extra,
  };
}

const relay = (host: string, port: number) => `relay ${host} ${port}`;

/** The values of every `flag` in args. */
function values(args: string[], flag: string): string[] {
  return args.flatMap((a, i) => (a === flag && args[i + 1] !== undefined ? [args[i + 1]!] : []));
}

test('nat: user-mode network with outbound access and one virtio NIC', () => {
  const { args } = buildQemuArgs(spec({ network: 'nat' }), { accelerator: 'tcg' });
  assert.deepEqual(values(args, '-netdev'), ['user,id=net0,restrict=off']);
  assert.ok(values(args, '-device').includes('virtio-net-pci,netdev=net0'));
});

test('restricted: restrict=on, and each allowed endpoint only through its own forward', () => {
  const { args } = buildQemuArgs(
    spec({
      network: 'restricted',
      allowedEndpoints: [
        { host: 'vpn.example.org', port: 443 },
        { host: '192.0.2.7', port: 1194 },
      ],
    }),
    { accelerator: 'tcg', relayCommand: relay },
  );
  assert.deepEqual(values(args, '-netdev'), [
    'user,id=net0,restrict=on' +
      ',guestfwd=tcp:10.0.2.100:443-cmd:relay vpn.example.org 443' +
      ',guestfwd=tcp:10.0.2.101:1194-cmd:relay 192.0.2.7 1194',
  ]);
  // Without endpoints: cut off entirely.
  const closed = buildQemuArgs(spec({ network: 'restricted' }), { accelerator: 'tcg' });
  assert.deepEqual(values(closed.args, '-netdev'), ['user,id=net0,restrict=on']);
});

test('none: no network device at all', () => {
  const { args } = buildQemuArgs(spec({ network: 'none' }), { accelerator: 'tcg' });
  assert.deepEqual(values(args, '-netdev'), []);
  assert.ok(!args.some((a) => a.includes('virtio-net')));
  assert.ok(args.includes('-nodefaults'));
  assert.match(values(args, '-sandbox')[0]!, /spawn=deny/);
});

test('no clipboard, USB or shared folders unless the policy says so', () => {
  const plain = buildQemuArgs(spec(), { accelerator: 'tcg' }).args.join(' ');
  for (const absent of ['vdagent', 'usb', 'virtfs', '9p', 'vhost-user-fs', 'spice']) {
    assert.ok(!plain.includes(absent), `no ${absent}`);
  }
  const { args } = buildQemuArgs(spec({ clipboard: true, usbDevices: ['046d:c52b'] }), {
    accelerator: 'tcg',
  });
  const devices = values(args, '-device');
  assert.ok(devices.includes('qemu-xhci,id=usb0'));
  assert.ok(devices.includes('usb-host,bus=usb0.0,vendorid=0x046d,productid=0xc52b'));
  assert.ok(values(args, '-chardev').includes('qemu-vdagent,id=vdagent,clipboard=on'));
});

test('disks: serials from roles, read-only apps, LUKS data with its key through a pipe', () => {
  const { args, secrets } = buildQemuArgs(spec(), { accelerator: 'kvm' });
  assert.deepEqual(values(args, '-accel'), ['kvm']);
  assert.deepEqual(values(args, '-cpu'), ['host']);
  const devices = values(args, '-device').filter((d) => d.startsWith('virtio-blk'));
  assert.deepEqual(
    devices.map((d) => /serial=([^,]+)/.exec(d)?.[1]),
    ['system', 'app-editor', 'data'],
  );
  const blockdevs = values(args, '-blockdev');
  // Commas in paths are escaped for QEMU's option syntax.
  assert.ok(
    blockdevs.includes('driver=file,node-name=file1,filename=volumes/app,,1.qcow2,read-only=on'),
  );
  assert.ok(blockdevs.includes('driver=qcow2,node-name=disk1,file=file1,read-only=on'));
  assert.ok(
    blockdevs.includes(
      'driver=qcow2,node-name=disk2,file=file2,read-only=off,encrypt.format=luks,encrypt.key-secret=key2',
    ),
  );
  assert.deepEqual(values(args, '-object'), [`secret,id=key2,file=${RUN_DIR}/key2.fifo`]);
  assert.equal(secrets.length, 1);
  assert.equal(secrets[0]!.content, Buffer.alloc(32, 1).toString('base64'));
  // The key itself is never on the command line.
  assert.ok(!args.join(' ').includes(secrets[0]!.content));
  // Direct kernel boot or not: the system disk boots first without a kernel.
  assert.ok(devices[0]!.includes('bootindex=0'));
  const direct = buildQemuArgs(spec({}, { kernel: { path: '/k', initrd: '/i', cmdline: 'c' } }), {
    accelerator: 'tcg',
  });
  assert.ok(!direct.args.join(' ').includes('bootindex'));
  assert.deepEqual(values(direct.args, '-append'), ['c']);
});

test('bad specs are refused naming what is wrong', () => {
  const bad: [Partial<VmSpec>, RegExp][] = [
    [{ name: 'bad name' }, /VM name/],
    [{ cpus: 0 }, /cpus/],
    [{ memoryMib: 16 }, /memoryMib/],
    [{ runDir: `/${'x'.repeat(120)}` }, /runDir .* too long/],
    [{ disks: [{ role: 'swap', path: '/s', format: 'raw', readOnly: false }] }, /disk role "swap"/],
    [
      {
        disks: [
          { role: 'data', path: '/a', format: 'raw', readOnly: false },
          { role: 'data', path: '/b', format: 'raw', readOnly: false },
        ],
      },
      /appears twice/,
    ],
    [
      {
        disks: [
          {
            role: 'data',
            path: '/a',
            format: 'raw',
            readOnly: false,
            encryptionKey: Buffer.alloc(4),
          },
        ],
      },
      /encryption needs a qcow2/,
    ],
  ];
  for (const [extra, message] of bad) {
    assert.throws(
      () => buildQemuArgs(spec({}, extra), { accelerator: 'tcg' }),
      (err: unknown) => {
        assert.equal((err as { code?: string }).code, 'ERR_VALIDATION');
        assert.match((err as Error).message, message);
        return true;
      },
    );
  }
  assert.equal(diskSerial('app:sixteen-chars-xy'), 'app-sixteen-chars-xy');
  assert.throws(() => diskSerial('app:seventeen-chars-xy'), /at most 16 characters/);
});

test('the screen: a VGA display, VNC on a socket in the run dir, and a second QMP monitor for screen tools', () => {
  const { args, files } = buildQemuArgs(spec(), { accelerator: 'tcg' });
  assert.ok(values(args, '-device').includes('VGA'), 'a VGA display device');
  assert.deepEqual(values(args, '-vnc'), [`unix:${RUN_DIR}/vnc.sock`]);
  // Engine's monitor and the screen tools' monitor are separate sockets, so a screenshot never
  // waits for (or takes) the connection Engine holds.
  assert.deepEqual(values(args, '-qmp'), [
    `unix:${RUN_DIR}/qmp.sock,server=on,wait=off`,
    `unix:${RUN_DIR}/screen.sock,server=on,wait=off`,
  ]);
  assert.equal(files.screen, `${RUN_DIR}/screen.sock`);
  assert.deepEqual(values(args, '-display'), ['none'], 'no window on the host');
});
