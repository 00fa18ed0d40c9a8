import type { FastifyPluginAsync } from 'fastify';
import { fleetEndpoints as e } from '../../protocol/index.ts';
import { route } from '../http/route.ts';
import type { CenterContext } from '../context.ts';
import { createApp, deleteApp, getApp, listApps, updateApp } from './apps.ts';
import { issueCommand, listCommands } from './commands.ts';
import type { FleetDeps } from './common.ts';
import { getDevice, listDevices, retireDevice, updateDevice } from './devices.ts';
import { createGroup, deleteGroup, getGroup, listGroups, updateGroup } from './groups.ts';
import { fleetHistory, SNAPSHOT_CHECK_MS, takeSnapshotIfDue } from './history.ts';
import { registerFleetMetrics } from './metrics.ts';
import { onlineWindowMs, type StatusClock } from './status.ts';
import { fleetSummary } from './summary.ts';
import {
  createProfile,
  deleteProfile,
  getProfile,
  listProfiles,
  updateProfile,
} from './profiles.ts';
import { issueEnrolmentToken, listEnrolmentTokens, revokeEnrolmentToken } from './tokens.ts';

/**
 * The fleet admin routes under `/api/v1/admin/` (see `fleetEndpoints` for each one's role):
 * groups, the app catalog, profiles, devices and their commands, enrolment tokens.
 */
export const fleetRoutes: FastifyPluginAsync<CenterContext> = async (app, deps) => {
  const { db } = deps.database;
  const nowMs = () => deps.now().getTime();
  const fleet = (): FleetDeps => ({ db, push: deps.push, nowMs: nowMs() });
  if (deps.metrics !== undefined) registerFleetMetrics(deps.metrics, db);

  route(app, e.listGroups, async () => ({ groups: await listGroups(db) }));
  route(app, e.createGroup, (req, caller) => createGroup(fleet(), caller, req.body));
  route(app, e.getGroup, (req) => getGroup(db, req.params.id));
  route(app, e.updateGroup, (req, caller) => updateGroup(fleet(), caller, req.params.id, req.body));
  route(app, e.deleteGroup, (req, caller) => deleteGroup(fleet(), caller, req.params.id));

  route(app, e.listApps, async () => ({ apps: await listApps(db) }));
  route(app, e.createApp, (req, caller) => createApp(fleet(), caller, req.body));
  route(app, e.getApp, (req) => getApp(db, req.params.id));
  route(app, e.updateApp, (req, caller) => updateApp(fleet(), caller, req.params.id, req.body));
  route(app, e.deleteApp, (req, caller) => deleteApp(fleet(), caller, req.params.id));

  route(app, e.listProfiles, async () => ({ profiles: await listProfiles(db) }));
  route(app, e.createProfile, (req, caller) => createProfile(fleet(), caller, req.body));
  route(app, e.getProfile, (req) => getProfile(db, req.params.id));
  route(app, e.updateProfile, (req, caller) =>
    updateProfile(fleet(), caller, req.params.id, req.body),
  );
  route(app, e.deleteProfile, (req, caller) => deleteProfile(fleet(), caller, req.params.id));

  const windowMs = onlineWindowMs(deps.config.pollIntervalSeconds);
  const clock = (): StatusClock => ({ nowMs: nowMs(), onlineWindowMs: windowMs });

  route(app, e.fleetSummary, () => fleetSummary(db, clock()));
  route(app, e.fleetHistory, (req) => fleetHistory(db, req.query.days, nowMs()));
  // Snapshots for the chart are taken hourly whether or not anyone looks (see history.ts).
  const snapshots = setInterval(() => {
    takeSnapshotIfDue(db, nowMs()).catch((err: unknown) => {
      app.log.warn({ err }, 'fleet version snapshot failed; the next request or hour retries');
    });
  }, SNAPSHOT_CHECK_MS);
  snapshots.unref();
  app.addHook('onClose', async () => clearInterval(snapshots));

  route(app, e.listDevices, (req) => listDevices(db, req.query, clock()));
  route(app, e.getDevice, (req) => getDevice(db, req.params.id, clock()));
  route(app, e.updateDevice, (req, caller) =>
    updateDevice(fleet(), caller, req.params.id, req.body, clock()),
  );
  route(app, e.retireDevice, (req, caller) => retireDevice(fleet(), caller, req.params.id));
  route(app, e.issueCommand, (req, caller) =>
    issueCommand(fleet(), caller, req.params.id, req.body),
  );
  route(app, e.listCommands, async (req) => ({ commands: await listCommands(db, req.params.id) }));

  route(app, e.createEnrolmentToken, (req, caller) =>
    issueEnrolmentToken(fleet(), caller, req.body),
  );
  route(app, e.listEnrolmentTokens, async () => ({ tokens: await listEnrolmentTokens(db) }));
  route(app, e.revokeEnrolmentToken, (req, caller) =>
    revokeEnrolmentToken(fleet(), caller, req.params.id),
  );
};
