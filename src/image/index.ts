// The image pipeline: chunked, signed disk images that travel as deltas (DESIGN §2).
export {
  DEFAULT_PACK_LEVEL,
  importImage,
  type ImportOptions,
  type ImportProgress,
  type ImportResult,
} from './import.ts';
export { pullImage, type PullOptions, type PullProgress, type PullResult } from './pull.ts';
export {
  inspectImage,
  verifyImage,
  listImages,
  diffImages,
  type VerifyReport,
  type DiffReport,
} from './inspect.ts';
export {
  DEFAULT_CHUNKER,
  DEFAULT_FASTCDC,
  describeChunker,
  planBlockCdc,
  FastCdc,
  type Span,
} from './chunker.ts';
export { encodeChunkIndex, decodeChunkIndex, type ChunkEntry } from './chunk-index.ts';
export {
  manifestId,
  signManifest,
  verifyManifest,
  trustedSignatures,
  parseManifest,
  encodeManifest,
} from './manifest.ts';
export { readManifest, readIndex, readChunk } from './read.ts';
export { scanImage } from './scan.ts';
export { WorkerPool } from './pool.ts';
export * from './store/index.ts';
export { decodeSketches } from './sketches.ts';
export { rebuildCatalog } from './catalog.ts';
export { sha256File } from './digest-file.ts';
