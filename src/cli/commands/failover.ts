import * as path from 'node:path';
import type { Command } from 'commander';
import { HealthError, InterruptedError, UsageError } from '../../errors.js';
import { deploymentOf } from '../../format/manifest.js';
import { loadConfig, type LifeboatConfig } from '../../config/config.js';
import { addReaderLockOptions, lockStaleAfterMs, readerLockMs, type LockFlags } from '../cron.js';
import { InterruptedAfterSwitch, failover, rollback, type SwitchResult } from '../../core/failover.js';
import { chooseTarget, type TargetSpec } from '../../core/targets.js';
import { attemptLimitAdvice } from '../../core/health.js';
import { readActive, slotPoint } from '../../core/slots.js';
import type { Repository } from '../../core/repository.js';
import { openRepository, type CliContext } from '../context.js';
import { withIntactAlternative } from '../damage.js';
import { formatBytes, counted, quoteName } from '../format.js';
import { formatDuration } from '../../config/duration.js';
import { ProgressRenderer, log, printResult, warningsJson } from '../output.js';
import type { CommandRunner } from '../main.js';
import { nonEmpty } from '../flags.js';

interface FailoverFlags extends LockFlags {
  to?: string;
  state?: boolean;
  allowEmptyState?: boolean;
}

export const SWITCH_LOCK_STALE_HELP = "take over the target's switch lock left by a failover or rollback on another host when its lease was not refreshed for this long (lock.staleAfter; default 30m)";

export const ALLOW_EMPTY_STATE_HELP = 'put back a SQLite copy the backup found empty (warning sqlite-empty) over a live database that holds something; refused otherwise';

/** The named target from the config, paths taken from the config file's directory; and the config. */
export async function resolveTarget(ctx: CliContext, name: string | undefined): Promise<{ spec: TargetSpec; config: LifeboatConfig }> {
  const chosen = nonEmpty('--to', name, 'the name of a target from lifeboat.yaml');
  const { config, file } = await loadConfig({ explicit: ctx.global.config, cwd: ctx.cwd, env: ctx.env });
  return { spec: chooseTarget(config, chosen, file ? path.dirname(file) : ctx.cwd, ctx.env), config };
}

export function switchJson(r: SwitchResult) {
  return { ...r, warnings: warningsJson(r.warnings) };
}

/** Interrupted after the switch, the --json document still says what was switched (`switched`, `interrupted`, `from`), beside the error. */
function keepSwitched(ctx: CliContext, err: unknown): void {
  if (err instanceof InterruptedAfterSwitch) ctx.keepDocument?.(switchJson(err.result));
}

/** The text report of a failover or rollback, and the error that ends a failed one. */
export function reportSwitch(ctx: CliContext, verb: 'failover' | 'rollback', r: SwitchResult): void {
  printResult(ctx, switchJson(r), () => {
    const what = r.point ?? quoteName(r.slot);
    if (!r.ok) return '';
    const lines = [
      `${verb === 'failover' ? 'failed over' : 'rolled back'} ${r.target} to ${what}: healthy ${r.health.unchecked ? '(no health check configured)' : `after ${r.health.attempts} check(s)`}, RTO ${formatDuration(r.rtoMs ?? r.durationMs)}`,
    ];
    if (r.restore) {
      lines.push(
        r.reused
          ? `  slot ${quoteName(r.slot)} already held it: ${counted(r.restore.unchanged ?? 0, 'file')} checked${r.restore.rewritten || r.restore.removed ? `, ${r.restore.rewritten} rewritten, ${r.restore.removed} removed` : ''}${r.restore.keptExcluded ? `, ${r.restore.keptExcluded} left out by the backup kept` : ''}`
          : `  restored ${counted(r.restore.files, 'file')}, ${formatBytes(r.restore.bytes)} into ${quoteName(r.slot)}, every checksum verified`,
      );
    }
    if (r.from.path && r.from.path !== r.slot) lines.push(`  previous: ${r.from.point ?? quoteName(r.from.path)} (back with: lifeboat rollback --to ${r.target})`);
    if (r.pruned.length) lines.push(`  removed old slots: ${r.pruned.map(quoteName).join(', ')}`);
    return lines.join('\n');
  });
  if (r.ok) return;
  const back = r.previousMissing
    ? `; the slot it served before, ${quoteName(r.from.path ?? '')}, is missing, so ${quoteName(r.slot)} stays linked`
    : r.switchedBack
      ? r.from.path
        ? `; switched back to ${r.from.point ?? quoteName(r.from.path)}, which is ${
            r.previousUnchecked
              ? r.previousHealthy
                ? 'activated again (no health check configured)'
                : `not activated again: ${r.previousDetail ?? 'its activate hook failed'}`
              : r.previousHealthy
                ? 'healthy again'
                : 'NOT healthy either'
          }${r.stateNotPutBack ? `, but with the serving state of ${r.point ?? quoteName(r.slot)}, which could not be undone (see the warning above)` : ''}`
        : '; the link was removed again (there was none before)'
      : `; ${r.target} still serves ${r.from.point ?? (r.from.path === null ? 'nothing' : quoteName(r.from.path))}, the active link was not changed`;
  const down = r.previousHealthy === false || r.previousMissing ? `the target is down: fail over to another point (lifeboat list, lifeboat failover POINT --to ${r.target})` : undefined;
  // Attempts stopped at their limit: a check that needs longer is never given the time, whatever is served.
  const cut = r.health.attemptLimitMs === undefined ? undefined : attemptLimitAdvice(r.health.attemptLimitMs, `targets.${r.target}.health`).hint;
  throw new HealthError(`${verb} of ${r.target} to ${r.point ?? quoteName(r.slot)} failed: ${r.reason}${back}`, {
    hint: [down, cut].filter((h) => h !== undefined).join('; ') || undefined,
  });
}

