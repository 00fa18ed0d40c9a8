import {
  DirectoryStore,
  chunkKey,
  indexKey,
  manifestKey,
  parseManifest,
  readIndex,
} from '../image/index.ts';
import {
  BulkheadError,
  endpoints,
  ErrorCodes,
  ImageKindSchema,
  MAX_INDEX_BYTES,
  MAX_MANIFEST_BYTES,
  isBulkheadError,
  type ImageKindName,
} from '../protocol/index.ts';
import type { ApiClient } from './api-client.ts';
import { CONNECTION_USAGE, connect } from './session.ts';
import { integerOption, optionalString, requireString, type Command } from './command.ts';
import { ProgressBar, formatBytes } from './progress.ts';

/** Digests asked about per `POST /store/missing`. */
const MISSING_BATCH = 10_000;

/** Runs `fn` over `items`, at most `limit` at a time; stops at the first failure. */
async function eachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Tries a request up to three times while it fails with a retryable error. */
async function withRetry<T>(attempt: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await attempt();
    } catch (err) {
      if (i >= 2 || !isBulkheadError(err) || !err.retryable) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** i));
    }
  }
}

export interface PushResult {
  center: string;
  name: string;
  version: string;
  imageId: string;
  versionId: string;
  manifest: string;
  /** False when Center already had this version with this manifest. */
  created: boolean;
  state: string;
  chunks: {
    total: number;
    sent: number;
    /** Compressed bytes sent. */
    sentBytes: number;
    skipped: number;
    /** Uncompressed bytes of the chunks Center already had. */
    skippedBytes: number;
  };
  indexSent: boolean;
  seconds: number;
}

/**
 * Sends one image version from a local store to Center: asks which chunks it lacks, uploads
 * only those (a few at a time), then the index if needed, then the signed manifest, which
 * Center verifies and records as a draft.
 */
export async function pushImage(opts: {
  api: ApiClient;
  store: DirectoryStore;
  name: string;
  version: string;
  kind?: ImageKindName | undefined;
  parallel?: number;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
}): Promise<PushResult> {
  const started = performance.now();
  const { api, store, name, version } = opts;
  let bytes: Buffer;
  try {
    bytes = await store.read(manifestKey(name, version), MAX_MANIFEST_BYTES);
  } catch (err) {
    if (isBulkheadError(err, ErrorCodes.OBJECT_NOT_FOUND)) {
      throw new BulkheadError(
        ErrorCodes.IMAGE_NOT_FOUND,
        `${name}@${version} is not in the store ${store.location}`,
        { cause: err, hint: '`bulkhead image list --store …` shows what the store holds' },
      );
    }
    throw err;
  }
  const body = parseManifest(bytes).signed;
  if (body.name !== name || body.version !== version) {
    throw new BulkheadError(
      ErrorCodes.MANIFEST_MISMATCH,
      `the store's manifest for ${name}@${version} is for ${body.name}@${body.version}`,
    );
  }
  const lengths = new Map<string, number>();
  for (const e of await readIndex(store, body)) {
    if (e.digest !== null) lengths.set(e.digest, e.length);
  }
  const digests = [...lengths.keys()];

  const missing: string[] = [];
  let indexMissing = false;
  for (let i = 0; i < Math.max(1, digests.length); i += MISSING_BATCH) {
    const r = await api.call(endpoints.findMissing, {
      body: {
        chunks: digests.slice(i, i + MISSING_BATCH),
        indexes: i === 0 ? [body.index.digest] : [],
      },
    });
    missing.push(...r.missing);
    if (r.missingIndexes.length > 0) indexMissing = true;
  }

  const totalBytes = missing.reduce((n, d) => n + lengths.get(d)!, 0);
  let doneBytes = 0;
  let sentBytes = 0;
  await eachLimit(missing, opts.parallel ?? 4, async (digest) => {
    const length = lengths.get(digest)!;
    const data = await store.read(chunkKey(digest), length + (length >> 7) + 1024);
    await withRetry(() => api.call(endpoints.putChunk, { params: { digest }, body: data }));
    sentBytes += data.length;
    doneBytes += length;
    opts.onProgress?.(doneBytes, totalBytes);
  });
  if (indexMissing) {
    const data = await store.read(indexKey(body.index.digest), MAX_INDEX_BYTES);
    await api.call(endpoints.putIndex, { params: { digest: body.index.digest }, body: data });
  }
  const pushed = await api.call(endpoints.pushVersion, {
    params: { name, version },
    query: { kind: opts.kind },
    body: bytes,
  });
  const sent = new Set(missing);
  const skipped = digests.filter((d) => !sent.has(d));
  return {
    center: api.baseUrl,
    name,
    version,
    imageId: pushed.image.id,
    versionId: pushed.version.id,
    manifest: pushed.version.manifestId,
    created: pushed.created,
    state: pushed.version.state,
    chunks: {
      total: digests.length,
      sent: missing.length,
      sentBytes,
      skipped: digests.length - missing.length,
      skippedBytes: skipped.reduce((n, d) => n + lengths.get(d)!, 0),
    },
    indexSent: indexMissing,
    seconds: (performance.now() - started) / 1000,
  };
}

