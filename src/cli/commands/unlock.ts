import type { Command } from 'commander';
import { LockedError } from '../../errors.js';
import { describeLock, readLock, readStoredLock, readersOf, removeLock } from '../../core/lock.js';
import { openRepository, type CliContext } from '../context.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { lockStaleAfterMs } from '../cron.js';

export async function runUnlock(ctx: CliContext, flags: { force?: boolean; lockStaleAfter?: string }): Promise<void> {
  const { repo, config, close } = await openRepository(ctx);
  try {
    const staleness = { staleAfterMs: lockStaleAfterMs(flags, config) };
    // Readers that are gone would keep a prune waiting until their lease runs out.
    const readers = await readersOf(repo.storage, staleness);
    const goneReaders = flags.force ? [...readers.stale, ...readers.live.map((r) => r.key)] : readers.stale;
    if (goneReaders.length > 0) await repo.storage.delete(goneReaders);
    const readersNote = goneReaders.length > 0 ? `; removed ${goneReaders.length} reader registration(s)` : '';
    const status = await readStoredLock(repo.storage, staleness);
    if (!status) {
      printResult(ctx, { removed: false, lock: null, readersRemoved: goneReaders.length }, () => `the repository is not locked${readersNote}`);
      return;
    }
    if (!status.stale && !flags.force) {
      throw new LockedError(`the lock is held by a live process: ${describeLock(status.info)}`, { hint: 'it will be released when that process ends; --force removes it anyway' });
    }
    // Removed only if it is still the lock judged: one taken over meanwhile stays with its new holder.
    if (!(await removeLock(repo.storage, status))) {
      const now = await readLock(repo.storage, staleness);
      throw new LockedError(`the lock changed while it was looked at${now ? (now.unreadable ? ': it is now unreadable' : `: it is now held by ${describeLock(now.info)}`) : ''}; nothing was removed`, {
        hint: 'run `lifeboat unlock` again to judge the new holder',
      });
    }
    printResult(ctx, { removed: true, lock: status.unreadable ? null : status.info, stale: status.stale, reason: status.reason ?? null, readersRemoved: goneReaders.length }, () =>
      status.unreadable
        ? `removed the repository lock, whose document was unreadable (damaged or empty)${readersNote}`
        : `removed ${status.stale ? 'stale' : 'live (forced)'} lock of ${describeLock(status.info)}${status.reason ? `: ${status.reason}` : ''}${readersNote}`,
    );
  } finally {
    await close();
  }
}

export function registerUnlock(program: Command, run: CommandRunner): Command {
  return program
    .command('unlock')
    .description('remove a stale repository lock and stale reader registrations, after checking their owners are gone')
    .option('--force', 'remove them even if their owners look alive')
    .option('--lock-stale-after <duration>', 'a lock not refreshed for this long counts as stale (lock.staleAfter; default: the lease the holder recorded, 30m)')
    .addHelpText('after', '\nExample:\n  lifeboat unlock')
    .action(run((ctx, flags: { force?: boolean; lockStaleAfter?: string }) => runUnlock(ctx, flags)));
}
