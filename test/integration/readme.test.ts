import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BIN, killProcess } from '../support/cli.ts';
import { exec, ext4Image, osFiles, tempDir, tool } from '../support/fixtures.ts';
import { PATIENCE_MS, waitFor } from '../support/wait.ts';

// Every shell command in README.md, run as written, in the order a reader meets them: a test
// that fails when the README asks for something the product does not do.
//
// What the test provides is what a reader's machine provides: a shell with `bulkhead` on its
// PATH and as ./bin/bulkhead.js (this checkout's launcher), an empty working directory and home, the disk images
// the tour imports (`debian-12.1.raw`, `debian-12.2.qcow2`, `editor-1.raw`, `editor-2.raw`,
// which a reader brings), and the
// Center `npm start` runs (`bulkhead center serve --demo`, in that directory). Center listens
// on a free port rather than 8080, which other tests or programs may hold; that address is the
// one text the test replaces in a command. The few commands that cannot run inside a test are
// listed in ELSEWHERE with what runs them; any other command the README gains is run.

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const README = join(ROOT, 'README.md');
const DEFAULT_CENTER = 'http://127.0.0.1:8080';

/** Commands run elsewhere, and where: a README line starting with one of these is not run here. */
const ELSEWHERE: [prefix: string, why: string][] = [
  ['npm start', 'installs packages (npm ci) under the running tests; its Center is started here'],
  ['npm test', 'is this suite (CI runs it)'],
  ['npm run -s bench', 'builds Debian images with debootstrap; bench/ is its own command'],
  ['npm run -s fuzz', 'its short runs are test/integration/fuzz-api.test.ts'],
  [
    'npm run -s guest -- --debian',
    'bootstraps a Debian system as root: test/guest/debian-guest.test.ts builds the same guest',
  ],
  ['./bin/bulkhead.js demo pc', 'boots a VM under QEMU for minutes: test/qemu/demo-pc.test.ts'],
  ['bulkhead demo pc', 'boots a VM under QEMU for minutes: test/qemu/demo-pc.test.ts'],
  [
    'bulkhead engine run',
    'runs VMs until stopped; test/integration/engine-process.test.ts and test/qemu run it',
  ],
  ['bulkhead engine screenshot', 'needs a running VM: test/qemu/screen.test.ts runs it'],
  ['bulkhead engine switcher', 'needs engine run: test/qemu/switcher.test.ts runs it'],
  [
    'curl -s --unix-socket $S',
    "needs engine run's local API and a running VM: test/qemu/screen.test.ts calls it",
  ],
];

interface Block {
  heading: string;
  line: number;
  /** Logical lines (continuations joined), comments and blank lines kept out. */
  commands: string[];
}

/** The ```sh blocks of the README with the heading each is under. */
export function shellBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  let heading = '';
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (/^#{1,4} /.test(line)) heading = line.replace(/^#+ /, '');
    const open = /^(\s*)```(\w*)\s*$/.exec(line);
    if (open === null) continue;
    const body: string[] = [];
    let j = i + 1;
    while (j < lines.length && !/^\s*```\s*$/.test(lines[j]!)) body.push(lines[j++]!);
    if (open[2] === 'sh') {
      const commands: string[] = [];
      let pending = '';
      for (const raw of body) {
        const text = raw.trim();
        if (pending === '' && (text === '' || text.startsWith('#'))) continue;
        if (text.endsWith('\\')) {
          pending += `${text.slice(0, -1).trimEnd()} `;
          continue;
        }
        commands.push(pending + text);
        pending = '';
      }
      blocks.push({ heading, line: i + 1, commands });
    }
    i = j;
  }
  return blocks;
}

/** A placeholder a reader would have to replace: the README must give real values. */
const PLACEHOLDER = /\b(DEVICE-ID|ROLLOUT-ID|TOKEN|KEYID|ID|NAME|FILE|DIR|URL)\b(?![=-])|…|\|/;

