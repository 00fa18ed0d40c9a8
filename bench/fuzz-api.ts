// A long run of the API fuzzer (test/support/fuzz-api.ts) against Center, on SQLite, PostgreSQL
// or both (a throwaway cluster from Debian's postgresql package, as the tests start):
//
//   npm run fuzz -- [--requests N] [--db sqlite|postgres|both] [--seed N]
//
// Defaults: 20,000 requests per database, both databases, a new seed (BULKHEAD_FUZZ_SEED or
// --seed repeats a run). Prints one JSON document on stdout (also written to
// bench/out/fuzz-api.json): per database the requests sent, the answers by HTTP status and each
// kind of failure with a request that caused it; progress goes to stderr. Exits 1 when any
// request got a 5xx, a stack trace or a 4xx without Center's error body.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tempDir, type Cleanups } from '../test/support/fixtures.ts';
import {
  describeFailures,
  fuzzCenter,
  fuzzSeed,
  type FuzzReport,
} from '../test/support/fuzz-api.ts';
import { startPostgres } from '../test/support/postgres.ts';

type Dialect = 'sqlite' | 'postgres';

interface Options {
  requests: number;
  databases: Dialect[];
  seed: number;
}

const USAGE = 'usage: npm run fuzz -- [--requests N] [--db sqlite|postgres|both] [--seed N]';

function parseArgs(argv: string[]): Options {
  const o: Options = { requests: 20_000, databases: ['sqlite', 'postgres'], seed: fuzzSeed() };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = (argv[i] as string).split('=', 2) as [string, string | undefined];
    const value = inline ?? argv[++i] ?? '';
    const int = () => {
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < 0)
        throw new Error(`${flag} needs a whole number; ${USAGE}`);
      return n;
    };
    if (flag === '--requests') o.requests = Math.max(1, int());
    else if (flag === '--seed') o.seed = int();
    else if (flag === '--db') {
      if (value === 'both') o.databases = ['sqlite', 'postgres'];
      else if (value === 'sqlite' || value === 'postgres') o.databases = [value];
      else throw new Error(`--db must be sqlite, postgres or both, not "${value}"; ${USAGE}`);
    } else {
      throw new Error(`unknown argument ${argv[i]}; ${USAGE}`);
    }
  }
  return o;
}

/** Cleanups run in reverse order when the run ends, as a test's would. */
function cleanupStack(): Cleanups & { run(): Promise<void> } {
  const releases: (() => unknown)[] = [];
  return {
    after: (release) => void releases.push(release),
    async run() {
      for (const release of releases.reverse()) await release();
    },
  };
}

async function fuzzOne(dialect: Dialect, o: Options): Promise<FuzzReport> {
  const cleanups = cleanupStack();
  try {
    const url =
      dialect === 'sqlite'
        ? `sqlite:${join(await tempDir(cleanups, 'bulkhead-fuzz-'), 'center.db')}`
        : await startPostgres(cleanups);
    return await fuzzCenter(cleanups, {
      url,
      seed: o.seed,
      requests: o.requests,
      progress: (line) => console.error(`[fuzz ${dialect}] ${line}`),
    });
  } finally {
    await cleanups.run();
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  console.error(`[fuzz] seed ${o.seed} (BULKHEAD_FUZZ_SEED=${o.seed} or --seed repeats this run)`);
  const results: Record<string, FuzzReport> = {};
  for (const dialect of o.databases) {
    const report = await fuzzOne(dialect, o);
    results[dialect] = report;
    if (report.failureCount > 0) console.error(describeFailures(report));
  }
  const out = { seed: o.seed, requestsPerDatabase: o.requests, databases: results };
  const text = JSON.stringify(out, null, 2);
  const dir = join(import.meta.dirname, 'out');
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'fuzz-api.json'), `${text}\n`);
  console.log(text);
  if (Object.values(results).some((r) => r.failureCount > 0)) process.exitCode = 1;
}

await main();
