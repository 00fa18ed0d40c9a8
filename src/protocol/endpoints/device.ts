import { z } from 'zod';
import * as device from '../device.ts';
import { defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';

const D = '/api/v1/device';

/** The device API: enrolment, key-based authentication, the signed desired state, reports. */
export const deviceEndpoints = defineEndpoints(['device'], {
  enrol: endpoint(`POST ${D}/enrol`, 'public', 200, device.EnrolResponseSchema, {
    body: device.EnrolRequestSchema,
    bodyLimit: 64 * 1024,
    errors: [
      ErrorCodes.ENROLMENT_TOKEN_REFUSED,
      ErrorCodes.KEY_INVALID,
      ErrorCodes.DEVICE_EXISTS,
      ErrorCodes.FORBIDDEN,
      ErrorCodes.RATE_LIMITED,
    ],
    description: 'Enrol a device with an enrolment token and its Ed25519 public key.',
  }),
  challenge: endpoint(`POST ${D}/auth/challenge`, 'public', 200, device.ChallengeResponseSchema, {
    body: device.ChallengeRequestSchema,
    bodyLimit: 4 * 1024,
    errors: [ErrorCodes.RATE_LIMITED],
    description: 'A short-lived challenge for the device to sign with its key.',
  }),
  token: endpoint(`POST ${D}/auth/token`, 'public', 200, device.TokenResponseSchema, {
    body: device.TokenRequestSchema,
    bodyLimit: 4 * 1024,
    errors: [
      ErrorCodes.DEVICE_CHALLENGE_INVALID,
      ErrorCodes.UNAUTHENTICATED,
      ErrorCodes.FORBIDDEN,
      ErrorCodes.RATE_LIMITED,
    ],
    description: 'Exchange a signed challenge for a short-lived bearer token.',
  }),
  desiredState: endpoint(`GET ${D}/desired-state`, 'device', 200, device.SignedDesiredStateSchema, {
    also: { 304: z.undefined().describe('Not modified') },
    query: device.DesiredStateQuerySchema,
    description:
      'The signed desired state of the calling device; 304 when If-None-Match names ' +
      'its current ETag.',
  }),
  push: endpoint(`GET ${D}/push`, 'device', 200, z.string().describe('text/event-stream'), {
    errors: [ErrorCodes.RATE_LIMITED],
    description:
      'The push channel (Server-Sent Events): `event: hello` on connect, then ' +
      '`event: desired-state-changed` whenever the desired state changes (fetch it ' +
      'then), and a comment every 25 s. At most two per device; a stream ends when the ' +
      'token that opened it would expire, so reconnect with a fresh token.',
  }),
  reports: endpoint(`POST ${D}/reports`, 'device', 200, device.ReportResponseSchema, {
    body: device.ReportRequestSchema,
    // 500 events of at most 8 KiB of data each, with room for their envelopes.
    bodyLimit: 5 * 1024 * 1024,
    description: 'A batch of device events; replays are counted once.',
  }),
});
