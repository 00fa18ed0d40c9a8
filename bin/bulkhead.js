#!/usr/bin/env node
// Launcher: Bulkhead runs on Node 24 (TypeScript by type stripping). Where the `node` on
// PATH is older, re-run this command with the Node pinned in node_modules.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import module from 'node:module';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const major = Number(process.versions.node.split('.')[0]);

if (major >= 24) {
  // Keep the compiled (and type-stripped) modules between runs, in the user's temporary
  // directory: a command starts in about half the time. NODE_COMPILE_CACHE, when set, wins.
  module.enableCompileCache?.();
  const { main } = await import('../src/cli/main.ts');
  process.exitCode = await main(process.argv.slice(2));
} else {
  const pinned = join(root, 'node_modules', 'node', 'bin', 'node');
  if (!existsSync(pinned)) {
    console.error(
      `bulkhead: needs Node 24 or newer (this is ${process.versions.node}); run \`npm ci\` in ${root} to install the pinned one.`,
    );
    process.exit(1);
  }
  const child = spawn(pinned, [fileURLToPath(import.meta.url), ...process.argv.slice(2)], {
    stdio: 'inherit',
  });
  // The child is the real server or Engine: every signal that would end this process goes to
  // it instead, and this process ends when (and as) the child does. So systemd or a shell that
  // stops the launcher never leaves an orphaned Center or Engine behind.
  const forwarded = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
  for (const sig of forwarded) {
    process.on(sig, () => {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    });
  }
  child.on('error', (err) => {
    console.error(`bulkhead: could not run ${pinned}: ${err.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    if (signal) {
      // Ended by a signal: end the same way, so the caller sees what the child's caller would.
      for (const sig of forwarded) process.removeAllListeners(sig);
      process.kill(process.pid, signal);
      // A signal this process ignores or cannot raise: the shell's convention.
      process.exit(128 + (constants.signals[signal] ?? 0));
    }
    process.exit(code ?? 1);
  });
}
