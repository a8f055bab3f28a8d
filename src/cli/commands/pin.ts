import * as path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../../config/config.js';
import { pin, unpin } from '../../core/pins.js';
import { chooseTarget, type TargetSpec } from '../../core/targets.js';
import { openRepository, type CliContext } from '../context.js';
import { quoteName } from '../format.js';
import { printResult } from '../output.js';
import type { CommandRunner } from '../main.js';

/** The targets of the config file, paths taken from its directory (their slots protect points from prune). */
export async function configuredTargets(ctx: CliContext): Promise<TargetSpec[]> {
  const { config, file } = await loadConfig({ explicit: ctx.global.config, cwd: ctx.cwd, env: ctx.env });
  const base = file ? path.dirname(file) : ctx.cwd;
  return Object.keys(config.targets ?? {}).map((name) => chooseTarget(config, name, base, ctx.env));
}

interface PinFlags {
  reason?: string;
}

export async function runPin(ctx: CliContext, selector: string, flags: PinFlags): Promise<void> {
  const { repo, close } = await openRepository(ctx);
  try {
    const m = await repo.resolve(selector);
    const { pin: p, replaced } = await pin(repo, m.id, flags.reason ?? '');
    printResult(ctx, { point: p.point, pinned: true, reason: p.reason, pinnedAt: p.pinnedAt, ...(replaced ? { previousReason: replaced.reason } : {}) }, () =>
      `pinned ${p.point} (${m.type}, ${m.completedAt}): ${quoteName(p.reason)}${replaced ? ` (was: ${quoteName(replaced.reason)})` : ''}\n  prune keeps it, and every point it depends on, until \`lifeboat unpin ${p.point}\``,
    );
  } finally {
    await close();
  }
}

export async function runUnpin(ctx: CliContext, selector: string): Promise<void> {
  const { repo, close } = await openRepository(ctx);
  try {
    const m = await repo.resolve(selector);
    const p = await unpin(repo, m.id);
    printResult(ctx, { point: p.point, pinned: false, reason: p.reason }, () => `unpinned ${p.point} (it was pinned: ${quoteName(p.reason)}); retention decides about it again`);
  } finally {
    await close();
  }
}

export function registerPin(program: Command, run: CommandRunner): Command {
  return program
    .command('pin')
    .description('keep a point whatever the retention policy says, until it is unpinned')
    .argument('<point>', 'id, unique id prefix, latest, or an ISO-8601 time')
    .requiredOption('--reason <text>', 'why it is kept (shown by list and prune --dry-run)')
    .addHelpText('after', '\nExamples:\n  lifeboat pin latest --reason "release 2.3 candidate"\n  lifeboat pin 20261120-030000-000F --reason "audit hold, ticket 4411"')
    .action(run((ctx, selector: string, flags: PinFlags) => runPin(ctx, selector, flags)));
}

export function registerUnpin(program: Command, run: CommandRunner): Command {
  return program
    .command('unpin')
    .description('remove the pin of a point, so retention decides about it again')
    .argument('<point>', 'id, unique id prefix, latest, or an ISO-8601 time')
    .addHelpText('after', '\nExample:\n  lifeboat unpin 20261120-030000-000F')
    .action(run((ctx, selector: string) => runUnpin(ctx, selector)));
}
