import type { FastifyPluginAsync } from 'fastify';
import { rolloutEndpoints as e } from '../../protocol/index.ts';
import { route } from '../http/route.ts';
import type { CenterContext } from '../context.ts';
import { actOnRollout, createRollout } from './commands.ts';
import type { RolloutContext } from './model.ts';
import { getRollout, listRollouts } from './queries.ts';
import { listDeviceEvents, listRolloutDevices } from './trails.ts';

/**
 * The rollout admin routes, under `/api/v1/admin/rollouts`: viewers read, operators create and
 * act (see `rolloutEndpoints`).
 */
export const rolloutRoutes: FastifyPluginAsync<CenterContext> = async (app, deps) => {
  const ctx: RolloutContext = {
    db: deps.database.db,
    dialect: deps.database.dialect,
    push: deps.push,
    now: deps.now,
    log: deps.log,
  };

  route(app, e.createRollout, async (req, caller) => {
    const rollout = await createRollout(ctx, caller, req.body);
    return getRollout(ctx.db, rollout.id);
  });
  route(app, e.listRollouts, (req) => listRollouts(ctx.db, req.query));
  route(app, e.getRollout, (req) => getRollout(ctx.db, req.params.id));
  route(app, e.actOnRollout, async (req, caller) => {
    await actOnRollout(ctx, caller, req.params.id, req.params.action, req.body?.reason);
    return getRollout(ctx.db, req.params.id);
  });
  route(app, e.listRolloutDevices, (req) => listRolloutDevices(ctx.db, req.params.id, req.query));
  route(app, e.listDeviceEvents, (req) => listDeviceEvents(ctx.db, req.params.id, req.query));
};