export async function runFailover(ctx: CliContext, selector: string | undefined, flags: FailoverFlags): Promise<void> {
  const { spec } = await resolveTarget(ctx, flags.to);
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, `failover to ${spec.name}`);
  try {
    const point = await repo.resolve(selector ?? 'latest');
    // An id copied from `list`, which shows every deployment's points, must not put another model into service.
    const serves = repo.deployment ?? (await servedDeployment(repo, spec));
    if (serves !== undefined && deploymentOf(point) !== serves) {
      throw new UsageError(`point ${point.id} is a backup of deployment ${deploymentOf(point)}, not of ${serves}, which ${spec.name} serves`, {
        hint: `choose a point of ${serves} (lifeboat list), or name the deployment with --deployment ${deploymentOf(point)} if that is what ${spec.name} should serve`,
      });
    }
    const result = await failover(repo, point, spec, {
      signal: ctx.signal,
      reporter: renderer,
      onOutput: (line) => log(ctx, line),
      concurrency: config.s3?.concurrency,
      ...readerLockMs(flags, config),
      applyState: flags.state,
      allowEmptyState: flags.allowEmptyState === true,
      excludesWhenUnrecorded: config.exclude,
    }).catch(async (err: unknown) => {
      keepSwitched(ctx, err);
      // Damaged data fails the restore before the switch: the link is as it was.
      // The intact point is often the one served now: failing over to it again would change nothing.
      const served = slotPoint(spec.slots, await readActive(spec.active, spec.slots).catch(() => null));
      throw await withIntactAlternative(err, repo, point, (id) => (id === served ? `${spec.name} serves it now` : `lifeboat failover ${id} --to ${spec.name}`));
    });
    renderer.stop();
    reportSwitch(ctx, 'failover', result);
  } finally {
    renderer.stop();
    await close();
  }
}

/** The deployment of the point a target's active slot holds, when it is known. */
async function servedDeployment(repo: Repository, spec: TargetSpec): Promise<string | undefined> {
  const active = slotPoint(spec.slots, await readActive(spec.active, spec.slots).catch(() => null));
  if (!active) return undefined;
  return repo.summary(active).then(deploymentOf, () => undefined);
}

export async function runRollback(ctx: CliContext, flags: FailoverFlags): Promise<void> {
  const { spec, config } = await resolveTarget(ctx, flags.to);
  // Checked before anything is opened: a mistyped duration is a refused command line.
  const staleAfter = lockStaleAfterMs(flags, config);
  // The slot to go back to is on this host: a backup disk not mounted, or a bucket out of reach, only
  // keeps the rollback from putting back state (it then stops, and says --no-state does without).
  const opened = await openRepository(ctx).catch((err: unknown) => {
    if (err instanceof InterruptedError) throw err;
    return { unreadable: err };
  });
  const renderer = new ProgressRenderer(ctx, `rollback of ${spec.name}`);
  try {
    const result = await rollback('repo' in opened ? opened.repo : opened, spec, { signal: ctx.signal, reporter: renderer, onOutput: (line) => log(ctx, line), applyState: flags.state, allowEmptyState: flags.allowEmptyState === true, lockStaleAfterMs: staleAfter }).catch((err: unknown) => {
      keepSwitched(ctx, err);
      throw err;
    });
    renderer.stop();
    reportSwitch(ctx, 'rollback', result);
  } finally {
    renderer.stop();
    if ('close' in opened) await opened.close();
  }
}

export function registerFailover(program: Command, run: CommandRunner): Command {
  return addReaderLockOptions(
    program
      .command('failover')
      .description('restore a point into a slot of a target, switch its active link atomically, health-check, and switch back on failure (exit 5)')
      .argument('[point]', 'id, unique id prefix, latest (default), or an ISO-8601 time')
      .option('--to <target>', 'the target from lifeboat.yaml (may be left out when there is only one)')
      .option('--state', 'put the serving state back even when the target already serves the point (it went back when the point was switched to)')
      .option('--no-state', 'leave serving state alone: no restore commands of command sources, no SQLite database copied back (the default when the target already serves the point)')
      .option('--allow-empty-state', ALLOW_EMPTY_STATE_HELP),
    "take a prune's lock, or the target's switch lock left by a failover or rollback on another host, not refreshed for this long as stale and go on (lock.staleAfter; default 30m)",
  )
    .addHelpText(
      'after',
      '\nExamples:\n  lifeboat failover --to prod                          # the latest point\n  lifeboat failover 2026-11-20T03:00:00Z --to prod     # the state as of that moment',
    )
    .action(run((ctx, selector: string | undefined, flags: FailoverFlags) => runFailover(ctx, selector, flags)));
}
