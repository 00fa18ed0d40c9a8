import {
  BulkheadError,
  ErrorCodes,
  type ChooseAppsRequest,
  type ChooseAppsResponse,
} from '../../protocol/index.ts';
import { markChanged, runCommand, type CommandDeps } from '../changes/index.ts';

/**
 * The PC user's choice of one VM's optional apps (through Engine), where the profile lets the
 * user choose (`profiles.user_apps`): replaces the device's apps chosen for that profile, marks
 * this device alone changed, and is audited as the device. Administrators choose through
 * `PATCH /admin/devices/:id` whatever the profile says.
 *
 * @throws BulkheadError `ERR_VALIDATION` naming the field for a profile the device does not run
 *   or an app the profile does not offer as optional; `ERR_FORBIDDEN` when the profile leaves
 *   the choice to administrators.
 */
export async function chooseApps(
  deps: CommandDeps,
  deviceId: string,
  input: ChooseAppsRequest,
): Promise<ChooseAppsResponse> {
  const spec = { action: 'device.apps.choose', target: 'device', id: deviceId };
  return runCommand(deps, { label: `device:${deviceId}` }, spec, async (trx, at) => {
    const profile = await trx
      .selectFrom('device_profiles as dp')
      .innerJoin('profiles as p', 'p.id', 'dp.profile_id')
      .select(['p.id', 'p.name', 'p.user_apps'])
      .where('dp.device_id', '=', deviceId)
      .where('p.id', '=', input.profileId)
      .executeTakeFirst();
    if (profile === undefined) {
      throw new BulkheadError(
        ErrorCodes.VALIDATION,
        'body.profileId: this device does not run that profile',
      );
    }
    if (profile.user_apps !== 'on') {
      throw new BulkheadError(
        ErrorCodes.FORBIDDEN,
        `profile "${profile.name}" leaves the choice of apps to administrators`,
      );
    }
    const offered = await trx
      .selectFrom('profile_apps as pa')
      .innerJoin('apps as a', 'a.id', 'pa.app_id')
      .select(['a.id', 'a.name'])
      .where('pa.profile_id', '=', profile.id)
      .where('pa.mode', '=', 'optional')
      .orderBy('a.name')
      .execute();
    const offeredNames = offered.map((a) => a.name);
    const ids = input.apps.map((name, i) => {
      const app = offered.find((a) => a.name === name);
      if (app === undefined) {
        throw new BulkheadError(
          ErrorCodes.VALIDATION,
          `body.apps.${i}: "${name}" is not an optional app of profile "${profile.name}"; ` +
            `it offers ${offeredNames.join(', ') || 'none'}`,
        );
      }
      return app.id;
    });
    const current = await trx
      .selectFrom('device_apps')
      .select('app_id')
      .where('device_id', '=', deviceId)
      .where('profile_id', '=', profile.id)
      .execute();
    const nameOf = (id: string) => offered.find((a) => a.id === id)?.name ?? id;
    const before = current.map((r) => nameOf(r.app_id)).sort();
    const after = ids.map(nameOf).sort();
    const result = { profileId: profile.id, chosen: after, offered: offeredNames };
    if (before.join() === after.join()) return { result, unchanged: true };
    await trx
      .deleteFrom('device_apps')
      .where('device_id', '=', deviceId)
      .where('profile_id', '=', profile.id)
      .execute();
    if (ids.length > 0) {
      await trx
        .insertInto('device_apps')
        .values(
          ids.map((appId) => ({ device_id: deviceId, profile_id: profile.id, app_id: appId })),
        )
        .execute();
    }
    await markChanged(trx, { devices: [deviceId] }, at);
    return {
      result,
      before: { profile: profile.name, apps: before },
      after: { profile: profile.name, apps: after },
    };
  });
}
