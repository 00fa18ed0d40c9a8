import type { LocalEngine, LocalVm } from '../../../src/protocol/index.ts';

/* What the page says, in plain words for the person at the PC (not an administrator). */

const DAY_MS = 86_400_000;

/** A VM's state in words. */
export function stateWords(vm: LocalVm): string {
  switch (vm.activity) {
    case 'running':
      return 'Running';
    case 'updating':
      return vm.update ? 'Running — an update is ready' : 'Updating';
    case 'rolled-back':
      return 'Running — the last update was undone';
    case 'locked':
      return 'Locked by your administrator';
    case 'killed':
      return 'Turned off for good by your administrator';
    case 'stopped':
      return 'Off';
    case 'crashed':
      return 'Stopped unexpectedly';
    default:
      return vm.activity;
  }
}

export function kindWords(vm: LocalVm): string {
  return vm.kind === 'personal' ? 'Personal' : 'Work';
}

/** A moment as the person reads it: the time today, else the date and time. */
export function when(ms: number, now: number): string {
  const d = new Date(ms);
  const sameDay = new Date(now).toDateString() === d.toDateString();
  const time = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  return sameDay
    ? `today at ${time}`
    : `${d.toLocaleDateString(undefined, { weekday: 'short', day: 'numeric', month: 'short' })} at ${time}`;
}

/** Whole days left until `ms` (a part of a day counts as one). */
export function daysLeft(ms: number, now: number): number {
  return Math.max(0, Math.ceil((ms - now) / DAY_MS));
}

/** What happened after the VM's last update. */
export function outcomeWords(vm: LocalVm, now: number): string | null {
  const o = vm.lastOutcome;
  if (!o) return null;
  if (o.result === 'updated') return `Updated to ${o.version} ${when(o.at, now)}.`;
  return (
    `The update to ${o.failed ?? 'a new version'} did not work, so ${vm.name} went back to ` +
    `${o.version} ${when(o.at, now)}, because ${o.reason ?? 'it did not start properly'}.`
  );
}

/** The lease in words: how long this PC may stay offline, and what happens then. */
export function leaseWords(engine: LocalEngine): { text: string; warning: boolean } | null {
  const lease = engine.lease;
  if (!lease) return null;
  if (lease.expired) {
    return {
      text:
        `${lease.vm} is off: this PC was offline too long. Connect it to your organisation's ` +
        'network and it starts again.',
      warning: true,
    };
  }
  const days = daysLeft(lease.expiresAt, engine.now);
  const left = days <= 1 ? 'less than a day' : `${days} days`;
  if (lease.warning) {
    return {
      text:
        `Connect this PC to your organisation's network soon: in ${left} ` +
        `(${when(lease.expiresAt, engine.now)}) ${lease.vm} stops until it can check in.`,
      warning: true,
    };
  }
  return {
    text: `${lease.vm} works offline for ${left} more; after that it stops until this PC checks in.`,
    warning: false,
  };
}

/** The connection to the organisation, in words. */
export function connectionWords(engine: LocalEngine): string {
  if (engine.online) return 'Online';
  return engine.lastContactAt === null
    ? 'Offline'
    : `Offline since ${when(engine.lastContactAt, engine.now)}`;
}
