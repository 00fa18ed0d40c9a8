import { parseArgs, type ParseArgsConfig } from 'node:util';
import { BulkheadError, ErrorCodes, isBulkheadError } from '../protocol/index.ts';
import { imageCommands } from './image.ts';
import { pushCommand } from './push.ts';
import { keysCommands } from './keys.ts';
import { centerCommands } from './center.ts';
import { adminCommands } from './admin.ts';
import { engineCommands } from './engine.ts';
import { remoteCommands } from './remote.ts';
import { fleetCommands } from './fleet.ts';
import { rolloutCommands } from './rollout.ts';
import { demoCommand } from './demo.ts';
import { demoPcCommand } from './demo-pc.ts';
import { printableContext, type Command, type CommandContext } from './command.ts';

const commands: Command[] = [
  ...keysCommands,
  ...imageCommands,
  pushCommand,
  ...centerCommands,
  ...adminCommands,
  ...remoteCommands,
  ...fleetCommands,
  ...rolloutCommands,
  ...engineCommands,
  demoCommand,
  demoPcCommand,
];

const globalHelp = `bulkhead — central images for bare-metal client virtualisation

Usage: bulkhead <command> [options]

Commands:
${commands.map((c) => `  ${c.name.padEnd(16)} ${c.summary}`).join('\n')}

Every command takes --help, and --json for machine-readable output.
Exit codes: 0 success, 1 failure, 2 usage error.`;

/** Runs the CLI; returns the exit code. Never throws for a user's mistake. */
export async function main(
  argv: string[],
  given: CommandContext = defaultContext(),
): Promise<number> {
  // Every human line goes through `printable` (text from Center cannot drive the terminal);
  // --json output is printed exactly as JSON.stringify wrote it.
  const ctx = printableContext(given);
  const words: string[] = [];
  for (const a of argv) {
    if (a.startsWith('-')) break;
    words.push(a);
  }
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    ctx.out(globalHelp);
    return argv.length === 0 ? 2 : 0;
  }
  if (argv[0] === '--version') {
    ctx.out('bulkhead 0.1.0');
    return 0;
  }
  // The longest command name that prefixes the arguments ("image pull", then "image").
  const command = commands
    .filter((c) => c.name.split(' ').every((w, i) => words[i] === w))
    .sort((a, b) => b.name.length - a.name.length)[0];
  if (!command) {
    const group = commands.filter((c) => c.name.startsWith(`${words[0]} `));
    if (group.length > 0) {
      ctx.err(
        `bulkhead: ${words[0]} needs a subcommand: ${group.map((c) => c.name.split(' ')[1]).join(', ')}`,
      );
    } else {
      ctx.err(`bulkhead: unknown command "${words[0] ?? argv[0]}"; run \`bulkhead --help\``);
    }
    return 2;
  }
  const rest = argv.slice(command.name.split(' ').length);
  const config: ParseArgsConfig = {
    args: rest,
    options: {
      ...command.options,
      help: { type: 'boolean', short: 'h' },
      json: { type: 'boolean' },
    },
    allowPositionals: true,
    strict: true,
  };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs(config);
  } catch (err) {
    ctx.err(
      `bulkhead ${command.name}: ${(err as Error).message.split('\n')[0]}; see \`bulkhead ${command.name} --help\``,
    );
    return 2;
  }
  if (parsed.values.help) {
    ctx.out(`${command.usage}\n\n${command.summary}`);
    return 0;
  }
  const json = parsed.values.json === true;
  try {
    const result = await command.run(
      { values: parsed.values, positionals: parsed.positionals, json },
      ctx,
    );
    if (json && result !== undefined) given.out(JSON.stringify(result, null, 2));
    return 0;
  } catch (err) {
    return reportError(err, command, json, ctx, given);
  }
}

function reportError(
  err: unknown,
  command: Command,
  json: boolean,
  ctx: CommandContext,
  raw: CommandContext,
): number {
  if (isBulkheadError(err)) {
    const code = err.code === ErrorCodes.USAGE ? 2 : 1;
    if (json)
      raw.out(
        JSON.stringify(
          {
            error: {
              code: err.code,
              message: err.message,
              hint: err.hint ?? null,
              retryable: err.retryable,
              ...(err.details === undefined ? {} : { details: err.details }),
            },
          },
          null,
          2,
        ),
      );
    ctx.err(`bulkhead ${command.name}: ${err.message}${err.hint ? ` — ${err.hint}` : ''}`);
    return code;
  }
  // A bug, not a user's mistake: say so, and show the stack only on request.
  const e = err as Error;
  ctx.err(
    `bulkhead ${command.name}: internal error: ${e?.message ?? String(err)} (set BULKHEAD_DEBUG=1 for details)`,
  );
  if (process.env.BULKHEAD_DEBUG) ctx.err(e?.stack ?? String(err));
  return 1;
}

function defaultContext(): CommandContext {
  return {
    out: (line) => process.stdout.write(`${line}\n`),
    err: (line) => process.stderr.write(`${line}\n`),
    isTTY: process.stderr.isTTY === true,
  };
}

export function usageError(message: string): BulkheadError {
  return new BulkheadError(ErrorCodes.USAGE, message);
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
