import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { BulkheadError, ErrorCodes, errnoCode } from '../../protocol/index.ts';

/*
 * Network isolation of a `nat` VM (DESIGN §4): slirp alone gives the guest the host's own
 * services (10.0.2.2 is the host's 127.0.0.1, and every address of the host answers), and
 * through them whatever the other VMs expose. So a nat VM's QEMU runs in a network namespace of
 * its own (`bhd-v<hash of the run directory>`), whose only way out is a veth uplink to the host
 * (`bhd-v…` on the host's side, `uplink` inside, a /30 from 10.213.0.0/16). Inside it, slirp's
 * 10.0.2.2 is the namespace's own loopback, where nothing listens. On the host one nftables
 * table, `inet bhd-isolation`, the same for every VM:
 *   - input: anything arriving from an uplink is dropped: no service of the host (on any of its
 *     addresses, including the other uplinks' host sides) is reachable from a VM;
 *   - forward: an uplink may not reach another uplink nor 10.213.0.0/16; nothing from outside
 *     enters an uplink except replies (conntrack);
 *   - postrouting: what leaves through another interface is masqueraded.
 * IPv4 forwarding is turned on (net.ipv4.ip_forward), as for any router. The namespace and its
 * uplink go when the VM stops (deleting the namespace deletes both ends of the veth) and
 * namespaces with no process left in them are removed when a driver starts (`removeStale`).
 */

const run = promisify(execFile);

/** Prefix of every namespace and host-side uplink a sandbox makes. */
export const SANDBOX_PREFIX = 'bhd-v';
/** The nftables table (family inet) holding the isolation rules. */
export const NFT_TABLE = 'bhd-isolation';
/** Where the uplinks' /30s are taken from. */
export const UPLINK_RANGE = '10.213.0.0/16';

/** How a VM's process is confined to a network of its own. */
export interface NetworkSandbox {
  /**
   * Makes (or finds again) the namespace of the VM whose run directory is `runDir`, with its
   * uplink and the host's rules, and returns the argv prefix its QEMU is started under
   * (`ip netns exec <ns>`).
   * @throws BulkheadError ERR_TOOL_MISSING without `ip` or `nft`; ERR_INTERNAL when the
   *   kernel refuses (not root, say), naming the command.
   */
  enter(runDir: string): Promise<string[]>;
  /** Removes the VM's namespace and uplink; nothing for one already gone. Never throws. */
  leave(runDir: string): Promise<void>;
  /** Removes every sandbox namespace no process is in any more; returns their names. */
  removeStale(): Promise<string[]>;
}

/** The namespace (and host-side uplink) name of the VM in `runDir`: at most 15 characters. */
export function sandboxName(runDir: string): string {
  return SANDBOX_PREFIX + createHash('sha256').update(runDir).digest('hex').slice(0, 8);
}

/** The host's nftables rules, as `nft -f` reads them (replacing any earlier copy). */
export function isolationRules(): string {
  const uplinks = `"${SANDBOX_PREFIX}*"`;
  return [
    `table inet ${NFT_TABLE}`,
    `delete table inet ${NFT_TABLE}`,
    `table inet ${NFT_TABLE} {`,
    '  chain input {',
    '    type filter hook input priority filter - 10; policy accept;',
    // Everything addressed to the host itself (fib daddr type local), whichever address.
    `    iifname ${uplinks} drop`,
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter - 10; policy accept;',
    `    iifname ${uplinks} oifname ${uplinks} drop`,
    `    iifname ${uplinks} ip daddr ${UPLINK_RANGE} drop`,
    `    iifname ${uplinks} fib daddr type local drop`,
    `    oifname ${uplinks} ct state established,related accept`,
    `    oifname ${uplinks} drop`,
    '  }',
    '  chain postrouting {',
    '    type nat hook postrouting priority srcnat; policy accept;',
    `    ip saddr ${UPLINK_RANGE} oifname != ${uplinks} masquerade`,
    '  }',
    '}',
    '',
  ].join('\n');
}

