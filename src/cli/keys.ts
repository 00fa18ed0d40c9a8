import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { generateKeyPair } from '../image/index.ts';
import { requireString, type Command } from './command.ts';

const generate: Command = {
  name: 'keys generate',
  summary:
    'Make an Ed25519 publisher key pair: DIR/publisher.key (mode 0600) and DIR/publisher.pub.',
  usage: 'Usage: bulkhead keys generate --out DIR [--force] [--json]',
  options: { out: { type: 'string' }, force: { type: 'boolean' } },
  async run(inv, ctx) {
    const dir = requireString(inv, 'out');
    const force = inv.values.force === true;
    const pair = generateKeyPair();
    const privatePath = join(dir, 'publisher.key');
    const publicPath = join(dir, 'publisher.pub');
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // Never overwrite a private key by accident: it may be the only copy.
      await writeFile(privatePath, pair.privatePem, { mode: 0o600, flag: force ? 'w' : 'wx' });
      await writeFile(publicPath, pair.publicPem, { mode: 0o644, flag: force ? 'w' : 'wx' });
    } catch (err) {
      if (errnoCode(err) === 'EEXIST') {
        throw new BulkheadError(ErrorCodes.KEY_EXISTS, `${privatePath} already exists`, {
          hint: 'keep it, or pass --force to replace it (images signed with it will need the old public key)',
        });
      }
      throw new BulkheadError(
        ErrorCodes.KEY_INVALID,
        `cannot write the key pair in ${dir}: ${errnoCode(err) ?? String(err)}`,
        { cause: err },
      );
    }
    if (!inv.json) {
      ctx.out(`private key: ${privatePath} (keep it secret)`);
      ctx.out(`public key:  ${publicPath} (give it to those who verify: --trust)`);
      ctx.out(`key id:      ${pair.keyid}`);
    }
    return { privateKey: privatePath, publicKey: publicPath, keyid: pair.keyid };
  },
};

export const keysCommands: Command[] = [generate];
