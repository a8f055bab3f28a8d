import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import { Repository } from '../../core/repository.js';
import { addKey, encryptionSettings, keyObject, newDataKey } from '../../core/keys.js';
import { DEFAULT_KDF, KDF_LIMITS } from '../../crypto/kdf.js';
import { contextConfig, openContextStorage, repositoryUrl, s3Settings, type CliContext } from '../context.js';
import type { LifeboatConfig } from '../../config/config.js';
import { MAX_S3_KEY_BYTES, MAX_S3_PREFIX_BYTES, enclosingLocations, openStorage, parseRepositoryUrl } from '../../storage/open.js';
import { SMALL_DOCUMENT_BYTES, isNotFound, isPermissionRefused } from '../../storage/storage.js';
import { keys } from '../../format/manifest.js';
import { GIVE_A_PASSWORD, newPassword, passwordSource } from '../password.js';
import { printResult } from '../output.js';
import { quoteName } from '../format.js';
import type { CommandRunner } from '../main.js';
import { count, utf8Path } from '../flags.js';

interface InitOptions {
  encryption?: string;
  kdfLogN?: string;
}

export async function runInit(ctx: CliContext, options: InitOptions): Promise<void> {
  const algorithm = options.encryption ?? 'none';
  if (algorithm !== 'none' && algorithm !== 'aes-256-gcm') {
    throw new UsageError(`unknown encryption ${JSON.stringify(algorithm)}`, { hint: 'use --encryption aes-256-gcm, or none' });
  }
  const source = passwordSource(ctx);
  if (algorithm === 'none' && source.given) {
    throw new UsageError('a password was given, but the repository would not be encrypted', {
      hint: 'add --encryption aes-256-gcm, or unset LIFEBOAT_PASSWORD, LIFEBOAT_PASSWORD_FILE and LIFEBOAT_PASSWORD_COMMAND (and drop --password-file)',
    });
  }
  let logN = DEFAULT_KDF.logN;
  if (options.kdfLogN !== undefined) {
    if (algorithm === 'none') throw new UsageError('--kdf-log-n needs --encryption aes-256-gcm');
    logN = count('--kdf-log-n', options.kdfLogN, KDF_LIMITS.logN.min, 20);
  }
  // Looked at before a password is asked for, which would be typed for nothing.
  const config = await contextConfig(ctx);
  utf8Path('the repository', repositoryUrl(ctx, config));
  refuseUnusablePrefix(ctx, config);
  await refuseInsideRepository(ctx, config);
  // Asked before anything is written, so a refused password leaves no trace.
  const password =
    algorithm === 'none'
      ? undefined
      : source.given
        ? await source.get('password')
        : await newPassword(ctx, undefined, { message: 'an encrypted repository needs a password, and none was given', hint: GIVE_A_PASSWORD });
  const storage = await openContextStorage(ctx, config);
  try {
    const encryption = password === undefined ? undefined : encryptionSettings({ ...DEFAULT_KDF, logN });
    const dataKey = encryption ? newDataKey() : undefined;
    let keyId: string | undefined;
    let repo: Repository;
    try {
      repo = await Repository.init(storage, {
        encryption,
        // The key is stored before the config: an init cut short in between (killed, the network
        // gone) must not leave a repository that says it is encrypted and has no key to open it.
        beforeConfig: async (config) => {
          if (password !== undefined && encryption && dataKey) keyId = await addKey(storage, config.id, dataKey, password, encryption.kdf as typeof DEFAULT_KDF);
        },
      });
    } catch (err) {
      // A key whose config was not written opens nothing: take it back.
      if (keyId !== undefined) await storage.delete([keyObject(keyId)]).catch(() => undefined);
      throw err;
    } finally {
      dataKey?.fill(0);
    }
    printResult(
      ctx,
      { repository: storage.location, id: repo.config.id, version: repo.config.version, encryption: encryption ? encryption.algorithm : null, ...(keyId ? { key: keyId } : {}) },
      () =>
        `created lifeboat repository ${repo.config.id.slice(0, 8)} at ${quoteName(storage.location)}` +
        (keyId ? `, encrypted with aes-256-gcm (key ${keyId}); keep the password safe: without it the backups cannot be read` : ''),
    );
  } finally {
    await storage.close();
  }
}