async function tool(command: string, args: string[], pkg: string, input?: string) {
  try {
    const child = run(command, args, { timeout: 20_000 });
    if (input !== undefined) {
      child.child.stdin?.end(input);
    }
    return (await child).stdout;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') {
      throw new BulkheadError(ErrorCodes.TOOL_MISSING, `${command} was not found`, {
        hint: `install the Debian package ${pkg}`,
        cause: err,
      });
    }
    const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim();
    throw new BulkheadError(
      ErrorCodes.INTERNAL,
      `network isolation: ${command} ${args.join(' ')} failed: ${stderr || (err as Error).message}` +
        (process.getuid?.() === 0 ? '' : ' (Engine must run as root to isolate a nat VM)'),
      { cause: err },
    );
  }
}

const ip = (args: string[]) => tool('ip', args, 'iproute2');

/** Sandboxes in network namespaces with nftables rules on the host (see the top of the file). */
export class NetnsSandbox implements NetworkSandbox {
  /** One set-up at a time: two VMs starting together must not take the same /30. */
  #queue: Promise<unknown> = Promise.resolve();

  enter(runDir: string): Promise<string[]> {
    const next = this.#queue.then(() => this.#enter(runDir));
    this.#queue = next.catch(() => {});
    return next;
  }

  async #enter(runDir: string): Promise<string[]> {
    const name = sandboxName(runDir);
    await tool('nft', ['-f', '-'], 'nftables', isolationRules());
    await writeFile('/proc/sys/net/ipv4/ip_forward', '1\n');
    if (!(await namespaces()).includes(name)) {
      await ip(['netns', 'add', name]);
      try {
        const [host, inside] = await freeSubnet();
        await ip(['link', 'add', name, 'type', 'veth', 'peer', 'name', 'uplink', 'netns', name]);
        await ip(['addr', 'add', `${host}/30`, 'dev', name]);
        await ip(['link', 'set', name, 'up']);
        await ip(['-n', name, 'link', 'set', 'lo', 'up']);
        await ip(['-n', name, 'addr', 'add', `${inside}/30`, 'dev', 'uplink']);
        await ip(['-n', name, 'link', 'set', 'uplink', 'up']);
        await ip(['-n', name, 'route', 'add', 'default', 'via', host]);
      } catch (err) {
        await this.leave(runDir);
        throw err;
      }
    }
    return ['ip', 'netns', 'exec', name];
  }

  async leave(runDir: string): Promise<void> {
    const name = sandboxName(runDir);
    await ip(['netns', 'delete', name]).catch(() => {});
    // A namespace some process still holds keeps its veth; the host's end goes here.
    await ip(['link', 'delete', name]).catch(() => {});
  }

  async removeStale(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await namespaces().catch(() => [])) {
      if (!name.startsWith(SANDBOX_PREFIX)) continue;
      const pids = (await ip(['netns', 'pids', name]).catch(() => 'unknown')).trim();
      if (pids !== '') continue;
      await ip(['netns', 'delete', name]).catch(() => {});
      removed.push(name);
    }
    return removed;
  }
}

async function namespaces(): Promise<string[]> {
  const out = await ip(['netns', 'list']);
  return out
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

/** The lowest /30 of UPLINK_RANGE no interface of the host uses: [host side, VM side]. */
async function freeSubnet(): Promise<[string, string]> {
  const used = new Set<number>();
  for (const m of (await ip(['-4', '-o', 'addr', 'show'])).matchAll(
    /inet 10\.213\.(\d+)\.(\d+)/g,
  )) {
    used.add((Number(m[1]) * 256 + Number(m[2])) >> 2);
  }
  for (let i = 0; i < 16384; i++) {
    if (used.has(i)) continue;
    const base = i * 4;
    const at = (n: number) => `10.213.${(base + n) >> 8}.${(base + n) & 255}`;
    return [at(1), at(2)];
  }
  throw new BulkheadError(ErrorCodes.INTERNAL, `no free /30 left in ${UPLINK_RANGE}`);
}

export function createNetnsSandbox(): NetnsSandbox {
  return new NetnsSandbox();
}
