import { pino } from 'pino';
import {
  configFromEnv,
  readConfigFile,
  resolveConfig,
  seedImages,
  startCenter,
  type CenterConfigInput,
} from '../center/index.ts';
import { join, resolve } from 'node:path';
import { readFile } from 'node:fs/promises';
import { DirectoryStore } from '../image/index.ts';
import { DEMO_IMAGE, ensureDemoStore, type DemoStore } from './demo.ts';
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
  --demo builds the demo OS image (two versions of the test guest's system volume, once, under
  DIR/demo, or reuses what \`bulkhead demo\` made there) and publishes both in Center, version 1
  released, its publisher key trusted; every later start reuses them. Then \`bulkhead demo pc\`
  runs a real PC against it.`,
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
    let demoStore: DemoStore | undefined;
    const center = await startCenter({
      config,
      log,
      ...(demo
        ? {
            prepare: async (database) => {
              demoStore = await ensureDemoStore(join(config.dataDir, 'demo'), (line) => {
                if (!inv.json) ctx.out(line);
              });
              await seedImages({
                db: database.db,
                storeDir: config.storeDir,
                source: new DirectoryStore(demoStore.storeDir),
                publisherName: 'demo',
                publicKeyPem: await readFile(demoStore.publicKeyPath, 'utf8'),
                name: DEMO_IMAGE,
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
    const next = nextSteps({
      url: center.url,
      dataDir: config.dataDir,
      databaseFlag: flags.database !== undefined,
      configFile: file,
      demo,
    });
    const result = {
      url: center.url,
      metricsUrl: center.metricsUrl,
      keyid: center.keyid,
      dataDir: config.dataDir,
      initialAdmin: center.initialAdmin,
      demo:
        demoStore === undefined
          ? null
          : {
              image: DEMO_IMAGE,
              versions: ['1', '2'],
              released: '1',
              store: demoStore.storeDir,
              publisherKey: demoStore.privateKeyPath,
              publisherKeyId: demoStore.keyid,
            },
      next,
    };
    if (inv.json) ctx.out(JSON.stringify(result));
    else {
      ctx.out(`Center listening on ${center.url} (data in ${config.dataDir})`);
      ctx.out(`Console: open ${center.url}/ in a browser and log in as an administrator`);
      if (center.metricsUrl) ctx.out(`Metrics at ${center.metricsUrl}/metrics`);
      if (demoStore) {
        ctx.out(
          `Demo image: ${DEMO_IMAGE}@1 (released) and ${DEMO_IMAGE}@2 (a patch), from the demo store ${demoStore.storeDir}, signed by ${demoStore.privateKeyPath}`,
        );
      }
      if (center.initialAdmin) {
        ctx.out(
          `First start: administrator "${center.initialAdmin.username}" created with the one-time password`,
        );
        ctx.out(`  ${center.initialAdmin.password}`);
        ctx.out('It is shown only now; change it after logging in.');
      } else {
        ctx.out(
          `The administrator exists already (its one-time password was shown on the first start). Forgot it? ${next.resetPassword}`,
        );
      }
      ctx.out('Next, in another shell:');
      ctx.out(`  ${next.login}`);
      if (next.demoPc) {
        ctx.out(`  ${next.demoPc}`);
        ctx.out(
          `    a real PC: builds the test guest, runs Engine and a VM under ${join(config.dataDir, 'demo-pc')},`,
        );
        ctx.out(`    and rolls out ${DEMO_IMAGE}@2 to it (QEMU; a few minutes without KVM)`);
      }
      ctx.out(
        '(`bulkhead` is ./bin/bulkhead.js in this checkout; `npm link` puts it on your PATH.)',
      );
    }
    await stopped;
    log.info({ component: 'http' }, 'shutting down');
    await center.close();
    return undefined;
  },
};

/** The commands a person runs next, as `center serve` prints them (and `--json` gives them). */
function nextSteps(o: {
  url: string;
  dataDir: string;
  databaseFlag: boolean;
  configFile: string | undefined;
  demo: boolean;
}): { login: string; resetPassword: string; demoPc: string | null } {
  // The database options of `center admin reset` that point it at this Center's database. A
  // --database URL may hold a password: it is named, never printed.
  const where = [
    o.configFile === undefined ? '' : ` --config ${o.configFile}`,
    o.dataDir === resolve('data') ? '' : ` --data ${o.dataDir}`,
    o.databaseFlag ? ' --database URL' : '',
  ].join('');
  const demoDir = o.dataDir === resolve('data') ? '' : ` --dir ${o.dataDir}`;
  return {
    login: `bulkhead login --center ${o.url} --username admin`,
    resetPassword: `bulkhead center admin reset --username admin${where}`,
    demoPc: o.demo ? `bulkhead demo pc${demoDir}` : null,
  };
}

export const centerCommands: Command[] = [serve];