/**
 * A repository could be made under a prefix that no backup can then use: one that leaves too
 * little of S3's 1,024 bytes a key may have for the keys lifeboat writes below it, or one with a
 * control character, which the XML of S3's listings and multi-object deletes cannot carry, or
 * carries changed (the server refuses to delete, so not even the lock is released). A tab or a
 * line break there is a slip of the config or the shell as well.
 */
function refuseUnusablePrefix(ctx: CliContext, config: LifeboatConfig): void {
  const url = repositoryUrl(ctx, config);
  const where = parseRepositoryUrl(url, ctx.cwd);
  if (where.kind !== 's3') return;
  const control = /[\u0000-\u001f\u007f]/.exec(where.prefix ?? '')?.[0];
  if (control !== undefined) {
    throw new UsageError(`the prefix of ${JSON.stringify(url)} holds a control character (U+${control.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}), which S3's listings and deletes cannot carry`, {
      hint: 'choose a prefix of printable characters',
    });
  }
  const bytes = Buffer.byteLength(where.prefix ?? '');
  if (bytes <= MAX_S3_PREFIX_BYTES) return;
  throw new UsageError(`the prefix of ${url} is ${bytes} bytes long, too long for a repository: S3 keys have at most ${MAX_S3_KEY_BYTES} bytes, and the keys lifeboat writes under the prefix need up to 128 of them`, {
    hint: `choose a prefix of at most ${MAX_S3_PREFIX_BYTES} bytes`,
  });
}

/**
 * A repository made inside another (in its `data/`, or anywhere under it) would be taken for
 * folders of the other's: its backups could be removed as an aborted backup's leftovers, or with
 * the other repository. The locations that hold this one are looked at for a repository's config.
 */
async function refuseInsideRepository(ctx: CliContext, config: LifeboatConfig): Promise<void> {
  const url = repositoryUrl(ctx, config);
  for (const location of enclosingLocations(url, ctx.cwd)) {
    const storage = await openStorage(location, { cwd: ctx.cwd, s3: s3Settings(ctx, config), env: ctx.env, interrupt: ctx.signal });
    let raw: Buffer | undefined;
    try {
      raw = await storage.getDocument(keys.config, { maxBytes: SMALL_DOCUMENT_BYTES }).catch((err: unknown) => {
        // Nothing there, or nothing this user may see (credentials for the repository's prefix alone). Any
        // other failure (no such bucket, a storage that does not answer) is the init's own, said as it would say it.
        if (isNotFound(err) || isPermissionRefused(err)) return undefined;
        throw err;
      });
    } finally {
      await storage.close();
    }
    if (raw === undefined || !isRepositoryConfig(raw)) continue;
    throw new UsageError(`${url} lies inside the lifeboat repository at ${quoteName(location)}; refusing to create a repository there`, {
      hint: 'a repository inside another could be taken for its data and removed with it: choose a location outside it (beside it, under another prefix or directory)',
    });
  }
}

function isRepositoryConfig(raw: Buffer): boolean {
  try {
    return (JSON.parse(raw.toString('utf8')) as { format?: unknown }).format === 'lifeboat-repository';
  } catch {
    return false;
  }
}

export function registerInit(program: Command, run: CommandRunner): Command {
  return program
    .command('init')
    .description('create an empty repository; refuses a location that is not empty')
    .option('--encryption <algorithm>', 'client-side encryption: aes-256-gcm, or none (the default)')
    .option('--kdf-log-n <n>', `scrypt cost of the first password as log2(N), ${KDF_LIMITS.logN.min}..20, with r = ${DEFAULT_KDF.r} and p = ${DEFAULT_KDF.p} (default ${DEFAULT_KDF.logN}; lower opens faster and is cheaper to guess)`)
    .addHelpText(
      'after',
      '\nThe password of an encrypted repository comes from --password-file, LIFEBOAT_PASSWORD_FILE,\nLIFEBOAT_PASSWORD_COMMAND, LIFEBOAT_PASSWORD, or a prompt on a terminal.\n\nExamples:\n  lifeboat init --repo /backups/fraud-detector\n  LIFEBOAT_PASSWORD_FILE=/etc/lifeboat/password lifeboat init --repo s3://ml-backups/prod --encryption aes-256-gcm',
    )
    .action(run((ctx, options: InitOptions) => runInit(ctx, options)));
}
