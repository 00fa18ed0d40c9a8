import { createApiClient, ErrorCodes, type ApiClient } from '../protocol/index.ts';

export type { ApiClient };

/**
 * The CLI's client of Center's admin API (see src/protocol/client.ts): Center's error answers
 * become BulkheadErrors with the same code, so commands report them like local failures.
 * @param token a session or an API token; never logged or printed.
 */
export function adminClient(baseUrl: string, token?: string): ApiClient {
  return createApiClient({
    baseUrl,
    headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
    // Uploads of large chunk indexes on a slow link take a while.
    timeoutMs: 120_000,
    hints: { [ErrorCodes.UNAUTHENTICATED]: 'give a valid token with --token or BULKHEAD_TOKEN' },
  });
}
