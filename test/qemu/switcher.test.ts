import assert from 'node:assert/strict';
import { networkInterfaces } from 'node:os';
import { test } from 'node:test';
import { launchBrowser } from '../support/browser.ts';
import { screenVariance, timeToScreen } from '../support/switcher.ts';
import { startTwoWorldsPc } from '../support/two-worlds-pc.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

/*
 * The person at the PC and the switcher, for real: Engine (a process, as on a PC) runs a work
 * VM and a personal VM from Center on QEMU; Debian's Chromium opens the address `bulkhead
 * engine switcher` prints, sees both VMs, clicks the work VM, sees its screen (pixels read
 * back from noVNC's canvas), types into it and finds the typed command's effect through the
 * guest agent, in that VM only. Neither guest reaches the switcher's port. A v2 published with
 * a day's switch deadline waits for the user; "Restart now" on the page installs it. The PC is
 * set up by test/support/two-worlds-pc.ts, which the switcher's benchmark shares.
 */

/** The host's IPv4 addresses other than loopback and Bulkhead's own links. */
function hostAddresses(): string[] {
  return Object.entries(networkInterfaces())
    .filter(([name]) => !name.startsWith('bhd-'))
    .flatMap(([, addrs]) => addrs ?? [])
    .filter((a) => a.family === 'IPv4' && !a.internal)
    .map((a) => a.address);
}

test('the user sees both VMs, uses the work VM through its screen, and restarts it for an update; no guest reaches the switcher', async (t) => {
  const pc = await startTwoWorldsPc();
  t.after(() => pc.stop());
  const { guestSh, failWithLog, push } = pc;
  // The shell on the work VM's screen has opened tty1: typed text has somewhere to go.
  await waitFor('the shell on tty1 of the work VM', async () =>
    (await guestSh('work', 'ls -l /proc/[0-9]*/fd/ 2>/dev/null')).stdout.includes('/dev/tty1'),
  );

  // The address the PC's kiosk opens, as `bulkhead engine switcher` prints it.
  const address = pc.switcherAddress;
  const switcher = /^http:\/\/127\.0\.0\.1:(\d+)\/\?key=[A-Za-z0-9_-]{43}$/.exec(address);
  assert.ok(switcher, address);
  const switcherPort = Number(switcher[1]);
  assert.ok(!pc.engineLog().includes(new URL(address).searchParams.get('key')!), 'key in the log');

  const browser = await launchBrowser();
  t.after(() => browser.close());
  const page = await browser.newPage();
  const pageErrors: string[] = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });
  await page.goto(address);
  assert.equal(page.url(), `http://127.0.0.1:${switcherPort}/`, 'the key left the address bar');

  // Both VMs, with their kind, state and version in words.
  const workCard = page.locator('li.card', {
    has: page.getByRole('button', { name: 'Open work' }),
  });
  const mineCard = page.locator('li.card', {
    has: page.getByRole('button', { name: 'Open mine' }),
  });
  await workCard.waitFor();
  await mineCard.waitFor();
  assert.match(await workCard.innerText(), /Work[\s\S]*Running[\s\S]*os@1/);
  assert.match(await mineCard.innerText(), /Personal[\s\S]*Running[\s\S]*home@1/);
  assert.match(await page.locator('.connection').innerText(), /^Online$/);
  // The lease is the work VM's: the personal VM does not stop when it runs out.
  await page.getByText(/works offline for/).waitFor();
  assert.match(await page.getByText(/works offline for/).innerText(), /^work works offline/);

  // One click: the work VM's screen, full-page, not blank.
  const ms = await timeToScreen(page, 'work', { timeoutMs: PATIENCE_MS });
  t.diagnostic(`the work VM's screen showed ${Math.round(ms)} ms after the click`);
  assert.ok((await screenVariance(page, 'work')) > 0.5);
  assert.equal(await page.locator('.screen canvas').count(), 1, 'one VM connected at a time');

  // Typed on the page's keyboard: the command runs in the work VM, and only there.
  const marker = `/data/typed-on-the-switcher`;
  await page.keyboard.type(`touch ${marker}\n`);
  await waitFor(
    'the typed command to run in the work VM',
    async () => (await guestSh('work', `ls ${marker}`)).exitCode === 0,
  );
  assert.notEqual((await guestSh('mine', `ls ${marker}`)).exitCode, 0, 'typed into mine too');

  // The shortcut switches VMs (it never reaches a guest); one connection again.
  await page.keyboard.press('Control+Alt+ArrowRight');
  await page.locator('.screen[data-vm="mine"][data-state="connected"]').waitFor();
  assert.equal(await page.locator('.screen canvas').count(), 1);
  await page.keyboard.press('Control+Alt+1');
  await page.locator('.screen[data-vm="work"][data-state="connected"]').waitFor();

  // Neither guest reaches the switcher: not through slirp's gateway (the host's loopback for
  // slirp), not at the host's addresses. The personal VM is nat, in its own namespace; the work
  // VM restricted.
  const reach = (to: string, label: string) =>
    `($B sleep 10 | $B nc -w 15 ${to} ${switcherPort} 2>&1 && echo "reached ${label}" || echo "blocked ${label}") & `;
  const targets = [['10.0.2.2', 'gateway'], ...hostAddresses().map((a) => [a, `host ${a}`])];
  for (const vm of ['mine', 'work']) {
    const out = await guestSh(
      vm,
      'B=/bin/busybox; ' +
        '$B ip link set eth0 up && $B ip addr add 10.0.2.15/24 dev eth0 && ' +
        '$B ip route add default via 10.0.2.2; ' +
        targets.map(([to, label]) => reach(to!, label!)).join('') +
        'wait',
    );
    assert.doesNotMatch(out.stdout, /^reached/m, `${vm}: ${out.stdout}`);
    // Refused or timed out at the host, not failed for want of a route in the guest.
    assert.doesNotMatch(out.stdout, /unreachable/i, `${vm}: ${out.stdout}`);
    for (const [, label] of targets) {
      assert.match(out.stdout, new RegExp(`^blocked ${label}$`, 'm'), `${vm}: ${out.stdout}`);
    }
  }

  // A v2 of the work VM's image: staged, it waits for the user, who restarts now.
  await push('os', '2');
  const prompt = page.getByRole('group', { name: 'Update for work' });
  await prompt.waitFor({ timeout: PATIENCE_MS }).catch(failWithLog);
  assert.match(await prompt.innerText(), /An update is ready for work \(os@2\)/);
  assert.match(await prompt.innerText(), /restarts by itself/);
  assert.match(
    (await guestSh('work', 'cat /etc/os-release')).stdout,
    /VERSION_ID=1\n/,
    'the update waits for the user',
  );
  await prompt.getByRole('button', { name: 'Restart now' }).click();
  await page.getByText('Restarting work to install the update').waitFor();
  await page
    .getByText(/^Updated to os@2 /)
    .waitFor({ timeout: PATIENCE_MS })
    .catch(failWithLog);
  assert.match((await guestSh('work', 'cat /etc/os-release')).stdout, /VERSION_ID=2\n/);
  // The screen comes back by itself after the restart.
  await page.locator('.screen[data-vm="work"][data-state="connected"]').waitFor();
  await waitFor('the restarted screen', async () => (await screenVariance(page, 'work')) > 0.5);

  // Back on the overview: the card says what happened.
  await page.keyboard.press('Control+Alt+0');
  await workCard.waitFor();
  assert.match(await workCard.innerText(), /os@2[\s\S]*Updated to os@2/);
  assert.deepEqual(pageErrors, [], 'the page ran without errors');
});
