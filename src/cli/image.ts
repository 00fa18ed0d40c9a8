import { resolve } from 'node:path';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import { loadPrivateKey, loadPublicKey, type PublicKeyInfo } from '../signing/index.ts';
import {
  DEFAULT_CHUNKER,
  DEFAULT_PACK_LEVEL,
  DEFAULT_FASTCDC,
  DirectoryStore,
  describeChunker,
  diffImages,
  importImage,
  inspectImage,
  listImages,
  openStore,
  pullImage,
  verifyImage,
} from '../image/index.ts';
import {
  integerOption,
  optionalString,
  parseImageRef,
  requireString,
  stringList,
  type Command,
  type CommandContext,
  type Invocation,
} from './command.ts';
import { ProgressBar, formatBytes } from './progress.ts';

async function trustedKeys(inv: Invocation, required: boolean): Promise<PublicKeyInfo[]> {
  const paths = stringList(inv, 'trust');
  if (required && paths.length === 0) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      '--trust PUBKEY is required: the publisher public key that must have signed the image',
    );
  }
  return Promise.all(paths.map((p) => loadPublicKey(p)));
}

function directoryStore(inv: Invocation): DirectoryStore {
  const store = requireString(inv, 'store');
  if (/^https?:\/\//i.test(store)) {
    throw new BulkheadError(
      ErrorCodes.USAGE,
      `--store must be a local directory here, not ${store}`,
    );
  }
  return new DirectoryStore(store);
}

function bar(ctx: CommandContext): ProgressBar {
  return new ProgressBar(process.stderr, ctx.isTTY);
}

const importCmd: Command = {
  name: 'image import',
  summary:
    'Cut a disk image (raw, qcow2, vmdk, vhdx, …) into chunks, store the new ones, and publish a signed manifest; builds a pack of the new chunks since the parent version.',
  usage: `Usage: bulkhead image import FILE --store DIR --name NAME --version VER --key KEYFILE
         [--parent VER | --no-parent] [--format FMT] [--chunker block-cdc|fastcdc]
         [--level N] [--pack-level N | --no-pack] [--no-delta] [--json]

  --parent VER     the version this one follows (default: the newest of NAME in the store)
  --level N        zstd level of single chunks (default 3)
  --pack-level N   zstd level of the pack (default ${DEFAULT_PACK_LEVEL})
  --no-pack        do not build a pack (PCs then fetch new chunks one by one)
  --no-delta       compress the pack without the parent's resembling chunks as references`,
  options: {
    store: { type: 'string' },
    name: { type: 'string' },
    version: { type: 'string' },
    key: { type: 'string' },
    parent: { type: 'string' },
    'no-parent': { type: 'boolean' },
    format: { type: 'string' },
    chunker: { type: 'string' },
    level: { type: 'string' },
    'pack-level': { type: 'string' },
    'no-pack': { type: 'boolean' },
    'no-delta': { type: 'boolean' },
  },
  async run(inv, ctx) {
    const file = inv.positionals[0];
    if (!file || inv.positionals.length > 1)
      throw new BulkheadError(ErrorCodes.USAGE, 'give exactly one image FILE to import');
    const store = directoryStore(inv);
    const key = await loadPrivateKey(requireString(inv, 'key'));
    const chunkerName = optionalString(inv, 'chunker') ?? 'block-cdc';
    if (chunkerName !== 'block-cdc' && chunkerName !== 'fastcdc') {
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `--chunker must be block-cdc or fastcdc, not "${chunkerName}"`,
      );
    }
    if (inv.values['no-parent'] && inv.values.parent)
      throw new BulkheadError(ErrorCodes.USAGE, 'give --parent or --no-parent, not both');
    const progress = bar(ctx);
    const result = await importImage({
      file,
      store,
      name: requireString(inv, 'name'),
      version: requireString(inv, 'version'),
      key,
      parent: inv.values['no-parent'] ? null : optionalString(inv, 'parent'),
      chunker: chunkerName === 'fastcdc' ? DEFAULT_FASTCDC : DEFAULT_CHUNKER,
      format: optionalString(inv, 'format'),
      chunkLevel: integerOption(inv, 'level', 1, 22),
      packLevel: integerOption(inv, 'pack-level', 1, 22),
      pack: inv.values['no-pack'] !== true,
      delta: inv.values['no-delta'] !== true,
      tempDir: resolve(store.location, '.tmp'),
      onProgress: (p) => progress.update(p.phase, p.doneBytes, p.totalBytes),
    }).finally(() => progress.done());
    if (!inv.json) {
      ctx.out(
        `imported ${result.name}@${result.version} (${result.format}, ${formatBytes(result.size)}) in ${result.seconds.toFixed(1)} s`,
      );
      ctx.out(`  manifest  ${result.manifest}`);
      ctx.out(
        `  chunks    ${result.chunks} (${result.uniqueChunks} distinct), zero ${formatBytes(result.zeroBytes)}`,
      );
      ctx.out(
        `  new       ${result.newChunks} chunks, ${formatBytes(result.newBytes)} → ${formatBytes(result.storedBytes)} stored`,
      );
      if (result.pack) {
        ctx.out(
          `  pack      from ${result.pack.from}: ${result.pack.chunks} chunks, ${formatBytes(result.pack.rawBytes)} → ${formatBytes(result.pack.bytes)}; ${result.pack.deltaChunks} compressed against ${result.pack.refs} chunks of ${result.pack.from}`,
        );
        if (result.indexDeltaBytes !== null) {
          ctx.out(
            `  index     ${formatBytes(result.indexBytes)}; ${formatBytes(result.indexDeltaBytes)} against ${result.pack.from}'s`,
          );
        }
      }
    }
    return result;
  },
};

