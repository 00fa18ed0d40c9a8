/*
 * Files that survive a crash at any moment: replaced whole or not at all (temporary file, fsync,
 * rename, directory fsync), JSON files with a schema and a previous good copy, and the two small
 * helpers every such writer needs. Used by the chunk store (src/image) and by Engine's state.
 */
export {
  exists,
  fsyncDir,
  removeFile,
  replaceFile,
  replaceFileByCopy,
  replaceJsonFile,
  type ReplaceOptions,
} from './files.ts';
export {
  AtomicJsonFile,
  type AtomicJsonFileOptions,
  type ReadOptions as AtomicJsonReadOptions,
} from './json-file.ts';
