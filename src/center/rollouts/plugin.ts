import type { FastifyPluginAsync } from 'fastify';
import { rolloutEndpoints as e } from '../../protocol/index.ts';
import { route } from '../http/route.ts';
import type { CenterContext } from '../context.ts';
import { actOnRollout, createRollout, type CommandResult } from './commands.ts';
import type { RolloutContext } from './model.ts';
import { getRollout, listRollouts } from './queries.ts';

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
    const result = await ctx.db
      .transaction()
      .execute((tx) => createRollout(ctx, tx, { ...caller, userId: caller.userId }, req.body));
    notify(result);
    return getRollout(ctx.db, result.rollout.id);
  });
  route(app, e.listRollouts, (req) => listRollouts(ctx.db, req.query));
  route(app, e.getRollout, (req) => getRollout(ctx.db, req.params.id));
  route(app, e.actOnRollout, async (req, caller) => {
    const result = await ctx.db
      .transaction()
      .execute((tx) =>
        actOnRollout(ctx, tx, caller, req.params.id, req.params.action, req.body?.reason),
      );
    notify(result);
    return getRollout(ctx.db, req.params.id);
  });

  /** After commit: tells the devices whose desired state the command changed. */
  function notify(result: CommandResult) {
    if (result.changed.length > 0) ctx.push.notify(result.changed);
  }
};
