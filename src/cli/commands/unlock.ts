import type { Command } from 'commander';
import { LockedError } from '../../errors.js';
import { describeLock, readLock } from '../../core/lock.js';
import { keys } from '../../format/manifest.js';
import { openRepository, type CliContext } from '../context.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { lockStaleAfterMs } from '../cron.js';

export async function runUnlock(ctx: CliContext, flags: { force?: boolean; lockStaleAfter?: string }): Promise<void> {
  const { repo, config, close } = await openRepository(ctx);
  try {
    const status = await readLock(repo.storage, { staleAfterMs: lockStaleAfterMs(flags, config) });
    if (!status) {
      printResult(ctx, { removed: false, lock: null }, () => 'the repository is not locked');
      return;
    }
    if (!status.stale && !flags.force) {
      throw new LockedError(`the lock is held by a live process: ${describeLock(status.info)}`, { hint: 'it will be released when that process ends; --force removes it anyway' });
    }
    await repo.storage.delete([keys.lock]);
    printResult(ctx, { removed: true, lock: status.info, stale: status.stale, reason: status.reason ?? null }, () =>
      `removed ${status.stale ? 'stale' : 'live (forced)'} lock of ${describeLock(status.info)}${status.reason ? `: ${status.reason}` : ''}`,
    );
  } finally {
    await close();
  }
}

export function registerUnlock(program: Command, run: CommandRunner): Command {
  return program
    .command('unlock')
    .description('remove a stale repository lock, after checking its owner is gone')
    .option('--force', 'remove the lock even if its owner looks alive')
    .option('--lock-stale-after <duration>', 'a lock not refreshed for this long counts as stale (lock.staleAfter; default: the lease the holder recorded, 30m)')
    .addHelpText('after', '\nExample:\n  lifeboat unlock')
    .action(run((ctx, flags: { force?: boolean; lockStaleAfter?: string }) => runUnlock(ctx, flags)));
}
