import type { FastifyPluginAsync } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
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
} from '../../protocol/index.ts';
import { callerOf } from '../admin/plugin.ts';
import type { CenterContext } from '../server.ts';
import { createApp, deleteApp, getApp, listApps, updateApp } from './apps.ts';
import { issueCommand, listCommands } from './commands.ts';
import type { FleetDeps } from './common.ts';
import { getDevice, listDevices, retireDevice, updateDevice } from './devices.ts';
import { createGroup, deleteGroup, getGroup, listGroups, updateGroup } from './groups.ts';
import { registerFleetMetrics } from './metrics.ts';
import {
  createProfile,
  deleteProfile,
  getProfile,
  listProfiles,
  updateProfile,
} from './profiles.ts';
import { issueEnrolmentToken, listEnrolmentTokens, revokeEnrolmentToken } from './tokens.ts';

/*
 * Roles: a viewer reads everything here; an operator runs the fleet day to day (edits and
 * retires devices, issues commands, creates and revokes enrolment tokens); an admin shapes it
 * (groups, the app catalog, profiles). Every change is in the audit trail with before/after.
 */

/**
 * The fleet admin routes under `/api/v1/admin/`. Register inside the admin plugin's scope:
 * its hook authenticates and checks each route's `config.adminRole`.
 */
