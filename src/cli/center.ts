import { pino } from 'pino';
import {
  configFromEnv,
  readConfigFile,
  resolveConfig,
  seedImages,
  startCenter,
  type CenterConfigInput,
} from '../center/index.ts';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { DirectoryStore, manifestKey } from '../image/index.ts';
import { demoCommand } from './demo.ts';
import { optionalString, type Command } from './command.ts';

const serve: Command = {
  name: 'center serve',
  summary: 'Run Center, the management server: HTTP API, database, chunk store.',
  usage: `Usage: bulkhead center serve [--data DIR] [--listen HOST:PORT] [--database URL]
         [--public-url URL] [--trusted-proxies LIST] [--metrics-listen HOST:PORT]
         [--config FILE] [--log-level LEVEL] [--demo]

  Defaults: SQLite and a chunk store under ./data, listening on 127.0.0.1:8080.
  --database postgres://USER:PASS@HOST/DB shares one database between Center replicas.
  --trusted-proxies 10.0.0.5,10.1.0.0/16 names the proxies whose X-Forwarded-For is believed
  (default none: the peer's own address counts). --metrics-listen serves /metrics on its own
  address; otherwise /metrics needs metricsToken (BULKHEAD_METRICS_TOKEN) or is not served.
  Settings may also come from BULKHEAD_* environment variables or a JSON --config file.
  Logs go to stderr as JSON lines; stop with Ctrl-C or SIGTERM (requests in flight finish).
  --demo builds the demo OS image (two versions, once, under DIR/demo) and publishes both in
  Center, version 1 released, its publisher key trusted.`,
  options: {
    data: { type: 'string' },
    listen: { type: 'string' },
    database: { type: 'string' },
    'public-url': { type: 'string' },
    'trusted-proxies': { type: 'string' },
    'metrics-listen': { type: 'string' },
    config: { type: 'string' },
    'log-level': { type: 'string' },
    demo: { type: 'boolean' },
  },
  async run(inv, ctx) {
    const file = optionalString(inv, 'config');
    const proxies = optionalString(inv, 'trusted-proxies');
    const flags: CenterConfigInput = {
      dataDir: optionalString(inv, 'data'),
      listen: optionalString(inv, 'listen'),
      database: optionalString(inv, 'database'),
      publicUrl: optionalString(inv, 'public-url'),
      trustedProxies: proxies?.split(',').map((p) => p.trim()),
      metricsListen: optionalString(inv, 'metrics-listen'),
      logLevel: optionalString(inv, 'log-level') as CenterConfigInput['logLevel'],
    };
    const config = resolveConfig([
      file ? await readConfigFile(file) : {},
      configFromEnv(process.env),
      flags,
    ]);
    const log = pino(
      { level: config.logLevel, redact: ['req.headers.authorization', 'req.headers.cookie'] },
      pino.destination(2),
    );
    const demo = inv.values.demo === true;
    const center = await startCenter({
      config,
      log,
      ...(demo
        ? {
            prepare: async (database) => {
              const root = join(config.dataDir, 'demo');
              const source = new DirectoryStore(join(root, 'store'));
              if (!(await source.has(manifestKey('demo-os', '2')))) {
                if (!inv.json) ctx.out(`Building the demo images in ${root} (once) …`);
                await demoCommand.run(
                  { values: { dir: config.dataDir }, positionals: [], json: true },
                  ctx,
                );
              }
              await seedImages({
                db: database.db,
                storeDir: config.storeDir,
                source,
                publisherName: 'demo',
                publicKeyPem: await readFile(join(root, 'publisher.pub'), 'utf8'),
                name: 'demo-os',
                versions: ['1', '2'],
                release: '1',
                at: Date.now(),
              });
            },
          }
        : {}),
    });
    // Listen for the stop signals before saying we are up: whoever reads the line may stop us.
    const stopped = new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    const result = {
      url: center.url,
      metricsUrl: center.metricsUrl,
      keyid: center.keyid,
      dataDir: config.dataDir,
      initialAdmin: center.initialAdmin,
    };
    if (inv.json) ctx.out(JSON.stringify(result));
    else {
      ctx.out(`Center listening on ${center.url} (data in ${config.dataDir})`);
      if (center.metricsUrl) ctx.out(`Metrics at ${center.metricsUrl}/metrics`);
      if (center.initialAdmin) {
        ctx.out(
          `First start: administrator "${center.initialAdmin.username}" created with the one-time password`,
        );
        ctx.out(`  ${center.initialAdmin.password}`);
        ctx.out('It is shown only now; change it after logging in.');
      }
    }
    await stopped;
    log.info({ component: 'http' }, 'shutting down');
    await center.close();
    return undefined;
  },
};

export const centerCommands: Command[] = [serve];
