import type { DesiredVm } from '../protocol/index.ts';

/*
 * The offline lease of a VM (DESIGN §4): Center's signed desired state gives each managed VM a
 * lease of `days` from the document's `generatedAt`, renewed by every newer document. Engine
 * checks it against its monotonic record of time (time-mark.ts): in the warning window the
 * user is told, past it the VM is shut down and does not start until a newer verified document
 * renews it. A VM without a lease (the personal VM) is never held back.
 */

export type LeaseState = 'none' | 'valid' | 'warning' | 'expired';

/**
 * How long before a lease runs out the user is warned: a tenth of the lease, at most a day
 * (a 30-day lease warns a day ahead, a 1-day lease 2.4 hours ahead).
 */
export function leaseWarningMs(lease: { days: number }): number {
  return Math.min(24 * 60 * 60_000, (lease.days * 24 * 60 * 60_000) / 10);
}

/** Where a VM's lease stands at `leaseNow`: no lease at all, valid, warning, expired. */
export function leaseStatus(vm: Pick<DesiredVm, 'lease'>, leaseNow: number): LeaseState {
  if (!vm.lease) return 'none';
  if (leaseNow >= vm.lease.expiresAt) return 'expired';
  return leaseNow >= vm.lease.expiresAt - leaseWarningMs(vm.lease) ? 'warning' : 'valid';
}