test('the README names no command it cannot run, and no placeholder', async () => {
  const blocks = shellBlocks(await readFile(README, 'utf8'));
  assert.ok(blocks.length >= 8, `found only ${blocks.length} shell blocks`);
  const problems: string[] = [];
  for (const b of blocks) {
    for (const c of b.commands) {
      if (ELSEWHERE.some(([p]) => c.startsWith(p))) continue;
      const stripped = c.replace(/\s+#\s.*$/, '').replace(/\$\([^)]*\)/g, '');
      if (PLACEHOLDER.test(stripped.replace(/'[^']*'|"[^"]*"/g, ''))) {
        problems.push(`README.md:${b.line} (${b.heading}): ${c}`);
      }
    }
  }
  assert.deepEqual(problems, [], 'commands a reader cannot run as written');
});

interface Shell {
  dir: string;
  env: NodeJS.ProcessEnv;
  center: { url: string; password: string };
}

/** Runs one command line in bash with the variables earlier lines set; fails with its output. */
async function run(shell: Shell, command: string, where: string): Promise<string> {
  const state = join(shell.dir, '.readme-state');
  const script = `set -euo pipefail
[ -f ${state} ] && source ${state}
${command}
declare -p $(compgen -v | grep -E '^[A-Z][A-Z0-9_]*$' | grep -vE '^(BASH.*|SHELL.*|PWD|OLDPWD|SHLVL|PPID|UID|EUID|HOSTNAME|HOSTTYPE|OSTYPE|MACHTYPE|PIPESTATUS|GROUPS|RANDOM|SRANDOM|SECONDS|LINENO|FUNCNAME|DIRSTACK|IFS|PS[0-9]|OPTIND|OPTARG|OPTERR|COLUMNS|LINES|HISTCMD|HISTFILE.*|HISTSIZE|EPOCH.*|COMP.*|PATH|HOME|TERM|PIPESTATUS)$') > ${state}.new 2>/dev/null || true
mv ${state}.new ${state}
`;
  const child = spawn('bash', ['-c', script], {
    cwd: shell.dir,
    env: shell.env,
    stdio: ['pipe', 'pipe', 'pipe'],
    timeout: PATIENCE_MS,
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout.on('data', (b: Buffer) => out.push(b));
  child.stderr.on('data', (b: Buffer) => err.push(b));
  // What a person types when asked: `bulkhead login` reads the password from standard input
  // when it is not a terminal, `bulkhead passwd` the current one and a new one.
  child.stdin.end(`${shell.center.password}\n${shell.center.password}-renewed\n`);
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const stdout = Buffer.concat(out).toString();
  const stderr = Buffer.concat(err).toString();
  assert.equal(code, 0, `${where}: \`${command}\` exited ${code}\n${stdout}\n${stderr}`);
  return stdout;
}

let servers = 0;

/**
 * A server command (`bulkhead center serve …`): started in the background, waited for until it
 * says where it listens, and stopped with SIGTERM (exit 0 expected) after the rest of its
 * block ran against it ("from another shell").
 */
async function startServer(
  shell: Shell,
  command: string,
  where: string,
): Promise<{ url: string; child: ChildProcess; stop(): Promise<void> }> {
  // `env` runs it in the shell's place, leading variable assignments included, so SIGTERM
  // reaches it.
  const state = join(shell.dir, '.readme-state');
  const script = `set -euo pipefail\n[ -f ${state} ] && source ${state}\nexec env ${command}`;
  const child = spawn('bash', ['-c', script], {
    cwd: shell.dir,
    // A Center of its own beside the demo's: its own port and data directory.
    env: {
      ...shell.env,
      BULKHEAD_LISTEN: '127.0.0.1:0',
      BULKHEAD_DATA_DIR: join(shell.dir, `.server-${++servers}`),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const url = await waitFor(`${where}: \`${command}\` to listen`, () => {
    if (child.exitCode !== null) {
      throw new Error(`${where}: \`${command}\` exited ${child.exitCode}\n${out}\n${err}`);
    }
    return /listening on (http:\/\/\S+)/.exec(out)?.[1];
  });
  return {
    url,
    child,
    async stop() {
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      assert.equal(await exited, 0, `${where}: \`${command}\` did not stop cleanly\n${err}`);
    },
  };
}

test('every command in the README runs as written', { timeout: 20 * 60_000 }, async (t) => {
  const dir = await tempDir(t, 'bulkhead-readme-');
  const bin = join(dir, '.bin');
  await mkdir(bin);
  await writeFile(join(bin, 'bulkhead'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`);
  await chmod(join(bin, 'bulkhead'), 0o755);
  // The checkout's own launcher, as the README calls it from the checkout's root.
  await mkdir(join(dir, 'bin'));
  await symlink(BIN, join(dir, 'bin', 'bulkhead.js'));
  const home = join(dir, '.home');
  await mkdir(home);

  // The disk images a reader brings to the tour: an ext4 system and its patch, the second as
  // qcow2.
  const images = await tempDir(t);
  await exec('cp', [await ext4Image(images, 'v1', osFiles(1)), join(dir, 'debian-12.1.raw')]);
  const v2 = await ext4Image(images, 'v2', osFiles(2));
  await tool(
    'qemu-img',
    ['convert', '-f', 'raw', '-O', 'qcow2', v2, join(dir, 'debian-12.2.qcow2')],
    'qemu-utils',
  );
  // And an app layer in two versions, for the optional applications.
  for (const version of [1, 2]) {
    const app = { 'app.json': Buffer.from(`{"name":"editor","version":"${version}"}\n`) };
    const image = await ext4Image(images, `editor${version}`, app, '8M');
    await exec('cp', [image, join(dir, `editor-${version}.raw`)]);
  }

  const env: NodeJS.ProcessEnv = {
    PATH: `${bin}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    HOME: home,
    LANG: 'C.UTF-8',
    BULKHEAD_ENGINE_DATA: join(dir, 'engine'),
  };
  // What `npm start` runs once its packages are installed.
  const demo = spawn(process.execPath, [BIN, 'center', 'serve', '--demo', '--json'], {
    cwd: dir,
    env: { ...env, BULKHEAD_LISTEN: '127.0.0.1:0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => killProcess(demo));
  let demoOut = '';
  let demoErr = '';
  demo.stdout.on('data', (b: Buffer) => (demoOut += b.toString()));
  demo.stderr.on('data', (b: Buffer) => (demoErr += b.toString()));
  const info = await waitFor('the demo Center to listen', () => {
    if (demo.exitCode !== null) throw new Error(`center serve --demo exited: ${demoErr}`);
    const first = demoOut.split('\n')[0];
    return demoOut.includes('\n') && first
      ? (JSON.parse(first) as { url: string; initialAdmin: { password: string } })
      : undefined;
  });
  const shell: Shell = {
    dir,
    env,
    center: { url: info.url, password: info.initialAdmin.password },
  };

  const blocks = shellBlocks(await readFile(README, 'utf8'));
  let ran = 0;
  for (const block of blocks) {
    const where = `README.md:${block.line} (${block.heading})`;
    const started: Awaited<ReturnType<typeof startServer>>[] = [];
    try {
      for (const written of block.commands) {
        if (ELSEWHERE.some(([prefix]) => written.startsWith(prefix))) continue;
        const target = started.at(-1)?.url ?? shell.center.url;
        const command = written.replaceAll(DEFAULT_CENTER, target);
        if (/\bbulkhead center serve\b/.test(command) && !/--help/.test(command)) {
          started.push(await startServer(shell, command, where));
        } else {
          await run(shell, command, where);
        }
        ran++;
      }
    } finally {
      for (const s of started.reverse()) await s.stop();
    }
  }
  assert.ok(ran >= 30, `ran only ${ran} commands`);
});
