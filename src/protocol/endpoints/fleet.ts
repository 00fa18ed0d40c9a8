import { z } from 'zod';
import { defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import * as fleet from '../fleet.ts';

/*
 * Roles: a viewer reads everything here; an operator runs the fleet day to day (edits and
 * retires devices, issues commands, creates and revokes enrolment tokens); an admin shapes it
 * (groups, the app catalog, profiles). Every change is in the audit trail with before/after.
 */

const A = '/api/v1/admin';
const params = fleet.FleetIdParamsSchema;
const { NOT_FOUND, NAME_TAKEN, IN_USE, DEVICE_STATE } = ErrorCodes;

/** The fleet: device groups, the app catalog, VM profiles, devices and enrolment tokens. */
export const fleetEndpoints = defineEndpoints(['fleet'], {
  listGroups: endpoint(`GET ${A}/groups`, 'viewer', 200, fleet.DeviceGroupListSchema, {
    description: 'Device groups with their device counts (viewer).',
  }),
  createGroup: endpoint(`POST ${A}/groups`, 'admin', 201, fleet.DeviceGroupSchema, {
    body: fleet.CreateDeviceGroupRequestSchema,
    errors: [NAME_TAKEN],
    description: 'Creates a device group (admin).',
  }),
  getGroup: endpoint(`GET ${A}/groups/:id`, 'viewer', 200, fleet.DeviceGroupSchema, {
    params,
    errors: [NOT_FOUND],
    description: 'One group (viewer).',
  }),
  updateGroup: endpoint(`PATCH ${A}/groups/:id`, 'admin', 200, fleet.DeviceGroupSchema, {
    params,
    body: fleet.UpdateDeviceGroupRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN],
    description: 'Renames or redescribes a group (admin).',
  }),
  deleteGroup: endpoint(`DELETE ${A}/groups/:id`, 'admin', 204, z.null(), {
    params,
    errors: [NOT_FOUND, IN_USE],
    description: 'Deletes a group and its enrolment tokens (admin); 409 while devices are in it.',
  }),

  listApps: endpoint(`GET ${A}/apps`, 'viewer', 200, fleet.AppListSchema, {
    description: 'The app catalog (viewer).',
  }),
  createApp: endpoint(`POST ${A}/apps`, 'admin', 201, fleet.AppSchema, {
    body: fleet.CreateAppRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN],
    description: 'Adds an app to the catalog (admin); its image must be an app image.',
  }),
  getApp: endpoint(`GET ${A}/apps/:id`, 'viewer', 200, fleet.AppSchema, {
    params,
    errors: [NOT_FOUND],
    description: 'One app (viewer).',
  }),
  updateApp: endpoint(`PATCH ${A}/apps/:id`, 'admin', 200, fleet.AppSchema, {
    params,
    body: fleet.UpdateAppRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN],
    description:
      'Changes an app (admin); a new image reaches every device whose profile offers it.',
  }),
  deleteApp: endpoint(`DELETE ${A}/apps/:id`, 'admin', 204, z.null(), {
    params,
    errors: [NOT_FOUND, IN_USE],
    description: 'Removes an app from the catalog (admin); 409 while a profile offers it.',
  }),

  listProfiles: endpoint(`GET ${A}/profiles`, 'viewer', 200, fleet.ProfileListSchema, {
    description: 'VM profiles with their apps and device counts (viewer).',
  }),
  createProfile: endpoint(`POST ${A}/profiles`, 'admin', 201, fleet.ProfileSchema, {
    body: fleet.CreateProfileRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN],
    description:
      'Creates a VM profile (admin): system image (kind system), apps, isolation policy, ' +
      'health check, lease, resources, reset policy.',
  }),
  getProfile: endpoint(`GET ${A}/profiles/:id`, 'viewer', 200, fleet.ProfileSchema, {
    params,
    errors: [NOT_FOUND],
    description: 'One profile (viewer).',
  }),
  updateProfile: endpoint(`PATCH ${A}/profiles/:id`, 'admin', 200, fleet.ProfileSchema, {
    params,
    body: fleet.UpdateProfileRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN],
    description:
      'Changes a profile (admin); every device holding it gets a new desired state and is ' +
      'told over its push channel. `apps` replaces the list.',
  }),
  deleteProfile: endpoint(`DELETE ${A}/profiles/:id`, 'admin', 204, z.null(), {
    params,
    errors: [NOT_FOUND, IN_USE],
    description: 'Deletes a profile (admin); 409 while devices hold it.',
  }),

  fleetSummary: endpoint(`GET ${A}/fleet/summary`, 'viewer', 200, fleet.FleetSummarySchema, {
    description:
      'The fleet at a glance (viewer): devices by status, versions per profile, leases ' +
      'running out, recent failures and rollbacks.',
  }),
  fleetHistory: endpoint(`GET ${A}/fleet/history`, 'viewer', 200, fleet.FleetHistorySchema, {
    query: fleet.FleetHistoryQuerySchema,
    description: 'Devices per system version over the last `days` days, one point a day (viewer).',
  }),

  listDevices: endpoint(`GET ${A}/devices`, 'viewer', 200, fleet.DevicePageSchema, {
    query: fleet.DeviceListQuerySchema,
    description:
      'Devices by name (or `sort` lastContact, enrolled) (viewer); filter by group, state, ' +
      'status, profile, name prefix `q` or `lastContactBefore`; pass `next` back as `cursor` ' +
      'for the next page; `total` counts the matches.',
  }),
  getDevice: endpoint(`GET ${A}/devices/:id`, 'viewer', 200, fleet.DeviceDetailSchema, {
    params,
    errors: [NOT_FOUND],
    description:
      'One device (viewer): inventory, group, profiles, apps, versions, recent events, ' +
      'pending commands.',
  }),
  updateDevice: endpoint(`PATCH ${A}/devices/:id`, 'operator', 200, fleet.DeviceDetailSchema, {
    params,
    body: fleet.UpdateDeviceRequestSchema,
    errors: [NOT_FOUND, NAME_TAKEN, DEVICE_STATE],
    description:
      'Renames a device, moves it to another group, replaces its profiles or its chosen ' +
      'optional apps (operator); the device is told over its push channel.',
  }),
  retireDevice: endpoint(`DELETE ${A}/devices/:id`, 'operator', 204, z.null(), {
    params,
    errors: [NOT_FOUND, DEVICE_STATE],
    description:
      'Retires a device (operator): it is refused from then on; the row and its history stay.',
  }),
  issueCommand: endpoint(`POST ${A}/devices/:id/commands`, 'operator', 201, fleet.CommandSchema, {
    params,
    body: fleet.CreateCommandRequestSchema,
    errors: [NOT_FOUND, DEVICE_STATE],
    description:
      'Issues a command (operator): lock, unlock, kill (crypto-erase; the device is cut ' +
      'off at once and learns of it from a signed kill notice), restart-vm (with ' +
      'profileId). The device is told at once ' +
      'over its push channel; the command stays pending until the device reports its ' +
      'outcome (done or failed).',
  }),
  listCommands: endpoint(`GET ${A}/devices/:id/commands`, 'viewer', 200, fleet.CommandListSchema, {
    params,
    errors: [NOT_FOUND],
    description: "A device's commands, newest first (viewer).",
  }),

  createEnrolmentToken: endpoint(
    `POST ${A}/enrolment-tokens`,
    'operator',
    201,
    fleet.CreateEnrolmentTokenResponseSchema,
    {
      body: fleet.CreateEnrolmentTokenRequestSchema,
      errors: [NOT_FOUND],
      description:
        'Creates an enrolment token for a group (operator); the token is shown only here.',
    },
  ),
  listEnrolmentTokens: endpoint(
    `GET ${A}/enrolment-tokens`,
    'viewer',
    200,
    fleet.EnrolmentTokenListSchema,
    {
      description: 'Enrolment tokens, newest first, never their secrets (viewer).',
    },
  ),
  revokeEnrolmentToken: endpoint(`DELETE ${A}/enrolment-tokens/:id`, 'operator', 204, z.null(), {
    params,
    errors: [NOT_FOUND],
    description: 'Revokes an enrolment token (operator).',
  }),
});
