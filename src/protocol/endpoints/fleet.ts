import { z } from 'zod';
import { defineEndpoints } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';
import {
  AppListSchema,
  AppSchema,
  CommandListSchema,
  CommandSchema,
  CreateAppRequestSchema,
  CreateCommandRequestSchema,
  CreateDeviceGroupRequestSchema,
  CreateEnrolmentTokenRequestSchema,
  CreateEnrolmentTokenResponseSchema,
  CreateProfileRequestSchema,
  DeviceDetailSchema,
  DeviceGroupListSchema,
  DeviceGroupSchema,
  DeviceListQuerySchema,
  DevicePageSchema,
  EnrolmentTokenListSchema,
  FleetIdParamsSchema,
  ProfileListSchema,
  ProfileSchema,
  UpdateAppRequestSchema,
  UpdateDeviceGroupRequestSchema,
  UpdateDeviceRequestSchema,
  UpdateProfileRequestSchema,
} from '../fleet.ts';

/*
 * Roles: a viewer reads everything here; an operator runs the fleet day to day (edits and
 * retires devices, issues commands, creates and revokes enrolment tokens); an admin shapes it
 * (groups, the app catalog, profiles). Every change is in the audit trail with before/after.
 */

const A = '/api/v1/admin';
const tags = ['fleet'];
const params = FleetIdParamsSchema;
const noContent = { 204: z.null() };
const { NOT_FOUND, NAME_TAKEN, IN_USE, DEVICE_STATE } = ErrorCodes;

