import { z } from 'zod';
import {
  ChallengeRequestSchema,
  ChallengeResponseSchema,
  DesiredStateQuerySchema,
  EnrolRequestSchema,
  EnrolResponseSchema,
  ReportRequestSchema,
  ReportResponseSchema,
  SignedDesiredStateSchema,
  TokenRequestSchema,
  TokenResponseSchema,
} from '../device.ts';
import { defineEndpoints } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';

const D = '/api/v1/device';
const tags = ['device'];

/** The device API: enrolment, key-based authentication, the signed desired state, reports. */
export const deviceEndpoints = defineEndpoints({
  enrol: {
    method: 'POST',
    path: `${D}/enrol`,
    auth: 'public',
    tags,
    description: 'Enrol a device with an enrolment token and its Ed25519 public key.',
    bodyLimit: 64 * 1024,
    body: EnrolRequestSchema,
    response: { 200: EnrolResponseSchema },
    errors: [
      ErrorCodes.ENROLMENT_TOKEN_REFUSED,
      ErrorCodes.KEY_INVALID,
      ErrorCodes.DEVICE_EXISTS,
      ErrorCodes.FORBIDDEN,
      ErrorCodes.RATE_LIMITED,
    ],
  },
  challenge: {
    method: 'POST',
    path: `${D}/auth/challenge`,
    auth: 'public',
    tags,
    description: 'A short-lived challenge for the device to sign with its key.',
    bodyLimit: 4 * 1024,
    body: ChallengeRequestSchema,
    response: { 200: ChallengeResponseSchema },
  },
  token: {
    method: 'POST',
    path: `${D}/auth/token`,
    auth: 'public',
    tags,
    description: 'Exchange a signed challenge for a short-lived bearer token.',
    bodyLimit: 4 * 1024,
    body: TokenRequestSchema,
    response: { 200: TokenResponseSchema },
    errors: [ErrorCodes.DEVICE_CHALLENGE_INVALID, ErrorCodes.UNAUTHENTICATED, ErrorCodes.FORBIDDEN],
  },
  desiredState: {
    method: 'GET',
    path: `${D}/desired-state`,
    auth: 'device',
    tags,
    description:
      'The signed desired state of the calling device; 304 when If-None-Match names ' +
      'its current ETag.',
    query: DesiredStateQuerySchema,
    response: { 200: SignedDesiredStateSchema, 304: z.undefined().describe('Not modified') },
  },
  push: {
    method: 'GET',
    path: `${D}/push`,
    auth: 'device',
    tags,
    description:
      'The push channel (Server-Sent Events): `event: hello` on connect, then ' +
      '`event: desired-state-changed` whenever the desired state changes (fetch it ' +
      'then), and a comment every 25 s. At most two per device; a stream ends when the ' +
      'token that opened it would expire, so reconnect with a fresh token.',
    response: { 200: z.string().describe('text/event-stream') },
    errors: [ErrorCodes.RATE_LIMITED],
  },
  reports: {
    method: 'POST',
    path: `${D}/reports`,
    auth: 'device',
    tags,
    description: 'A batch of device events; replays are counted once.',
    // 500 events of at most 8 KiB of data each, with room for their envelopes.
    bodyLimit: 5 * 1024 * 1024,
    body: ReportRequestSchema,
    response: { 200: ReportResponseSchema },
  },
});
