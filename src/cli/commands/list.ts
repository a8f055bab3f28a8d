import type { Command } from 'commander';
import { deploymentOf, deploymentsOf, type PointSummary } from '../../format/manifest.js';
import { openRepository, type CliContext } from '../context.js';
import { formatBytes, quoteName, table } from '../format.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { readPins } from '../../core/pins.js';

/** What list prints of a point; a manifest has it too. */
type PointFacts = Omit<PointSummary, 'format' | 'volumes' | 'uses'>;

export function pointJson(m: PointFacts) {
  return {
    id: m.id,
    type: m.type,
    parent: m.parent,
    full: m.full,
    deployment: deploymentOf(m),
    startedAt: m.startedAt,
    completedAt: m.completedAt,
    files: m.stats.files,
    bytes: m.stats.bytes,
    storedBytes: m.stats.storedBytes,
    tags: m.tags,
  };
}

export async function runList(ctx: CliContext, flags: { all?: boolean } = {}): Promise<void> {
  const { repo, close } = await openRepository(ctx);
  try {
    const every = await repo.allSummaries();
    // With a deployment named, its points alone: an id taken from the list (`.[-1].id`) is then one of its own.
    const scope = flags.all ? undefined : repo.deployment;
    const points = scope === undefined ? every : every.filter((m) => deploymentOf(m) === scope);
    const others = scope === undefined ? [] : deploymentsOf(every).filter((d) => d !== scope);
    const pins = await readPins(repo.storage);
    const pinned = (id: string) => ({ pinned: pins.has(id), pinReason: pins.get(id)?.reason ?? null });
    printResult(ctx, points.map((m) => ({ ...pointJson(m), ...pinned(m.id) })), () => {
      const hidden = others.length ? `\n${every.length - points.length} point(s) of other deployments (${others.join(', ')}) not shown; list --all shows them` : '';
      if (points.length === 0) return `no backup points${scope === undefined ? '' : ` of deployment ${scope}`} yet${hidden}`;
      // A repository shared by several deployments says whose each point is.
      const shared = new Set(points.map(deploymentOf)).size > 1;
      const rows = [['ID', ...(shared ? ['DEPLOYMENT'] : []), 'TYPE', 'PARENT', 'COMPLETED', 'FILES', 'SIZE', 'STORED', 'TAGS', 'PINNED']];
      for (const m of points) {
        rows.push([
          m.id,
          ...(shared ? [deploymentOf(m)] : []),
          m.type,
          m.parent ?? '-',
          m.completedAt.replace(/\.\d+Z$/, 'Z'),
          String(m.stats.files),
          formatBytes(m.stats.bytes),
          formatBytes(m.stats.storedBytes),
          Object.entries(m.tags).map(([k, v]) => quoteName(`${k}=${v}`)).join(',') || '-',
          pins.has(m.id) ? `pinned: ${quoteName(pins.get(m.id)!.reason)}` : '-',
        ]);
      }
      return table(rows) + hidden;
    }, { shownWhenQuiet: true });
  } finally {
    await close();
  }
}

export function registerList(program: Command, run: CommandRunner): Command {
  return program
    .command('list')
    .alias('ls')
    .description('list backup points, oldest first (of the deployment named, when one is)')
    .option('-a, --all', 'the points of every deployment, even when one is named')
    .addHelpText('after', '\nExample:\n  lifeboat list --json | jq -r \'.[-1].id\'')
    .action(run((ctx, flags: { all?: boolean }) => runList(ctx, flags)));
}
