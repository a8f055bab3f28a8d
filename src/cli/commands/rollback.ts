import type { Command } from 'commander';
import type { CommandRunner } from '../main.js';
import { ALLOW_EMPTY_STATE_HELP, SWITCH_LOCK_STALE_HELP, runRollback } from './failover.js';

export function registerRollback(program: Command, run: CommandRunner): Command {
  return program
    .command('rollback')
    .description('switch a target back to the slot it served before its last failover or rollback, with health checks')
    .option('--to <target>', 'the target from lifeboat.yaml (may be left out when there is only one)')
    .option('--state', 'put the serving state back even when the switch rolled back left it alone (--no-state)')
    .option('--no-state', 'leave serving state alone: no restore commands of command sources, no SQLite database copied back (the default when the switch rolled back was made with --no-state)')
    .option('--allow-empty-state', ALLOW_EMPTY_STATE_HELP)
    .option('--lock-stale-after <duration>', SWITCH_LOCK_STALE_HELP)
    .addHelpText('after', '\nExample:\n  lifeboat rollback --to prod')
    .action(run((ctx, flags: { to?: string; state?: boolean; allowEmptyState?: boolean; lockStaleAfter?: string }) => runRollback(ctx, flags)));
}
