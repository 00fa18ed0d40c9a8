import { chmod, mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BulkheadError, ErrorCodes, errnoCode } from '../protocol/index.ts';
import { generateKeyPair } from '../signing/index.ts';
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
    if (!force) {
      // Never overwrite a key by accident (the private key may be the only copy), nor leave a
      // new private key beside an old public one.
      for (const path of [privatePath, publicPath]) {
        if (
          await stat(path).then(
            () => true,
            () => false,
          )
        ) {
          throw new BulkheadError(ErrorCodes.KEY_EXISTS, `${path} already exists`, {
            hint: 'keep it, or pass --force to replace the pair (images signed with the old key will need its public key)',
          });
        }
      }
    }
    let wrotePrivate = false;
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await writeFile(privatePath, pair.privatePem, { mode: 0o600, flag: force ? 'w' : 'wx' });
      wrotePrivate = true;
      await chmod(privatePath, 0o600);
      await writeFile(publicPath, pair.publicPem, { mode: 0o644, flag: force ? 'w' : 'wx' });
    } catch (err) {
      if (wrotePrivate && !force) await rm(privatePath, { force: true });
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
