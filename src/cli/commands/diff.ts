import type { Command } from 'commander';
import { diffPoints, type DiffCounts } from '../../core/diff.js';
import { deploymentOf, type Manifest } from '../../format/manifest.js';
import { openRepository, type CliContext } from '../context.js';
import { quoteName } from '../format.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';

export async function runDiff(ctx: CliContext, a: string, b: string): Promise<void> {
  const { repo, close } = await openRepository(ctx);
  try {
    const from = await repo.resolve(a);
    const to = await repo.resolve(b);
    const d = diffPoints(from, to);
    // Counted as the backup counts (files and links), directories apart: a backup's summary and diff of the same points agree.
    const { counts, directories } = d;
    const [was, is] = d.changed.some((c) => c.what.includes('type')) ? [kindsOf(from), kindsOf(to)] : [new Map<string, string>(), new Map<string, string>()];
    const kinds = (k: string) => `${was.get(k)} → ${is.get(k)}`;
    // Points of two deployments of a shared repository hold two models: said, so that their differences are not read as one model's changes.
    const across = deploymentOf(from) !== deploymentOf(to);
    // A path that a changed pattern left out of the newer point is listed as removed: why is said, or it reads as deleted.
    const excludes = excludesChanged(from, to);
    const named = (m: typeof from) => (across ? `${m.id} (deployment ${deploymentOf(m)})` : m.id);
    printResult(ctx, { from: from.id, to: to.id, fromDeployment: deploymentOf(from), toDeployment: deploymentOf(to), ...d, excludes }, () => {
      const dirs = directories.added + directories.changed + directories.removed > 0 ? ` (directories: ${tally(directories)})` : '';
      const lines = [`${named(from)} → ${named(to)}: ${tally(counts)}${dirs}`];
      const patterns = (list: string[]) => (list.length ? list.map(quoteName).join(' ') : 'none');
      for (const x of excludes) lines.push(`exclude patterns of ${x.source} changed: ${patterns(x.from)} → ${patterns(x.to)}`);
      for (const p of d.added) lines.push(`+ ${quoteName(p)}`);
      for (const c of d.changed) lines.push(`M ${quoteName(c.path)}  (${c.what.map((w) => (w === 'type' ? `type: ${kinds(c.path)}` : w)).join(', ')})`);
      for (const p of d.removed) lines.push(`- ${quoteName(p)}`);
      return lines.join('\n');
    }, { shownWhenQuiet: true });
  } finally {
    await close();
  }
}

const tally = (c: DiffCounts) => `${c.added} added, ${c.changed} changed, ${c.removed} removed`;

/** The directory sources of both points whose backups left out paths with other patterns. */
function excludesChanged(from: Manifest, to: Manifest): { source: string; from: string[]; to: string[] }[] {
  const before = new Map(from.sources.map((s) => [s.name, s]));
  const changed: { source: string; from: string[]; to: string[] }[] = [];
  for (const s of to.sources) {
    const old = before.get(s.name);
    if (!old || (old.kind ?? 'files') !== 'files' || (s.kind ?? 'files') !== 'files') continue;
    const [was, is] = [old.exclude ?? [], s.exclude ?? []];
    // The same patterns in another order leave out the same paths.
    if ([...was].sort().join('\0') !== [...is].sort().join('\0')) changed.push({ source: s.name, from: was, to: is });
  }
  return changed;
}

/** What each path is in a point: a file, a directory or a symbolic link. */
function kindsOf(m: Manifest): Map<string, string> {
  return new Map(m.entries.map((e) => [`${e.source}/${e.path}`, e.type === 'dir' ? 'directory' : e.type === 'symlink' ? 'symbolic link' : 'file']));
}

export function registerDiff(program: Command, run: CommandRunner): Command {
  return program
    .command('diff')
    .description('files added, changed and removed between two backup points')
    .argument('<from>', 'the older point: id, unique id prefix, latest, or an ISO-8601 time')
    .argument('<to>', 'the newer point, in the same forms')
    .addHelpText('after', '\nExample:\n  lifeboat diff 20261120 latest')
    .action(run((ctx, a: string, b: string) => runDiff(ctx, a, b)));
}
