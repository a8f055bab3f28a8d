import type { Command } from 'commander';
import { ExitCode, InterruptedError, LifeboatError, UsageError, errorMessage } from '../../errors.js';
import { whileHoldingLock, type WriterLockOptions } from '../../core/lock.js';
import { lockStaleAfterMs } from '../cron.js';
import { addKey, keyInfo, keyNotices, keyObject, readKeys, removeKey, unlockStorage, type UnlockedKey } from '../../core/keys.js';
import { Repository } from '../../core/repository.js';
import type { RepositoryConfig } from '../../format/manifest.js';
import type { Storage } from '../../storage/storage.js';
import type { Reporter } from '../../core/events.js';
import { contextConfig, openContextStorage, type CliContext } from '../context.js';
import { newPassword, passwordSource } from '../password.js';
import { logNotice, printResult } from '../output.js';
import { nonEmpty } from '../flags.js';
import type { CommandRunner } from '../main.js';
import { quoteName, table } from '../format.js';

interface NewPasswordOptions {
  newPasswordFile?: string;
}

/** --new-password-file, refused empty before the repository is opened (and its password asked for). */
function newPasswordFile(options: NewPasswordOptions): string | undefined {
  return nonEmpty('--new-password-file', options.newPasswordFile, 'the path of a file');
}

/** What key remove and key passwd take the lock with: a stale lock they take over is said, as a backup says it. */
const lockReporter = (ctx: CliContext): Reporter => ({ notice: (n) => logNotice(ctx, n) });

/** The config's lock.staleAfter, as backup and prune take the lock with it. */
async function keyLockOptions(ctx: CliContext): Promise<WriterLockOptions> {
  return { lockStaleAfterMs: lockStaleAfterMs({}, await contextConfig(ctx)), signal: ctx.signal };
}

/** Opens and unlocks the repository; key commands need an encrypted one. `beforeUnlocking` as for unlockStorage. */
async function withKey<T>(
  ctx: CliContext,
  fn: (storage: Storage, key: UnlockedKey, config: RepositoryConfig) => Promise<T>,
  beforeUnlocking?: () => Promise<void>,
): Promise<T> {
  const config = await contextConfig(ctx);
  let storage = await openContextStorage(ctx, config);
  try {
    const unlocked = await unlockStorage(storage, passwordSource(ctx), beforeUnlocking);
    storage = unlocked.storage;
    // A config that does not read (missing, from a repository that holds backups or from an empty place, or damaged): open says which.
    const repoConfig = unlocked.config ?? (await Repository.open(storage)).config;
    if (!unlocked.key) throw new UsageError(`the repository at ${quoteName(storage.location)} is not encrypted; it has no keys`);
    return await fn(storage, unlocked.key, repoConfig);
  } finally {
    await storage.close();
  }
}

async function runKeyList(ctx: CliContext): Promise<void> {
  await withKey(ctx, async (storage, key, config) => {
    const found = await readKeys(storage, config.id);
    const rows = found.keys.map((k) => ({ ...keyInfo(k), current: k.id === key.keyId })).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    for (const { code, message } of keyNotices(found)) logNotice(ctx, { level: 'warning', code, message });
    // Columns as wide as their widest cell: a host's full name (ip-10-0-12-34.eu-west-1.compute.internal) does not push KDF out of line.
    printResult(
      ctx,
      rows,
      () => table([[' ', 'ID', 'CREATED', 'HOST', 'KDF'], ...rows.map((r) => [r.current ? '*' : ' ', r.id, r.createdAt, quoteName(r.host), `scrypt N=2^${r.kdf.logN} r=${r.kdf.r} p=${r.kdf.p}`])]),
      { shownWhenQuiet: true },
    );
  });
}

/**
 * Runs `fn` with the repository unlocked and the new password. The new password is asked right
 * after the current one, before scrypt checks that: typed ahead while scrypt ran, it would show on
 * the terminal, which echoes between prompts.
 */
async function withNewPassword(ctx: CliContext, options: NewPasswordOptions, fn: (storage: Storage, key: UnlockedKey, config: RepositoryConfig, password: string) => Promise<void>): Promise<void> {
  const file = newPasswordFile(options);
  let password = '';
  await withKey(ctx, (storage, key, config) => fn(storage, key, config, password), async () => {
    password = await newPassword(ctx, file);
  });
}

