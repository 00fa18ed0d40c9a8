import type { Transaction } from 'kysely';
import { isUpdateEvent, type DeviceEvent } from '../../protocol/index.ts';
import type { Database, DeviceUpdateStatus } from '../db/index.ts';

/*
 * Where a device's updates stand (`devices.update_status`) and the system version each of its
 * VMs last came up healthy on (`device_profiles.system_version_id`), kept as reports arrive so
 * that the console's status filters and version counts read columns, never events.
 */

/** The status after one update event, from the status before it. */
function next(current: DeviceUpdateStatus, type: string): DeviceUpdateStatus {
  switch (type) {
    case 'healthy':
      return 'idle';
    case 'failed':
    case 'rolled-back':
      return 'failed';
    default:
      // Progress: a failure stands until a VM comes up healthy again.
      return current === 'failed' ? 'failed' : 'updating';
  }
}

/**
 * Applies a device's newly stored events (not replays), in the device's order; call it in the
 * transaction that stored them, after the contact update that holds the device row's lock.
 */
export async function recordUpdateStatus(
  tx: Transaction<Database>,
  deviceId: string,
  events: readonly DeviceEvent[],
): Promise<void> {
  const updates = events.filter(isUpdateEvent).sort((a, b) => a.at - b.at);
  if (updates.length === 0) return;
  const row = await tx
    .selectFrom('devices')
    .select('update_status')
    .where('id', '=', deviceId)
    .executeTakeFirstOrThrow();
  let status = row.update_status;
  const healthy = new Map<string, string>();
  for (const e of updates) {
    status = next(status, e.type);
    if (e.type === 'healthy') {
      const system = e.data.volumes.find((v) => v.role === 'system');
      if (system !== undefined) healthy.set(e.data.profileId, system.versionId);
    }
  }
  if (status !== row.update_status) {
    await tx
      .updateTable('devices')
      .set({ update_status: status })
      .where('id', '=', deviceId)
      .execute();
  }
  for (const [profileId, versionId] of healthy) {
    await tx
      .updateTable('device_profiles')
      .set({ system_version_id: versionId })
      .where('device_id', '=', deviceId)
      .where('profile_id', '=', profileId)
      .execute();
  }
}
