import type { ExpressionBuilder } from 'kysely';
import type { DeviceStatusName } from '../../protocol/index.ts';
import type { Database, DeviceState, DeviceUpdateStatus } from '../db/index.ts';
import { TOKEN_TTL_MS } from '../devices/index.ts';

/*
 * A device's status word (`DEVICE_STATUS_NAMES`) from three columns, so that the console's
 * filters and counts are index range scans at 100,000 devices: `state`, `update_status` (kept
 * by report ingestion) and `last_contact_at` against the online window.
 */

/** What judging a device online needs: the time now and Center's online window. */
export interface StatusClock {
  nowMs: number;
  onlineWindowMs: number;
}

/**
 * How long after its last contact a device still counts as online. Polls of the desired state
 * do not move `last_contact_at` (that would make every 304 a write); a device in contact renews
 * its token before the token's 15 minutes run out, and reports as things happen. So: a token's
 * lifetime plus three poll intervals.
 */
export function onlineWindowMs(pollIntervalSeconds: number): number {
  return TOKEN_TTL_MS + 3 * pollIntervalSeconds * 1000;
}

interface StatusColumns {
  state: DeviceState;
  update_status: DeviceUpdateStatus;
  last_contact_at: number;
}

export function statusOf(row: StatusColumns, clock: StatusClock): DeviceStatusName {
  if (row.state !== 'active') return row.state;
  if (row.update_status !== 'idle') return row.update_status;
  return Number(row.last_contact_at) >= clock.nowMs - clock.onlineWindowMs ? 'online' : 'offline';
}

/** The lease a device holds as the console shows it: none once killed or retired. */
export function leaseOf(row: { state: DeviceState; lease_expires_at: number | null }) {
  if (row.state === 'killed' || row.state === 'retired' || row.lease_expires_at === null) {
    return null;
  }
  return Number(row.lease_expires_at);
}

/** The devices of one status, as a condition on `devices` (columns in index order). */
export function hasStatus(status: DeviceStatusName, clock: StatusClock) {
  return (eb: ExpressionBuilder<Database, 'devices'>) => {
    if (status === 'locked' || status === 'killed' || status === 'retired') {
      return eb('devices.state', '=', status);
    }
    const active = eb('devices.state', '=', 'active');
    if (status === 'failed' || status === 'updating') {
      return eb.and([active, eb('devices.update_status', '=', status)]);
    }
    const since = clock.nowMs - clock.onlineWindowMs;
    return eb.and([
      active,
      eb('devices.update_status', '=', 'idle'),
      eb('devices.last_contact_at', status === 'online' ? '>=' : '<', since),
    ]);
  };
}
