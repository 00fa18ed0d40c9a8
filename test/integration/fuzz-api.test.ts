import assert from 'node:assert/strict';
import { forEachDatabase } from '../support/databases.ts';
import { describeFailures, fuzzCenter, fuzzSeed } from '../support/fuzz-api.ts';

/*
 * A short run of the API fuzzer (test/support/fuzz-api.ts) on each database: every operation
 * of the OpenAPI document as every identity, then the attacks, then random requests. A run
 * fails on any 5xx, a stack trace, or a 4xx without Center's error body, printing each request
 * that caused one. The seed is printed; BULKHEAD_FUZZ_SEED repeats a run, BULKHEAD_FUZZ_REQUESTS
 * makes it longer (`npm run fuzz` runs long ones outside the test suite).
 */

const REQUESTS = Number(process.env['BULKHEAD_FUZZ_REQUESTS'] ?? 3000);
// One seed for both databases: the same requests go to each.
const seed = fuzzSeed();

forEachDatabase('fuzzed API requests get no 5xx', async (t, databases) => {
  t.diagnostic(`seed ${seed} (BULKHEAD_FUZZ_SEED=${seed} repeats this run)`);
  const report = await fuzzCenter(t, {
    url: await databases.emptyUrl(t),
    seed,
    requests: REQUESTS,
  });
  t.diagnostic(
    `${report.requests} requests (${report.systematic} systematic) in ${report.ms} ms: ${JSON.stringify(report.byStatus)}`,
  );
  assert.equal(report.requests, REQUESTS);
  // A run that only ever met the front door proves nothing: it must get past validation too.
  assert.ok((report.byStatus['200'] ?? 0) + (report.byStatus['201'] ?? 0) > 100, 'successes');
  assert.ok((report.byStatus['400'] ?? 0) > 500, 'refusals');
  assert.equal(report.failureCount, 0, describeFailures(report));
});