async function runKeyAdd(ctx: CliContext, options: NewPasswordOptions): Promise<void> {
  await withNewPassword(ctx, options, async (storage, key, config, password) => {
    // The new key gets the cost of the key that was opened, which a bucket writer cannot have lowered.
    const id = await addKey(storage, config.id, key.dataKey, password, key.kdf);
    printResult(ctx, { id }, () => `added key ${id}`);
  });
}

async function runKeyRemove(ctx: CliContext, selector: string): Promise<void> {
  await withKey(ctx, async (storage, key, config) => {
    await whileHoldingLock(storage, 'key remove', await keyLockOptions(ctx), lockReporter(ctx), async (lock) => {
      // A removal that lost its lock while paused deletes nothing: another removal meanwhile may have left this key the last.
      const id = await removeKey(storage, config.id, key.keyId, selector, () => lock.check());
      printResult(ctx, { removed: id }, () => `removed key ${id}`);
    });
  });
}

async function runKeyPasswd(ctx: CliContext, options: NewPasswordOptions): Promise<void> {
  await withNewPassword(ctx, options, async (storage, key, config, password) => {
    await whileHoldingLock(storage, 'key passwd', await keyLockOptions(ctx), lockReporter(ctx), async (lock) => {
      // The new key is stored before the old one goes, so a failure in between leaves both passwords working;
      // it names the key it replaces, so that key list and verify say what is left if this is killed in between.
      const id = await addKey(storage, config.id, key.dataKey, password, key.kdf, key.keyId);
      try {
        await lock.check();
        await storage.delete([keyObject(key.keyId)]);
      } catch (err) {
        throw halfChanged(ctx, id, key.keyId, err);
      }
      printResult(ctx, { id, removed: key.keyId }, () => `changed the password: key ${id} replaces key ${key.keyId}`);
    });
  });
}

/**
 * A key passwd that stored the new key and could not remove the old one: both passwords open the
 * repository. Said as such, with the new key's id, so that the old key is removed by hand rather
 * than another key added by running the command again.
 */
function halfChanged(ctx: CliContext, added: string, old: string, err: unknown): LifeboatError {
  ctx.keepDocument?.({ id: added, removed: null });
  const message = `added key ${added} with the new password, but could not remove key ${old}: ${errorMessage(err)}`;
  const hint = `both passwords open the repository until key ${old} is removed; ${err instanceof LifeboatError && err.hint ? `${err.hint}; then ` : ''}run \`lifeboat key remove ${old}\` with the new password, not key passwd again, which would add another key`;
  if (err instanceof InterruptedError) return new InterruptedError(message, { hint });
  return new LifeboatError(message, err instanceof LifeboatError ? err.exitCode : ExitCode.runtime, { cause: err, hint });
}

export function registerKey(program: Command, run: CommandRunner): Command {
  const key = program
    .command('key')
    .description('passwords of an encrypted repository: each key opens the same data with its own password')
    .addHelpText(
      'after',
      '\nThe current password comes from --password-file, LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD_COMMAND,\nLIFEBOAT_PASSWORD or a prompt;\na new one from --new-password-file, LIFEBOAT_NEW_PASSWORD or a prompt.\n\nExamples:\n  lifeboat key list\n  lifeboat key add --new-password-file /etc/lifeboat/ops-password\n  lifeboat key remove 3f2a9c\n  lifeboat key passwd --new-password-file /etc/lifeboat/new-password',
    );
  key.command('list').description('the keys of the repository; * marks the one the password opened').action(run((ctx) => runKeyList(ctx)));
  key
    .command('add')
    .description('add a password')
    .option('--new-password-file <file>', 'file holding the new password (or LIFEBOAT_NEW_PASSWORD, or a prompt)')
    .action(run((ctx, options: NewPasswordOptions) => runKeyAdd(ctx, options)));
  key
    .command('remove')
    .description('remove a password (not the one in use, never the last)')
    .argument('<id>', 'the id of its key, as key list shows it, or a unique prefix of it')
    .action(run((ctx, id: string) => runKeyRemove(ctx, id)));
  key
    .command('passwd')
    .description('change the password in use: add a key with the new password, then remove the old one')
    .option('--new-password-file <file>', 'file holding the new password (or LIFEBOAT_NEW_PASSWORD, or a prompt)')
    .action(run((ctx, options: NewPasswordOptions) => runKeyPasswd(ctx, options)));
  return key;
}