const pullCmd: Command = {
  name: 'image pull',
  summary:
    'Rebuild an image version from local seeds plus only the chunks they lack; verifies the signature, every chunk and the final digest.',
  usage: `Usage: bulkhead image pull --from STORE --image NAME@VER --trust PUBKEY --out FILE
         [--seed FILE]... [--force] [--parallel N] [--json]

  STORE is a directory or an http(s) URL. An interrupted pull resumes: run it again.`,
  options: {
    from: { type: 'string' },
    image: { type: 'string' },
    trust: { type: 'string', multiple: true },
    out: { type: 'string' },
    seed: { type: 'string', multiple: true },
    force: { type: 'boolean' },
    parallel: { type: 'string' },
  },
  async run(inv, ctx) {
    const { name, version } = parseImageRef(requireString(inv, 'image'));
    const trusted = await trustedKeys(inv, true);
    const store = openStore(requireString(inv, 'from'));
    const progress = bar(ctx);
    const result = await pullImage({
      store,
      name,
      version,
      trusted,
      out: requireString(inv, 'out'),
      seeds: stringList(inv, 'seed'),
      force: inv.values.force === true,
      parallel: integerOption(inv, 'parallel', 1, 64),
      onProgress: (p) => progress.update(p.phase, p.doneBytes, p.totalBytes),
      onWarning: (m) => {
        progress.done();
        ctx.err(`warning: ${m}`);
      },
    }).finally(() => progress.done());
    if (!inv.json) {
      ctx.out(
        `pulled ${name}@${version} → ${requireString(inv, 'out')} in ${result.seconds.toFixed(1)} s (sha256 ${result.sha256.slice(0, 16)}… verified)`,
      );
      ctx.out(
        `  downloaded ${formatBytes(result.downloadedBytes)} (${result.chunksDownloaded} chunks, ${result.packFrames} pack frames)`,
      );
      ctx.out(
        `  reused     ${formatBytes(result.reusedBytes)} from seeds${result.reflinked ? ' (reflinked)' : ''}${result.resumed ? ', resumed an interrupted pull' : ''}`,
      );
    }
    return result;
  },
};

const inspectCmd: Command = {
  name: 'image inspect',
  summary:
    'Show an image version’s manifest in a local store; with --trust, verify its signature too.',
  usage: 'Usage: bulkhead image inspect --store STORE NAME@VER [--trust PUBKEY]... [--json]',
  options: { store: { type: 'string' }, trust: { type: 'string', multiple: true } },
  async run(inv, ctx) {
    const { name, version } = parseImageRef(inv.positionals[0]);
    const trusted = await trustedKeys(inv, false);
    const r = await inspectImage(openStore(requireString(inv, 'store')), name, version, trusted);
    if (!inv.json) {
      const b = r.body;
      ctx.out(
        `${b.name}@${b.version}  ${r.verified ? 'signature verified' : 'signature NOT checked (give --trust)'}`,
      );
      ctx.out(`  manifest  ${r.id}`);
      ctx.out(`  size      ${formatBytes(b.size)} (${b.size} bytes), sha256 ${b.sha256}`);
      ctx.out(`  created   ${b.created}`);
      ctx.out(
        `  parent    ${b.parent ? `${b.parent.version} (${b.parent.manifest.slice(0, 16)}…)` : 'none'}`,
      );
      ctx.out(`  chunker   ${describeChunker(b.chunker)}`);
      ctx.out(
        `  chunks    ${b.stats.chunks} (${b.stats.uniqueChunks} distinct), data ${formatBytes(b.stats.dataBytes)}, zero ${formatBytes(b.stats.zeroBytes)}`,
      );
      ctx.out(`  index     ${b.index.digest} (${b.index.entries} entries)`);
      ctx.out(`  signers   ${r.signers.join(', ')}`);
    }
    return r;
  },
};

