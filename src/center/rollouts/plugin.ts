import type { FastifyPluginAsync } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import {
  CreateRolloutRequestSchema,
  IdParamsSchema,
  RolloutActionRequestSchema,
  RolloutActionSchema,
  RolloutDetailSchema,
  RolloutListQuerySchema,
  RolloutListSchema,
} from '../../protocol/index.ts';
import { callerOf } from '../admin/plugin.ts';
import type { CenterContext } from '../server.ts';
import { actOnRollout, createRollout, type CommandResult } from './commands.ts';
import type { RolloutContext } from './model.ts';
import { getRollout, listRollouts } from './queries.ts';

/**
 * The rollout admin routes, under `/api/v1/admin/rollouts`. Register inside the admin plugin's
 * scope, whose hook checks each route's role: viewers read, operators create and act.
 */
export const rolloutRoutes: FastifyPluginAsync<CenterContext> = async (parent, deps) => {
  const app = parent.withTypeProvider<ZodTypeProvider>();
  const ctx: RolloutContext = {
    db: deps.database.db,
    dialect: deps.database.dialect,
    push: deps.push,
    now: deps.now,
    log: deps.log,
  };
  const prefix = '/api/v1/admin/rollouts';
  const tags = ['rollouts'];

  app.post(
    prefix,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Creates a phased rollout of a published image version to a group and/or profile; ' +
          '`start: true` starts its first phase at once (operator).',
        body: CreateRolloutRequestSchema,
        response: { 201: RolloutDetailSchema },
      },
    },
    async (req, reply) => {
      const caller = callerOf(req);
      const result = await ctx.db
        .transaction()
        .execute((tx) => createRollout(ctx, tx, { ...caller, userId: caller.userId }, req.body));
      notify(result);
      return reply.code(201).send(await getRollout(ctx.db, result.rollout.id));
    },
  );

  app.get(
    prefix,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description:
          'Rollouts, newest first, optionally by state or version; pass `next` back as `cursor`.',
        querystring: RolloutListQuerySchema,
        response: { 200: RolloutListSchema },
      },
    },
    async (req) => listRollouts(ctx.db, req.query),
  );

  app.get(
    `${prefix}/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description:
          'One rollout with device counts per phase: targeted, included, pending, in progress, ' +
          'healthy, failed, rolled back.',
        params: IdParamsSchema,
        response: { 200: RolloutDetailSchema },
      },
    },
    async (req) => getRollout(ctx.db, req.params.id),
  );

  app.post(
    `${prefix}/:id/:action`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          '`pause` (running), `resume` (paused, or pending: starts it), `abort` (its devices ' +
          'fall back to the released version), `promote` (the next phase now, without waiting ' +
          'for the soak). 409 names the state when the action does not apply (operator).',
        params: z.strictObject({ id: IdParamsSchema.shape.id, action: RolloutActionSchema }),
        body: RolloutActionRequestSchema,
        response: { 200: RolloutDetailSchema },
      },
    },
    async (req) => {
      const caller = callerOf(req);
      const result = await ctx.db
        .transaction()
        .execute((tx) =>
          actOnRollout(ctx, tx, caller, req.params.id, req.params.action, req.body?.reason),
        );
      notify(result);
      return getRollout(ctx.db, req.params.id);
    },
  );

  /** After commit: tells the devices whose desired state the command changed. */
  function notify(result: CommandResult) {
    if (result.changed.length > 0) ctx.push.notify(result.changed);
  }
};
