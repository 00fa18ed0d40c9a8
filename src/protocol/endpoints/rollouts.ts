import { defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import { IdParamsSchema } from '../admin.ts';
import { FleetIdParamsSchema } from '../fleet.ts';
import * as rollouts from '../rollouts.ts';

const R = '/api/v1/admin/rollouts';

/** Phased rollouts: viewers read, operators create and act. */
export const rolloutEndpoints = defineEndpoints(['rollouts'], {
  createRollout: endpoint(`POST ${R}`, 'operator', 201, rollouts.RolloutDetailSchema, {
    body: rollouts.CreateRolloutRequestSchema,
    errors: [
      ErrorCodes.NOT_FOUND,
      ErrorCodes.VERSION_STATE,
      ErrorCodes.ROLLOUT_STATE,
      ErrorCodes.UNTRUSTED_KEY,
    ],
    description:
      'Creates a phased rollout of a published image version to a group and/or profile; ' +
      '`start: true` starts its first phase at once (operator).',
  }),
  listRollouts: endpoint(`GET ${R}`, 'viewer', 200, rollouts.RolloutListSchema, {
    query: rollouts.RolloutListQuerySchema,
    description:
      'Rollouts, newest first, optionally by state or version; pass `next` back as `cursor`.',
  }),
  getRollout: endpoint(`GET ${R}/:id`, 'viewer', 200, rollouts.RolloutDetailSchema, {
    params: IdParamsSchema,
    errors: [ErrorCodes.NOT_FOUND],
    description:
      'One rollout with device counts per phase: targeted, included, pending, in progress, ' +
      'healthy, failed, rolled back.',
  }),
  actOnRollout: endpoint(`POST ${R}/:id/:action`, 'operator', 200, rollouts.RolloutDetailSchema, {
    params: rollouts.RolloutActionParamsSchema,
    body: rollouts.RolloutActionRequestSchema,
    errors: [ErrorCodes.NOT_FOUND, ErrorCodes.ROLLOUT_STATE],
    description:
      '`pause` (running), `resume` (paused, or pending: starts it), `abort` (its devices ' +
      'fall back to the released version), `promote` (the next phase now, without waiting ' +
      'for the soak). 409 names the state when the action does not apply (operator).',
  }),
  listRolloutDevices: endpoint(
    `GET ${R}/:id/devices`,
    'viewer',
    200,
    rollouts.RolloutDevicePageSchema,
    {
      params: IdParamsSchema,
      query: rollouts.RolloutDevicesQuerySchema,
      errors: [ErrorCodes.NOT_FOUND],
      description:
        "A rollout's devices by phase (viewer): each one's status, reason and outcome trail " +
        '(downloaded, staged, switched, healthy or rolled back with the reason), oldest event ' +
        'first; pass `next` back as `cursor`.',
    },
  ),
  listDeviceEvents: endpoint(
    'GET /api/v1/admin/devices/:id/events',
    'viewer',
    200,
    rollouts.DeviceEventPageSchema,
    {
      params: FleetIdParamsSchema,
      query: rollouts.DeviceEventsQuerySchema,
      errors: [ErrorCodes.NOT_FOUND],
      description:
        "A device's events, newest first (viewer), optionally about one image version " +
        '(`versionId`) or one rollout (`rolloutId`), or of one `type`; pass `next` back as ' +
        '`cursor`.',
    },
  ),
});
