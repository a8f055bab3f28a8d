import type { Command } from 'commander';
import { diffPoints } from '../../core/diff.js';
import { deploymentOf } from '../../format/manifest.js';
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
    // Points of two deployments of a shared repository hold two models: said, so that their differences are not read as one model's changes.
    const across = deploymentOf(from) !== deploymentOf(to);
    const named = (m: typeof from) => (across ? `${m.id} (deployment ${deploymentOf(m)})` : m.id);
    printResult(ctx, { from: from.id, to: to.id, fromDeployment: deploymentOf(from), toDeployment: deploymentOf(to), ...d }, () => {
      const lines = [`${named(from)} → ${named(to)}: ${d.added.length} added, ${d.changed.length} changed, ${d.removed.length} removed`];
      for (const p of d.added) lines.push(`+ ${quoteName(p)}`);
      for (const c of d.changed) lines.push(`M ${quoteName(c.path)}  (${c.what.join(', ')})`);
      for (const p of d.removed) lines.push(`- ${quoteName(p)}`);
      return lines.join('\n');
    }, { shownWhenQuiet: true });
  } finally {
    await close();
  }
}

export function registerDiff(program: Command, run: CommandRunner): Command {
  return program
    .command('diff')
    .description('files added, changed and removed between two backup points')
    .argument('<from>', 'older point')
    .argument('<to>', 'newer point')
    .addHelpText('after', '\nExample:\n  lifeboat diff 20261120 latest')
    .action(run((ctx, a: string, b: string) => runDiff(ctx, a, b)));
}
