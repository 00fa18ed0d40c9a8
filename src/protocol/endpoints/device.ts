import { z } from 'zod';
import * as device from '../device.ts';
import { defineEndpoints, endpoint } from '../endpoint.ts';
import { ErrorCodes } from '../errors.ts';

const D = '/api/v1/device';
/** A device cut off for good: killed (with a signed kill notice) or retired. */
const CUT_OFF = [ErrorCodes.DEVICE_KILLED, ErrorCodes.DEVICE_RETIRED];

/** The device API: enrolment, key-based authentication, the signed desired state, reports. */
export const deviceEndpoints = defineEndpoints(['device'], {
  enrol: endpoint(`POST ${D}/enrol`, 'public', 200, device.EnrolResponseSchema, {
    body: device.EnrolRequestSchema,
    // The largest inventory the schema allows (32 disks with long model names) is ~13 KB;
    // a real one is under 2 KB.
    bodyLimit: 16 * 1024,
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
      ...CUT_OFF,
      ErrorCodes.RATE_LIMITED,
    ],
    description:
      'Exchange a signed challenge for a short-lived bearer token. A killed device gets none: ' +
      'a 403 `ERR_DEVICE_KILLED` whose `details.notice` is its signed kill notice; a retired ' +
      'one a 403 `ERR_DEVICE_RETIRED`.',
  }),
  desiredState: endpoint(`GET ${D}/desired-state`, 'device', 200, device.SignedDesiredStateSchema, {
    also: { 304: z.undefined().describe('Not modified') },
    query: device.DesiredStateQuerySchema,
    errors: CUT_OFF,
    description:
      'The signed desired state of the calling device; 304 when If-None-Match names ' +
      'its current ETag. Every device route refuses a killed or retired device, whatever ' +
      "its token's age: a killed one with its signed kill notice (403 `ERR_DEVICE_KILLED`).",
  }),
  push: endpoint(`GET ${D}/push`, 'device', 200, z.string().describe('text/event-stream'), {
    errors: [ErrorCodes.RATE_LIMITED, ...CUT_OFF],
    description:
      'The push channel (Server-Sent Events): `event: hello` on connect, then ' +
      '`event: desired-state-changed` whenever the desired state changes (fetch it ' +
      'then), and a comment every 25 s. At most two per device; a stream ends when the ' +
      'token that opened it would expire, so reconnect with a fresh token; it ends at once ' +
      'when the device is killed or retired.',
  }),
  reports: endpoint(`POST ${D}/reports`, 'device', 200, device.ReportResponseSchema, {
    body: device.ReportRequestSchema,
    // Engine cuts its batches to this size.
    bodyLimit: device.MAX_REPORT_BYTES,
    errors: [...CUT_OFF, ErrorCodes.RATE_LIMITED],
    description:
      'A batch of device events; replays are counted once. Each device has a quota of events ' +
      'and bytes per minute: past it, the batch is refused whole (429 with Retry-After) and ' +
      'stores nothing.',
  }),
  chooseApps: endpoint(`PUT ${D}/apps`, 'device', 200, device.ChooseAppsResponseSchema, {
    body: device.ChooseAppsRequestSchema,
    bodyLimit: 8 * 1024,
    errors: [...CUT_OFF, ErrorCodes.FORBIDDEN],
    description:
      "The PC user's choice of one VM's optional apps, through Engine: replaces the apps chosen " +
      'for that profile. Only for a profile the device runs whose `userChoosesApps` is on ' +
      '(else 403 `ERR_FORBIDDEN`), and only apps it offers as optional (else 400 naming the ' +
      "app). Audited as the device; only this device's desired state changes.",
  }),
  killResult: endpoint(`POST ${D}/kill-result`, 'public', 200, device.ReportResponseSchema, {
    body: device.KillResultRequestSchema,
    bodyLimit: 8 * 1024,
    errors: [
      ErrorCodes.DEVICE_CHALLENGE_INVALID,
      ErrorCodes.UNAUTHENTICATED,
      ErrorCodes.DEVICE_STATE,
      ErrorCodes.DEVICE_RETIRED,
    ],
    description:
      "A killed device's result of its kill command, proved like a token request by a fresh " +
      'challenge signed with the device key (it covers the result too): a killed device has ' +
      'no token. Replays are counted once.',
  }),
});
