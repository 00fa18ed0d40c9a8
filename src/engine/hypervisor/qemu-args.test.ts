import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IsolationPolicySchema } from '../../protocol/index.ts';
import { buildQemuArgs, buildSwtpmArgs, diskSerial, HYPERV_FLAGS } from './qemu-args.ts';
import type { VmMachine, VmSpec } from './types.ts';

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

test('no clipboard, USB passthrough or shared folders unless the policy says so', () => {
  const plain = buildQemuArgs(spec(), { accelerator: 'tcg' }).args.join(' ');
  for (const absent of ['vdagent', 'usb-host', 'virtfs', '9p', 'vhost-user-fs', 'spice']) {
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

// Firmware, TPM and guest-OS hints.

const TPM_KEY = Buffer.alloc(32, 0xab);

function machine(m: Partial<VmMachine> = {}): VmSpec {
  return spec(
    {},
    {
      machine: {
        firmware: 'bios',
        secureBoot: false,
        os: 'linux',
        devices: 'virtio',
        ...m,
      },
    },
  );
}

test('bios (the default): no pflash, no SMM, no TPM, virtio devices, no Hyper-V flags', () => {
  for (const s of [spec(), machine()]) {
    const { args } = buildQemuArgs(s, { accelerator: 'tcg' });
    assert.deepEqual(values(args, '-machine'), ['q35']);
    assert.ok(!args.some((a) => a.includes('OVMF') || a.includes('tpm')));
    assert.deepEqual(values(args, '-cpu'), ['max']);
    assert.deepEqual(values(args, '-rtc'), []);
    assert.ok(values(args, '-device').includes('virtio-net-pci,netdev=net0'));
  }
});

test('uefi: OVMF code read-only and the VM own variable store writable, on pflash', () => {
  const { args } = buildQemuArgs(machine({ firmware: 'uefi', varsPath: 'vm/efi-vars.fd' }), {
    accelerator: 'tcg',
  });
  const blockdevs = values(args, '-blockdev');
  assert.ok(
    blockdevs.includes(
      'driver=file,node-name=fw-code-file,filename=/usr/share/OVMF/OVMF_CODE_4M.fd,read-only=on',
    ),
  );
  assert.ok(
    blockdevs.includes('driver=file,node-name=fw-vars-file,filename=vm/efi-vars.fd,read-only=off'),
  );
  assert.deepEqual(values(args, '-machine'), ['q35', 'pflash0=fw-code,pflash1=fw-vars']);
  assert.deepEqual(values(args, '-global'), []);
});

test('uefi with Secure Boot: the secboot build, SMM and a secure pflash', () => {
  const { args } = buildQemuArgs(
    machine({ firmware: 'uefi', secureBoot: true, varsPath: 'vm/efi-vars.fd' }),
    { accelerator: 'kvm' },
  );
  assert.deepEqual(values(args, '-machine'), ['q35,smm=on', 'pflash0=fw-code,pflash1=fw-vars']);
  assert.deepEqual(values(args, '-global'), ['driver=cfi.pflash01,property=secure,value=on']);
  assert.ok(values(args, '-blockdev').some((b) => b.includes('/OVMF_CODE_4M.secboot.fd,')));
});

test('Secure Boot without uefi, and uefi without a variable store, are refused', () => {
  assert.throws(
    () => buildQemuArgs(machine({ secureBoot: true }), { accelerator: 'tcg' }),
    /secureBoot needs machine.firmware uefi/,
  );
  assert.throws(
    () => buildQemuArgs(machine({ firmware: 'uefi' }), { accelerator: 'tcg' }),
    /varsPath is required/,
  );
});

test('tpm: a TPM 2.0 on a CRB device through the swtpm socket in the run directory', () => {
  const s = machine({ tpm: { stateDir: 'vm/tpm', key: TPM_KEY } });
  const { args } = buildQemuArgs(s, { accelerator: 'tcg' });
  assert.ok(values(args, '-chardev').includes(`socket,id=chrtpm,path=${RUN_DIR}/swtpm.sock`));
  assert.deepEqual(values(args, '-tpmdev'), ['emulator,id=tpm0,chardev=chrtpm']);
  assert.ok(values(args, '-device').includes('tpm-crb,tpmdev=tpm0'));
  const swtpm = buildSwtpmArgs(s);
  assert.deepEqual(swtpm.slice(0, 2), ['socket', '--tpm2']);
  assert.deepEqual(values(swtpm, '--tpmstate'), ['dir=vm/tpm,mode=0600']);
  assert.deepEqual(values(swtpm, '--ctrl'), [`type=unixio,path=${RUN_DIR}/swtpm.sock,mode=0600`]);
  assert.deepEqual(values(swtpm, '--key'), ['fd=3,mode=aes-256-cbc,format=binary']);
  assert.ok(swtpm.includes('--terminate'));
  assert.deepEqual(buildSwtpmArgs(machine()), []);
});

test('the TPM key and the data key never appear in QEMU or swtpm arguments', () => {
  const s = machine({
    firmware: 'uefi',
    varsPath: 'vm/efi-vars.fd',
    tpm: { stateDir: 'vm/tpm', key: TPM_KEY },
  });
  const all = [...buildQemuArgs(s, { accelerator: 'tcg' }).args, ...buildSwtpmArgs(s)].join(' ');
  for (const key of [TPM_KEY, Buffer.alloc(32, 1)]) {
    for (const form of ['hex', 'base64', 'latin1'] as const) {
      assert.ok(!all.includes(key.toString(form)), `key in ${form} found in argv`);
    }
  }
});

test('a TPM key that is not 32 bytes is refused', () => {
  assert.throws(
    () =>
      buildQemuArgs(machine({ tpm: { stateDir: 'vm/tpm', key: Buffer.alloc(16) } }), {
        accelerator: 'tcg',
      }),
    /32 bytes/,
  );
});

test('windows: Hyper-V enlightenments on the CPU (KVM and TCG) and a local-time clock', () => {
  for (const [accelerator, cpu] of [
    ['kvm', 'host'],
    ['tcg', 'max'],
  ] as const) {
    const { args } = buildQemuArgs(machine({ os: 'windows' }), { accelerator });
    assert.deepEqual(values(args, '-cpu'), [`${cpu},${HYPERV_FLAGS.join(',')}`]);
    assert.deepEqual(values(args, '-rtc'), ['base=localtime']);
  }
  assert.deepEqual(HYPERV_FLAGS, ['hv_relaxed', 'hv_vapic', 'hv_spinlocks=0x1fff', 'hv_time']);
});

test('every VM has a USB tablet on xHCI, its absolute pointer, whatever its devices', () => {
  for (const devices of ['virtio', 'compat'] as const) {
    const { args } = buildQemuArgs(machine({ devices }), { accelerator: 'tcg' });
    const all = values(args, '-device');
    assert.ok(all.includes('qemu-xhci,id=usb0'), devices);
    assert.ok(all.includes('usb-tablet,bus=usb0.0,id=tablet'), devices);
  }
  assert.ok(
    values(buildQemuArgs(spec(), { accelerator: 'tcg' }).args, '-device').includes(
      'usb-tablet,bus=usb0.0,id=tablet',
    ),
  );
});

test('compat devices: AHCI disks and an e1000 NIC', () => {
  const { args } = buildQemuArgs(machine({ devices: 'compat' }), { accelerator: 'tcg' });
  const devices = values(args, '-device');
  assert.ok(
    devices.includes('ide-hd,bus=ide.0,drive=disk0,serial=system,id=vd-system,bootindex=0'),
  );
  assert.ok(devices.includes('ide-hd,bus=ide.2,drive=disk2,serial=data,id=vd-data'));
  assert.ok(!devices.some((d) => d.startsWith('virtio-blk') || d.startsWith('virtio-net')));
  assert.ok(devices.includes('e1000,netdev=net0'));
  assert.ok(devices.includes('qemu-xhci,id=usb0'));
  // With USB passthrough too: one controller.
  const both = buildQemuArgs(
    spec(
      { usbDevices: ['046d:c52b'] },
      { machine: { firmware: 'bios', secureBoot: false, os: 'linux', devices: 'compat' } },
    ),
    { accelerator: 'tcg' },
  );
  assert.equal(values(both.args, '-device').filter((d) => d.startsWith('qemu-xhci')).length, 1);
});

test('every combination builds, with its key arguments', () => {
  for (const firmware of ['bios', 'uefi'] as const) {
    for (const secureBoot of firmware === 'uefi' ? [false, true] : [false]) {
      for (const tpm of [false, true]) {
        for (const os of ['linux', 'windows'] as const) {
          for (const devices of ['virtio', 'compat'] as const) {
            const { args } = buildQemuArgs(
              machine({
                firmware,
                secureBoot,
                os,
                devices,
                ...(firmware === 'uefi' ? { varsPath: 'vm/vars.fd' } : {}),
                ...(tpm ? { tpm: { stateDir: 'vm/tpm', key: TPM_KEY } } : {}),
              }),
              { accelerator: 'tcg' },
            );
            const line = args.join(' ');
            assert.equal(line.includes('pflash0=fw-code'), firmware === 'uefi');
            assert.equal(line.includes('smm=on'), secureBoot);
            assert.equal(line.includes('tpm-crb'), tpm);
            assert.equal(line.includes('hv_relaxed'), os === 'windows');
            assert.equal(line.includes('e1000'), devices === 'compat');
            assert.equal(line.includes('virtio-blk-pci'), devices === 'virtio');
          }
        }
      }
    }
  }
});

test("the guest's logs are appended to, so Engine can cut a flooded one (capGuestLog)", () => {
  const { args } = buildQemuArgs(spec({ network: 'none' }), {
    accelerator: 'tcg',
    consoleLog: '/var/lib/bulkhead/vms/work/consoles/boot,1.log',
  });
  const chardevs = values(args, '-chardev');
  assert.ok(
    chardevs.includes(
      'file,id=console,path=/var/lib/bulkhead/vms/work/consoles/boot,,1.log,append=on',
    ),
    chardevs.join(' '),
  );
  assert.ok(chardevs.some((c) => /^file,id=fwlog,path=.*firmware\.log,append=on$/.test(c)));
  assert.deepEqual(values(args, '-serial'), ['chardev:console']);
});