export const fleetRoutes: FastifyPluginAsync<CenterContext> = async (parent, deps) => {
  const app = parent.withTypeProvider<ZodTypeProvider>();
  const { db } = deps.database;
  const nowMs = () => deps.now().getTime();
  const fleet = (): FleetDeps => ({ db, push: deps.push, nowMs: nowMs() });
  if (deps.metrics !== undefined) registerFleetMetrics(deps.metrics, db);

  const prefix = '/api/v1/admin';
  const tags = ['fleet'];
  const params = FleetIdParamsSchema;
  const noContent = { 204: z.null() };

  // Groups
  app.get(
    `${prefix}/groups`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'Device groups with their device counts (viewer).',
        response: { 200: DeviceGroupListSchema },
      },
    },
    async () => ({ groups: await listGroups(db) }),
  );
  app.post(
    `${prefix}/groups`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Creates a device group (admin).',
        body: CreateDeviceGroupRequestSchema,
        response: { 201: DeviceGroupSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await createGroup(db, callerOf(req), req.body, nowMs())),
  );
  app.get(
    `${prefix}/groups/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'One group (viewer).',
        params,
        response: { 200: DeviceGroupSchema },
      },
    },
    async (req) => getGroup(db, req.params.id),
  );
  app.patch(
    `${prefix}/groups/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Renames or redescribes a group (admin).',
        params,
        body: UpdateDeviceGroupRequestSchema,
        response: { 200: DeviceGroupSchema },
      },
    },
    async (req) => updateGroup(db, callerOf(req), req.params.id, req.body, nowMs()),
  );
  app.delete(
    `${prefix}/groups/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description:
          'Deletes a group and its enrolment tokens (admin); 409 while devices are in it.',
        params,
        response: noContent,
      },
    },
    async (req, reply) => {
      await deleteGroup(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );

  // Apps
  app.get(
    `${prefix}/apps`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, description: 'The app catalog (viewer).', response: { 200: AppListSchema } },
    },
    async () => ({ apps: await listApps(db) }),
  );
  app.post(
    `${prefix}/apps`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Adds an app to the catalog (admin); its image must be an app image.',
        body: CreateAppRequestSchema,
        response: { 201: AppSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await createApp(db, callerOf(req), req.body, nowMs())),
  );
  app.get(
    `${prefix}/apps/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: { tags, description: 'One app (viewer).', params, response: { 200: AppSchema } },
    },
    async (req) => getApp(db, req.params.id),
  );
  app.patch(
    `${prefix}/apps/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description:
          'Changes an app (admin); a new image reaches every device whose profile offers it.',
        params,
        body: UpdateAppRequestSchema,
        response: { 200: AppSchema },
      },
    },
    async (req) => updateApp(fleet(), callerOf(req), req.params.id, req.body),
  );
  app.delete(
    `${prefix}/apps/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Removes an app from the catalog (admin); 409 while a profile offers it.',
        params,
        response: noContent,
      },
    },
    async (req, reply) => {
      await deleteApp(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );

  // Profiles
  app.get(
    `${prefix}/profiles`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'VM profiles with their apps and device counts (viewer).',
        response: { 200: ProfileListSchema },
      },
    },
    async () => ({ profiles: await listProfiles(db) }),
  );
  app.post(
    `${prefix}/profiles`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description:
          'Creates a VM profile (admin): system image (kind system), apps, isolation policy, ' +
          'health check, lease, resources, reset policy.',
        body: CreateProfileRequestSchema,
        response: { 201: ProfileSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await createProfile(db, callerOf(req), req.body, nowMs())),
  );
  app.get(
    `${prefix}/profiles/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'One profile (viewer).',
        params,
        response: { 200: ProfileSchema },
      },
    },
    async (req) => getProfile(db, req.params.id),
  );
  app.patch(
    `${prefix}/profiles/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description:
          'Changes a profile (admin); every device holding it gets a new desired state and is ' +
          'told over its push channel. `apps` replaces the list.',
        params,
        body: UpdateProfileRequestSchema,
        response: { 200: ProfileSchema },
      },
    },
    async (req) => updateProfile(fleet(), callerOf(req), req.params.id, req.body),
  );
  app.delete(
    `${prefix}/profiles/:id`,
    {
      config: { adminRole: 'admin' },
      schema: {
        tags,
        description: 'Deletes a profile (admin); 409 while devices hold it.',
        params,
        response: noContent,
      },
    },
    async (req, reply) => {
      await deleteProfile(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );

  // Devices
  app.get(
    `${prefix}/devices`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description:
          'Devices, oldest enrolment first (viewer); filter by group, state, profile, name ' +
          'prefix `q` or `lastContactBefore`; pass `next` back as `cursor` for the next page.',
        querystring: DeviceListQuerySchema,
        response: { 200: DevicePageSchema },
      },
    },
    async (req) => listDevices(db, req.query),
  );
  app.get(
    `${prefix}/devices/:id`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description:
          'One device (viewer): inventory, group, profiles, apps, versions, recent events, ' +
          'pending commands.',
        params,
        response: { 200: DeviceDetailSchema },
      },
    },
    async (req) => getDevice(db, req.params.id),
  );
  app.patch(
    `${prefix}/devices/:id`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Renames a device, moves it to another group, replaces its profiles or its chosen ' +
          'optional apps (operator); the device is told over its push channel.',
        params,
        body: UpdateDeviceRequestSchema,
        response: { 200: DeviceDetailSchema },
      },
    },
    async (req) => updateDevice(fleet(), callerOf(req), req.params.id, req.body),
  );
  app.delete(
    `${prefix}/devices/:id`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Retires a device (operator): it is refused from then on; the row and its history stay.',
        params,
        response: noContent,
      },
    },
    async (req, reply) => {
      await retireDevice(fleet(), callerOf(req), req.params.id);
      return reply.code(204).send(null);
    },
  );
  app.post(
    `${prefix}/devices/:id/commands`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Issues a command (operator): lock, unlock, kill (crypto-erase; the device is cut ' +
          'off once it acknowledges), restart-vm (with profileId). The device is told at once ' +
          'over its push channel; the command stays pending until the device reports its ' +
          'outcome (done or failed).',
        params,
        body: CreateCommandRequestSchema,
        response: { 201: CommandSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await issueCommand(fleet(), callerOf(req), req.params.id, req.body)),
  );
  app.get(
    `${prefix}/devices/:id/commands`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: "A device's commands, newest first (viewer).",
        params,
        response: { 200: CommandListSchema },
      },
    },
    async (req) => ({ commands: await listCommands(db, req.params.id) }),
  );

  // Enrolment tokens
  app.post(
    `${prefix}/enrolment-tokens`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description:
          'Creates an enrolment token for a group (operator); the token is shown only here.',
        body: CreateEnrolmentTokenRequestSchema,
        response: { 201: CreateEnrolmentTokenResponseSchema },
      },
    },
    async (req, reply) =>
      reply.code(201).send(await issueEnrolmentToken(db, callerOf(req), req.body, nowMs())),
  );
  app.get(
    `${prefix}/enrolment-tokens`,
    {
      config: { adminRole: 'viewer' },
      schema: {
        tags,
        description: 'Enrolment tokens, newest first, never their secrets (viewer).',
        response: { 200: EnrolmentTokenListSchema },
      },
    },
    async () => ({ tokens: await listEnrolmentTokens(db) }),
  );
  app.delete(
    `${prefix}/enrolment-tokens/:id`,
    {
      config: { adminRole: 'operator' },
      schema: {
        tags,
        description: 'Revokes an enrolment token (operator).',
        params,
        response: noContent,
      },
    },
    async (req, reply) => {
      await revokeEnrolmentToken(db, callerOf(req), req.params.id, nowMs());
      return reply.code(204).send(null);
    },
  );
};
