import { defineConfig } from 'vite';

// Built by scripts/setup.js into dist/, which the server serves as static files. No inline
// scripts or styles end up in the output, so the server's Content-Security-Policy can stay strict.
export default defineConfig({
  root: import.meta.dirname,
  base: './',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    assetsInlineLimit: 0,
    // One bundle with noVNC, served from the PC's own loopback: its size costs no network, and
    // a split would only add a round trip before the first screen.
    chunkSizeWarningLimit: 1024,
  },
});
