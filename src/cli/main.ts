import { Command as CommanderCommand, CommanderError, Option } from 'commander';
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
import { catalogCommands } from './catalog.ts';
import { userCommands } from './users.ts';
import { demoPcCommand } from './demo-pc.ts';
import { printableContext, type Command, type CommandContext, type Invocation } from './command.ts';

const commands: Command[] = [
  ...keysCommands,
  ...imageCommands,
  pushCommand,
  ...centerCommands,
  ...adminCommands,
  ...remoteCommands,
  ...fleetCommands,
  ...catalogCommands,
  ...userCommands,
  ...rolloutCommands,
  ...engineCommands,
  demoCommand,
  demoPcCommand,
];

const WIDTH = Math.max(...commands.map((c) => c.name.length)) + 1;

const globalHelp = `bulkhead — central images for bare-metal client virtualisation

Usage: bulkhead <command> [options]

Commands:
${commands.map((c) => `  ${c.name.padEnd(WIDTH)} ${c.summary}`).join('\n')}

Every command and group takes --help, and every command --json for machine-readable output.
Exit codes: 0 success, 1 failure, 2 usage error.`;

/** What commander chose to run: a command of the table with its parsed arguments. */
interface Chosen {
  command: Command;
  values: Invocation['values'];
  positionals: string[];
}

/**
 * The commander program for the command table: one-word commands at the top, two-word ones
 * under their group ("image" → "pull"). Commander does the parsing, the help of every group and
 * the suggestions for a misspelt command or flag; each command's own `usage` stays its help. It
 * never exits the process: every outcome reaches `main` as a `CommanderError` or a `Chosen`.
 */
function program(ctx: CommandContext, choose: (c: Chosen) => void): CommanderCommand {
  const root = new CommanderCommand('bulkhead');
  const configure = (c: CommanderCommand): CommanderCommand =>
    c
      .exitOverride()
      .showSuggestionAfterError(true)
      .configureOutput({
        writeOut: (text) => ctx.out(text.replace(/\n$/, '')),
        writeErr: (text) => ctx.err(text.replace(/\n$/, '')),
        // One line: "bulkhead rollout: unknown command 'statu' (Did you mean status?)".
        outputError: (text, write) =>
          write(`${commandPath(c)}: ${oneLine(text)}; see \`${commandPath(c)} --help\`\n`),
      });
  configure(root);
  root.helpInformation = () => `${globalHelp}\n`;
  // Every word of every command's name is a node; "demo" may be a command and a group at once.
  const nodes = new Map<string, CommanderCommand>([['', root]]);
  const node = (path: string[]): CommanderCommand => {
    const key = path.join(' ');
    let found = nodes.get(key);
    if (found === undefined) {
      found = configure(node(path.slice(0, -1)).command(path.at(-1)!));
      found.helpInformation = () => groupHelp(key);
      nodes.set(key, found);
    }
    return found;
  };
  for (const command of commands) {
    const words = command.name.split(' ');
    const leaf = node(words)
      .description(command.summary)
      .argument('[arguments...]')
      .allowExcessArguments(true);
    const subcommands = commands.filter((c) => c.name.startsWith(`${command.name} `));
    leaf.helpInformation = () =>
      `${command.usage}\n\n${command.summary}\n` +
      (subcommands.length > 0 ? `\n${groupHelp(command.name)}` : '');
    // `--parent <v>` and `--no-parent` share commander's attribute `parent`: keep both.
    const names: { attribute: string; original: string; negated: boolean; takesValue: boolean }[] =
      [];
    for (const [name, o] of Object.entries(withJson(command.options))) {
      const short = o.short === undefined ? '' : `-${o.short}, `;
      const option = new Option(`${short}--${name}${o.type === 'string' ? ' <value>' : ''}`);
      if (o.multiple === true) {
        option.argParser((v: string, previous: unknown) => [
          ...(Array.isArray(previous) ? (previous as string[]) : []),
          v,
        ]);
      }
      leaf.addOption(option);
      names.push({
        attribute: option.attributeName(),
        original: name,
        negated: option.negate,
        takesValue: o.type === 'string',
      });
    }
    leaf.action((positionals: string[], options: Record<string, unknown>) => {
      const values: Invocation['values'] = {};
      for (const { attribute, original, negated, takesValue } of names) {
        const v = options[attribute];
        if (negated) {
          if (v === false) values[original] = true;
        } else if (v !== undefined && (!takesValue || v !== false)) {
          values[original] = v as string | boolean | string[];
        }
      }
      for (const [name, o] of Object.entries(command.options)) {
        if (values[name] === undefined && o.default !== undefined) values[name] = o.default;
      }
      choose({ command, values, positionals });
    });
  }
  return root;
}

function withJson(options: Command['options']): Command['options'] {
  return { ...options, json: { type: 'boolean' } };
}

/** "bulkhead image pull" for a command of commander's tree. */
function commandPath(c: CommanderCommand): string {
  const words: string[] = [];
  for (let at: CommanderCommand | null = c; at; at = at.parent) words.unshift(at.name());
  return words.join(' ');
}

function oneLine(text: string): string {
  return text
    .replace(/^error: /, '')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .join(' ')
    .replace('(Did you mean', '(did you mean');
}

function groupHelp(word: string): string {
  const members = commands.filter((c) => c.name.startsWith(`${word} `));
  return `Usage: bulkhead ${word} <command> [options]

Commands:
${members.map((c) => `  ${c.name.padEnd(WIDTH)} ${c.summary}`).join('\n')}

Run \`bulkhead ${word} <command> --help\` for a command's options.
`;
}

/** Runs the CLI; returns the exit code. Never throws for a user's mistake. */
export async function main(
  argv: string[],
  given: CommandContext = defaultContext(),
): Promise<number> {
  // Every human line goes through `printable` (text from Center cannot drive the terminal);
  // --json output is printed exactly as JSON.stringify wrote it.
  const ctx = printableContext(given);
  if (argv.length === 0) {
    ctx.out(globalHelp);
    return 2;
  }
  // Only as the first word: `rollout create --version 2` is that command's own flag.
  if (argv[0] === '--version' || argv[0] === '-V') {
    ctx.out('bulkhead 0.1.0');
    return 0;
  }
  let chosen: Chosen | undefined;
  try {
    await program(ctx, (c) => {
      chosen = c;
    }).parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // Help and --version asked for: success. A group without its subcommand shows the
      // group's help on stderr: a usage error, like every other mistake commander finds.
      return err.code === 'commander.helpDisplayed' ? 0 : 2;
    }
    throw err;
  }
  if (chosen === undefined) return 2;
  const { command, values, positionals } = chosen;
  const json = values.json === true;
  try {
    const result = await command.run({ values, positionals, json }, ctx);
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
    ctx.err(clipped(`bulkhead ${command.name}: ${err.message}${err.hint ? ` — ${err.hint}` : ''}`));
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

/**
 * An error line as a person can read it: a word too long to be a name or a path (a 5,000-character
 * value echoed back) shows its start and its length. --json keeps the message whole.
 */
export function clipped(line: string): string {
  return line.replace(/\S{201,}/g, (w) => `${w.slice(0, 60)}…(${w.length} characters)`);
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
