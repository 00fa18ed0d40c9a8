import { createInterface } from 'node:readline';
import { BulkheadError, ErrorCodes } from '../protocol/index.ts';
import type { CommandContext } from './command.ts';

/** Everything on standard input, as lines (at most a few KiB: passwords, not files). */
export async function stdinLines(): Promise<string[]> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > 8192) throw new BulkheadError(ErrorCodes.USAGE, 'standard input is too long');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/);
}

/** Asks at the terminal (the question on stderr) without echoing what is typed. */
export async function askHidden(ctx: CommandContext, question: string): Promise<string> {
  ctx.err(question);
  const rl = createInterface({ input: process.stdin, terminal: true });
  const out = rl as unknown as { _writeToOutput?: (s: string) => void };
  out._writeToOutput = () => undefined;
  try {
    return await new Promise<string>((resolve) => rl.question('', resolve));
  } finally {
    rl.close();
  }
}
