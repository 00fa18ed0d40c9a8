// Center's device API (DESIGN §3, §4): enrolment, key-based authentication, the signed
// desired state and reports.
export { deviceApi } from './plugin.ts';
export { createEnrolmentToken, type CreateEnrolmentTokenInput } from './enrolment-tokens.ts';
export { DOMAINS as DEVICE_SIGNATURE_DOMAINS } from './credentials.ts';
export { resolveDeviceProfiles, type ResolvedProfile } from './desired-state.ts';
export { TOKEN_TTL_MS } from './credentials.ts';
