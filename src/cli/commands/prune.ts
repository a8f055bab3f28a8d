import type { Command } from 'commander';
import { UsageError } from '../../errors.js';
import type { LifeboatConfig } from '../../config/config.js';
import { prune } from '../../core/prune.js';
import type { RetentionPolicy } from '../../core/retention.js';
import { openRepository, type CliContext } from '../context.js';
import { addCronOptions, lockRetryMs, lockStaleAfterMs, runMonitored, type CronFlags } from '../cron.js';
import { count, durationFlag } from '../flags.js';
import { escapeUnprintable, formatBytes } from '../format.js';
import { formatDuration } from '../../config/duration.js';
import { ProgressRenderer, printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { protectedPoints } from '../../core/pins.js';
import { countLeftovers, describeLeftover } from '../../core/leftovers.js';
import { configuredTargets } from './pin.js';

interface PruneFlags extends CronFlags {
  keepFull?: string;
  keepDiff?: string;
  keepWithin?: string;
  dryRun?: boolean;
}

/** flags > retention: in the config; keep-full is required so a prune never keeps "nothing". */
export function retentionPolicy(flags: PruneFlags, config: LifeboatConfig): RetentionPolicy {
  const r = config.retention ?? {};
  const keepFull = flags.keepFull !== undefined ? count('--keep-full', flags.keepFull, 1) : r.keepFull;
  if (keepFull === undefined) {
    throw new UsageError('prune needs --keep-full N (or retention.keepFull in the config)', {
      hint: 'for example: lifeboat prune --keep-full 4 --keep-diff 7 --keep-within 14d',
    });
  }
  const keepDiff = flags.keepDiff !== undefined ? count('--keep-diff', flags.keepDiff, 0) : r.keepDiff;
  const keepWithin = flags.keepWithin ?? r.keepWithin;
  const keepWithinMs = durationFlag('--keep-within', keepWithin, { example: '36h or 14d' });
  return { keepFull, keepDiff, keepWithinMs, keepWithin };
}

export async function runPrune(ctx: CliContext, flags: PruneFlags): Promise<void> {
  await runMonitored(ctx, 'prune', flags, async (figures) => {
    const { repo, config, close } = await openRepository(ctx);
    const renderer = new ProgressRenderer(ctx, flags.dryRun ? 'prune (dry run)' : 'prune');
    try {
      const policy = retentionPolicy(flags, config);
      const result = await prune(repo, {
        policy,
        // Pinned points and what targets serve are kept whatever the policy says.
        findProtected: async () => protectedPoints(repo, { targets: await configuredTargets(ctx) }),
        deployment: repo.deployment,
        dryRun: flags.dryRun,
        lockStaleAfterMs: lockStaleAfterMs(flags, config),
        lockRetryMs: lockRetryMs(flags, config),
        signal: ctx.signal,
        reporter: renderer,
        // A prune that fails half-way has removed some points: the metrics count what remains, not the count of a run before.
        onPointsLeft: (points) => (figures.points = points),
      });
      renderer.stop();
      figures.files = result.data.length;
      figures.bytes = result.bytes;
      printResult(
        ctx,
        {
          dryRun: result.dryRun,
          keep: result.keep.map(({ id, type, reasons }) => ({ id, type, reasons })),
          remove: result.remove.map(({ id, type, reasons }) => ({ id, type, reasons })),
          objects: [...result.manifests, ...result.summaries, ...result.data.map((d) => d.key), ...result.unfinished.map((w) => w.key)],
          dataObjects: result.data.length,
          dataBytes: result.bytes,
          unfinishedWrites: result.unfinished.length,
          durationMs: result.durationMs,
        },
        () => {
          const lines: string[] = [];
          // A reason may quote a pin's.
          // The verbs padded to the longest, so that the ids, types and reasons of kept and removed points line up.
          const removeVerb = result.dryRun ? 'would remove' : 'remove';
          const row = (verb: string, d: { id: string; type: string; reasons: string[] }) =>
            `${verb.padEnd(removeVerb.length)}  ${d.id}  ${d.type.padEnd(4)}  ${escapeUnprintable(d.reasons.join('; '))}`;
          for (const d of result.keep) lines.push(row('keep', d));
          for (const d of result.remove) lines.push(row(removeVerb, d));
          if (result.dryRun) {
            for (const key of [...result.manifests, ...result.summaries, ...result.data.map((d) => d.key)]) lines.push(`  would delete ${key}`);
            for (const write of result.unfinished) lines.push(`  would delete ${escapeUnprintable(write.key)}: ${describeLeftover(write)}`);
          }
          const verb = result.dryRun ? 'would remove' : 'removed';
          // Writes that never finished are not data objects: counted apart, so that the line says all that went.
          const unfinished = result.unfinished.length > 0 ? `, and ${countLeftovers(result.unfinished)}` : '';
          lines.push(
            `${verb} ${result.remove.length} point(s) and ${result.data.length} data object(s), ${formatBytes(result.bytes)}${unfinished}; ${result.keep.length} point(s) kept${result.dryRun ? '' : ` in ${formatDuration(result.durationMs)}`}`,
          );
          return lines.join('\n');
        },
        { shownWhenQuiet: result.dryRun },
      );
    } finally {
      renderer.stop();
      await close();
    }
  });
}

export function registerPrune(program: Command, run: CommandRunner): Command {
  const command = program
    .command('prune')
    .description('remove backup points the retention policy does not keep, and the data only they used; never breaks a chain')
    .option('--keep-full <n>', 'keep the newest N full points and what depends on them (retention.keepFull)')
    .option('--keep-diff <n>', 'keep the newest N differential points of kept fulls (retention.keepDiff)')
    .option('--keep-within <duration>', 'keep every point completed within this long, e.g. 14d (retention.keepWithin)')
    .option('-n, --dry-run', 'list exactly what would be removed, remove nothing');
  addCronOptions(command, { lock: true });
  return command
    .addHelpText(
      'after',
      '\nA kept incr keeps its whole chain, a kept diff its full, and the newest point is always kept.\n\nExamples:\n  lifeboat prune --keep-full 4 --keep-diff 7 --keep-within 14d --dry-run\n  lifeboat prune            # policy from retention: in lifeboat.yaml',
    )
    .action(run((ctx, flags: PruneFlags) => runPrune(ctx, flags)));
}