const verifyCmd: Command = {
  name: 'image verify',
  summary:
    'Check an image version in a store end to end (signature, index, every chunk, packs); with --file, a local image too.',
  usage:
    'Usage: bulkhead image verify --store STORE NAME@VER --trust PUBKEY [--file IMAGE] [--json]',
  options: {
    store: { type: 'string' },
    trust: { type: 'string', multiple: true },
    file: { type: 'string' },
  },
  async run(inv, ctx) {
    const { name, version } = parseImageRef(inv.positionals[0]);
    const trusted = await trustedKeys(inv, true);
    const progress = bar(ctx);
    const r = await verifyImage(openStore(requireString(inv, 'store')), name, version, trusted, {
      file: optionalString(inv, 'file'),
      onProgress: (d, t) => progress.update('chunks', d, t),
    }).finally(() => progress.done());
    if (!inv.json) {
      ctx.out(`${name}@${version}: ${r.ok ? 'OK' : 'PROBLEMS FOUND'} (${r.chunks} chunks checked)`);
      for (const d of r.missing) ctx.out(`  missing chunk ${d}`);
      for (const d of r.corrupt) ctx.out(`  corrupt chunk ${d}`);
      for (const p of r.packs) ctx.out(`  pack from ${p.from}: ${p.ok ? 'OK' : p.problem}`);
      if (r.file)
        ctx.out(
          `  file ${r.file.path}: ${r.file.ok ? 'matches' : `does NOT match (sha256 ${r.file.sha256})`}`,
        );
    }
    if (!r.ok) {
      const storeOk =
        r.missing.length === 0 && r.corrupt.length === 0 && r.packs.every((p) => p.ok);
      throw storeOk
        ? new BulkheadError(
            ErrorCodes.IMAGE_DIGEST_MISMATCH,
            `${r.file?.path} is not ${name}@${version}: its SHA-256 differs from the signed manifest's`,
            {
              hint: 'the local file was altered or is another version; pull the image again',
              details: r,
            },
          )
        : new BulkheadError(
            ErrorCodes.CHUNK_CORRUPT,
            `${name}@${version} failed verification in the store`,
            {
              hint: 're-import the image into this store, or restore the store from a good copy',
              details: r,
            },
          );
    }
    return r;
  },
};

const listCmd: Command = {
  name: 'image list',
  summary: "List the image versions a local store holds (`images list`: Center's images).",
  usage: 'Usage: bulkhead image list --store STORE [--json]',
  options: { store: { type: 'string' } },
  async run(inv, ctx) {
    const images = await listImages(openStore(requireString(inv, 'store')));
    if (!inv.json) {
      if (images.length === 0) ctx.out('no images');
      for (const i of images) {
        ctx.out(
          `${`${i.name}@${i.version}`.padEnd(32)} ${formatBytes(i.size).padStart(10)}  ${i.created}  parent ${i.parent ?? '-'}${i.packs.length ? `  packs from ${i.packs.join(', ')}` : ''}`,
        );
      }
    }
    return { images };
  },
};

const diffCmd: Command = {
  name: 'image diff',
  summary: 'The bytes a PC holding version A must download to get version B.',
  usage: 'Usage: bulkhead image diff --store DIR NAME@A NAME@B [--trust PUBKEY] [--json]',
  options: { store: { type: 'string' }, trust: { type: 'string', multiple: true } },
  async run(inv, ctx) {
    if (inv.positionals.length !== 2)
      throw new BulkheadError(ErrorCodes.USAGE, 'give two versions: NAME@A NAME@B');
    const a = parseImageRef(inv.positionals[0], 'A');
    const b = parseImageRef(inv.positionals[1], 'B');
    if (a.name !== b.name)
      throw new BulkheadError(
        ErrorCodes.USAGE,
        `A and B must be versions of one image, not ${a.name} and ${b.name}`,
      );
    const r = await diffImages(
      directoryStore(inv),
      a.name,
      a.version,
      b.version,
      await trustedKeys(inv, false),
    );
    if (!inv.json) {
      ctx.out(
        `${a.name}: ${a.version} → ${b.version}: download ${formatBytes(r.downloadBytes)} (${r.downloadBytes} bytes)`,
      );
      ctx.out(`  new chunks  ${r.newChunks}, ${formatBytes(r.newRawBytes)} uncompressed`);
      ctx.out(
        `  pack        ${r.usesPack ? formatBytes(r.packBytes) : 'none'}; single chunks ${formatBytes(r.singleChunkBytes)}; index ${formatBytes(r.indexBytes)}; manifest ${formatBytes(r.manifestBytes)}`,
      );
    }
    return r;
  },
};

export const imageCommands: Command[] = [
  importCmd,
  pullCmd,
  inspectCmd,
  verifyCmd,
  listCmd,
  diffCmd,
];
