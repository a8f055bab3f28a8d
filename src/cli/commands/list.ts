import type { Command } from 'commander';
import { deploymentOf, deploymentsOf, type PointSummary } from '../../format/manifest.js';
import { openRepository, type CliContext } from '../context.js';
import { formatBytes, quoteName, table } from '../format.js';
import { logNotice, printResult } from '../output.js';
import { pointType } from '../../format/ids.js';
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
    const { summaries: every, unreadable } = await repo.readSummaries();
    // With a deployment named, its points alone: an id taken from the list (`.[-1].id`) is then one of its own.
    const scope = flags.all ? undefined : repo.deployment;
    const points = scope === undefined ? every : every.filter((m) => deploymentOf(m) === scope);
    const others = scope === undefined ? [] : deploymentsOf(every).filter((d) => d !== scope);
    const pins = await readPins(repo.storage);
    const pinned = (id: string) => ({ pinned: pins.has(id), pinReason: pins.get(id)?.reason ?? null });
    // A point that cannot be read hides no other; it is listed for what its id says (whose it is is not known).
    for (const u of unreadable) {
      logNotice(ctx, { level: 'warning', code: 'point-unreadable', message: `backup point ${u.id} cannot be read: ${u.reason}; run \`lifeboat verify\`` });
    }
    const damaged = unreadable.map((u) => ({
      id: u.id,
      type: pointType(u.id),
      parent: null,
      full: null,
      deployment: null,
      startedAt: null,
      completedAt: null,
      files: null,
      bytes: null,
      storedBytes: null,
      tags: {},
      ...pinned(u.id),
      damaged: u.reason,
    }));
    const rows = [...points.map((m) => ({ ...pointJson(m), ...pinned(m.id) })), ...damaged].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    printResult(ctx, rows, () => {
      const hidden = others.length ? `\n${every.length - points.length} point(s) of other deployments (${others.join(', ')}) not shown; list --all shows them` : '';
      if (rows.length === 0) return `no backup points${scope === undefined ? '' : ` of deployment ${scope}`} yet${hidden}`;
      // A repository shared by several deployments says whose each point is.
      const shared = new Set(points.map(deploymentOf)).size > 1;
      const lines = [['ID', ...(shared ? ['DEPLOYMENT'] : []), 'TYPE', 'PARENT', 'COMPLETED', 'FILES', 'SIZE', 'STORED', 'TAGS', 'PINNED']];
      // What a damaged point's manifest would say is not known.
      const known = <T,>(v: T | null, shown: (v: T) => string) => (v === null ? '?' : shown(v));
      for (const p of rows) {
        lines.push([
          p.id,
          ...(shared ? [known(p.deployment, String)] : []),
          p.type,
          'damaged' in p ? '?' : (p.parent ?? '-'),
          'damaged' in p ? 'DAMAGED' : known(p.completedAt, (c) => c.replace(/\.\d+Z$/, 'Z')),
          known(p.files, String),
          known(p.bytes, formatBytes),
          known(p.storedBytes, formatBytes),
          Object.entries(p.tags).map(([k, v]) => quoteName(`${k}=${v}`)).join(',') || '-',
          p.pinned ? `pinned: ${quoteName(p.pinReason!)}` : '-',
        ]);
      }
      return table(lines) + hidden;
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
