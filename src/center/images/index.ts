// Center's images: trusted publisher keys, images and their versions, uploads into the store.
export { imagesAdmin } from './plugin.ts';
export { pushVersion, findMissing, putChunk, putIndex, type UploadContext } from './upload.ts';
export { publishVersion, releaseVersion, applyRelease, findImage } from './images.ts';
export { createPublisher, publisherTrust } from './publishers.ts';
export { seedImages } from './demo.ts';