export const pushCommand: Command = {
  name: 'image push',
  summary:
    'Upload an image version from a local store to Center: only the chunks Center lacks, then the signed manifest (recorded as a draft).',
  usage: `Usage: bulkhead image push --store DIR NAME VERSION [--kind system|app]
         [--publish | --release] [--parallel N] [--json]

  --kind KIND     the image's kind when this push creates it (default system)
  --publish       publish the version after the upload (released if the image has none)
  --release       publish it and make it the version devices get
  --parallel N    chunk uploads in flight (default 4)
  Pushing a version again sends nothing and changes nothing. It needs an operator's rights.

${CONNECTION_USAGE}`,
  options: {
    center: { type: 'string' },
    token: { type: 'string' },
    store: { type: 'string' },
    kind: { type: 'string' },
    publish: { type: 'boolean' },
    release: { type: 'boolean' },
    parallel: { type: 'string' },
  },
  async run(inv, ctx) {
    if (inv.positionals.length !== 2) {
      throw new BulkheadError(ErrorCodes.USAGE, 'give the image NAME and VERSION to push');
    }
    const [name, version] = inv.positionals as [string, string];
    const kindText = optionalString(inv, 'kind');
    const kind = kindText === undefined ? undefined : ImageKindSchema.safeParse(kindText);
    if (kind && !kind.success) {
      throw new BulkheadError(ErrorCodes.USAGE, `--kind must be system or app, not "${kindText}"`);
    }
    const storeDir = requireString(inv, 'store');
    if (/^https?:\/\//i.test(storeDir)) {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `--store must be a local directory, not ${storeDir}`,
      );
    }
    const api = await connect(inv);
    const parallel = integerOption(inv, 'parallel', 1, 64);
    const progress = new ProgressBar(process.stderr, ctx.isTTY);
    const result = await pushImage({
      api,
      store: new DirectoryStore(storeDir),
      name,
      version,
      kind: kind?.data,
      ...(parallel === undefined ? {} : { parallel }),
      onProgress: (d, t) => progress.update('upload', d, t),
    }).finally(() => progress.done());
    const release = inv.values.release === true;
    let published = false;
    if (release || inv.values.publish === true) {
      const v = await api.call(endpoints.publishVersion, {
        params: { id: result.imageId, version },
        body: { release },
      });
      result.state = v.state;
      published = true;
      if (!inv.json) {
        ctx.out(`published ${name}@${version}${v.released ? ' (released: devices get it)' : ''}`);
      }
    }
    if (!inv.json) {
      const c = result.chunks;
      ctx.out(
        `pushed ${name}@${version} to ${result.center} in ${result.seconds.toFixed(1)} s (${result.created ? 'new draft' : 'already there'}${published ? ', published' : ''})`,
      );
      ctx.out(`  manifest  ${result.manifest}`);
      ctx.out(`  sent      ${c.sent} chunks, ${formatBytes(c.sentBytes)}`);
      ctx.out(`  skipped   ${c.skipped} chunks Center had, ${formatBytes(c.skippedBytes)}`);
    }
    return result;
  },
};