/** The fleet: device groups, the app catalog, VM profiles, devices and enrolment tokens. */
export const fleetEndpoints = defineEndpoints({
  listGroups: {
    method: 'GET',
    path: `${A}/groups`,
    auth: 'viewer',
    tags,
    description: 'Device groups with their device counts (viewer).',
    response: { 200: DeviceGroupListSchema },
  },
  createGroup: {
    method: 'POST',
    path: `${A}/groups`,
    auth: 'admin',
    tags,
    description: 'Creates a device group (admin).',
    body: CreateDeviceGroupRequestSchema,
    response: { 201: DeviceGroupSchema },
    errors: [NAME_TAKEN],
  },
  getGroup: {
    method: 'GET',
    path: `${A}/groups/:id`,
    auth: 'viewer',
    tags,
    description: 'One group (viewer).',
    params,
    response: { 200: DeviceGroupSchema },
    errors: [NOT_FOUND],
  },
  updateGroup: {
    method: 'PATCH',
    path: `${A}/groups/:id`,
    auth: 'admin',
    tags,
    description: 'Renames or redescribes a group (admin).',
    params,
    body: UpdateDeviceGroupRequestSchema,
    response: { 200: DeviceGroupSchema },
    errors: [NOT_FOUND, NAME_TAKEN],
  },
  deleteGroup: {
    method: 'DELETE',
    path: `${A}/groups/:id`,
    auth: 'admin',
    tags,
    description: 'Deletes a group and its enrolment tokens (admin); 409 while devices are in it.',
    params,
    response: noContent,
    errors: [NOT_FOUND, IN_USE],
  },

  listApps: {
    method: 'GET',
    path: `${A}/apps`,
    auth: 'viewer',
    tags,
    description: 'The app catalog (viewer).',
    response: { 200: AppListSchema },
  },
  createApp: {
    method: 'POST',
    path: `${A}/apps`,
    auth: 'admin',
    tags,
    description: 'Adds an app to the catalog (admin); its image must be an app image.',
    body: CreateAppRequestSchema,
    response: { 201: AppSchema },
    errors: [NOT_FOUND, NAME_TAKEN],
  },
  getApp: {
    method: 'GET',
    path: `${A}/apps/:id`,
    auth: 'viewer',
    tags,
    description: 'One app (viewer).',
    params,
    response: { 200: AppSchema },
    errors: [NOT_FOUND],
  },
  updateApp: {
    method: 'PATCH',
    path: `${A}/apps/:id`,
    auth: 'admin',
    tags,
    description:
      'Changes an app (admin); a new image reaches every device whose profile offers it.',
    params,
    body: UpdateAppRequestSchema,
    response: { 200: AppSchema },
    errors: [NOT_FOUND, NAME_TAKEN],
  },
  deleteApp: {
    method: 'DELETE',
    path: `${A}/apps/:id`,
    auth: 'admin',
    tags,
    description: 'Removes an app from the catalog (admin); 409 while a profile offers it.',
    params,
    response: noContent,
    errors: [NOT_FOUND, IN_USE],
  },

  listProfiles: {
    method: 'GET',
    path: `${A}/profiles`,
    auth: 'viewer',
    tags,
    description: 'VM profiles with their apps and device counts (viewer).',
    response: { 200: ProfileListSchema },
  },
  createProfile: {
    method: 'POST',
    path: `${A}/profiles`,
    auth: 'admin',
    tags,
    description:
      'Creates a VM profile (admin): system image (kind system), apps, isolation policy, ' +
      'health check, lease, resources, reset policy.',
    body: CreateProfileRequestSchema,
    response: { 201: ProfileSchema },
    errors: [NOT_FOUND, NAME_TAKEN],
  },
  getProfile: {
    method: 'GET',
    path: `${A}/profiles/:id`,
    auth: 'viewer',
    tags,
    description: 'One profile (viewer).',
    params,
    response: { 200: ProfileSchema },
    errors: [NOT_FOUND],
  },
  updateProfile: {
    method: 'PATCH',
    path: `${A}/profiles/:id`,
    auth: 'admin',
    tags,
    description:
      'Changes a profile (admin); every device holding it gets a new desired state and is ' +
      'told over its push channel. `apps` replaces the list.',
    params,
    body: UpdateProfileRequestSchema,
    response: { 200: ProfileSchema },
    errors: [NOT_FOUND, NAME_TAKEN],
  },
  deleteProfile: {
    method: 'DELETE',
    path: `${A}/profiles/:id`,
    auth: 'admin',
    tags,
    description: 'Deletes a profile (admin); 409 while devices hold it.',
    params,
    response: noContent,
    errors: [NOT_FOUND, IN_USE],
  },

  listDevices: {
    method: 'GET',
    path: `${A}/devices`,
    auth: 'viewer',
    tags,
    description:
      'Devices, oldest enrolment first (viewer); filter by group, state, profile, name ' +
      'prefix `q` or `lastContactBefore`; pass `next` back as `cursor` for the next page.',
    query: DeviceListQuerySchema,
    response: { 200: DevicePageSchema },
  },
  getDevice: {
    method: 'GET',
    path: `${A}/devices/:id`,
    auth: 'viewer',
    tags,
    description:
      'One device (viewer): inventory, group, profiles, apps, versions, recent events, ' +
      'pending commands.',
    params,
    response: { 200: DeviceDetailSchema },
    errors: [NOT_FOUND],
  },
  updateDevice: {
    method: 'PATCH',
    path: `${A}/devices/:id`,
    auth: 'operator',
    tags,
    description:
      'Renames a device, moves it to another group, replaces its profiles or its chosen ' +
      'optional apps (operator); the device is told over its push channel.',
    params,
    body: UpdateDeviceRequestSchema,
    response: { 200: DeviceDetailSchema },
    errors: [NOT_FOUND, NAME_TAKEN, DEVICE_STATE],
  },
  retireDevice: {
    method: 'DELETE',
    path: `${A}/devices/:id`,
    auth: 'operator',
    tags,
    description:
      'Retires a device (operator): it is refused from then on; the row and its history stay.',
    params,
    response: noContent,
    errors: [NOT_FOUND, DEVICE_STATE],
  },
  issueCommand: {
    method: 'POST',
    path: `${A}/devices/:id/commands`,
    auth: 'operator',
    tags,
    description:
      'Issues a command (operator): lock, unlock, kill (crypto-erase; the device is cut ' +
      'off once it acknowledges), restart-vm (with profileId). The device is told at once ' +
      'over its push channel; the command stays pending until the device reports its ' +
      'outcome (done or failed).',
    params,
    body: CreateCommandRequestSchema,
    response: { 201: CommandSchema },
    errors: [NOT_FOUND, DEVICE_STATE],
  },
  listCommands: {
    method: 'GET',
    path: `${A}/devices/:id/commands`,
    auth: 'viewer',
    tags,
    description: "A device's commands, newest first (viewer).",
    params,
    response: { 200: CommandListSchema },
    errors: [NOT_FOUND],
  },

  createEnrolmentToken: {
    method: 'POST',
    path: `${A}/enrolment-tokens`,
    auth: 'operator',
    tags,
    description: 'Creates an enrolment token for a group (operator); the token is shown only here.',
    body: CreateEnrolmentTokenRequestSchema,
    response: { 201: CreateEnrolmentTokenResponseSchema },
    errors: [NOT_FOUND],
  },
  listEnrolmentTokens: {
    method: 'GET',
    path: `${A}/enrolment-tokens`,
    auth: 'viewer',
    tags,
    description: 'Enrolment tokens, newest first, never their secrets (viewer).',
    response: { 200: EnrolmentTokenListSchema },
  },
  revokeEnrolmentToken: {
    method: 'DELETE',
    path: `${A}/enrolment-tokens/:id`,
    auth: 'operator',
    tags,
    description: 'Revokes an enrolment token (operator).',
    params,
    response: noContent,
    errors: [NOT_FOUND],
  },
});
