import { defineEndpoints } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import { IdParamsSchema } from '../admin.ts';
import {
  CreateRolloutRequestSchema,
  RolloutActionParamsSchema,
  RolloutActionRequestSchema,
  RolloutDetailSchema,
  RolloutListQuerySchema,
  RolloutListSchema,
} from '../rollouts.ts';

const R = '/api/v1/admin/rollouts';
const tags = ['rollouts'];

/** Phased rollouts: viewers read, operators create and act. */
export const rolloutEndpoints = defineEndpoints({
  createRollout: {
    method: 'POST',
    path: R,
    auth: 'operator',
    tags,
    description:
      'Creates a phased rollout of a published image version to a group and/or profile; ' +
      '`start: true` starts its first phase at once (operator).',
    body: CreateRolloutRequestSchema,
    response: { 201: RolloutDetailSchema },
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.VERSION_STATE, ErrorCodes.ROLLOUT_STATE],
  },
  listRollouts: {
    method: 'GET',
    path: R,
    auth: 'viewer',
    tags,
    description:
      'Rollouts, newest first, optionally by state or version; pass `next` back as `cursor`.',
    query: RolloutListQuerySchema,
    response: { 200: RolloutListSchema },
  },
  getRollout: {
    method: 'GET',
    path: `${R}/:id`,
    auth: 'viewer',
    tags,
    description:
      'One rollout with device counts per phase: targeted, included, pending, in progress, ' +
      'healthy, failed, rolled back.',
    params: IdParamsSchema,
    response: { 200: RolloutDetailSchema },
    errors: [ErrorCodes.NOT_FOUND],
  },
  actOnRollout: {
    method: 'POST',
    path: `${R}/:id/:action`,
    auth: 'operator',
    tags,
    description:
      '`pause` (running), `resume` (paused, or pending: starts it), `abort` (its devices ' +
      'fall back to the released version), `promote` (the next phase now, without waiting ' +
      'for the soak). 409 names the state when the action does not apply (operator).',
    params: RolloutActionParamsSchema,
    body: RolloutActionRequestSchema,
    response: { 200: RolloutDetailSchema },
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.ROLLOUT_STATE],
  },
});
