import type { Command } from 'commander';
import { UsageError, errorMessage } from '../../errors.js';
import { appendEvent } from '../../core/journal.js';
import { restore } from '../../core/restore.js';
import { openRepository, type CliContext } from '../context.js';
import { withIntactAlternative } from '../damage.js';
import { formatBytes } from '../format.js';
import { formatDuration } from '../../config/duration.js';
import { ProgressRenderer, printResult } from '../output.js';
import type { CommandRunner } from '../main.js';

interface RestoreFlags {
  target?: string;
  delta?: boolean;
  force?: boolean;
  include: string[];
  numericOwner?: boolean;
}

const collect = (value: string, previous: string[]) => [...previous, value];

export async function runRestore(ctx: CliContext, selector: string, flags: RestoreFlags): Promise<void> {
  if (!flags.target) throw new UsageError('restore needs --target DIR');
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, 'restore');
  try {
    const point = await repo.resolve(selector);
    const started = Date.now();
    const result = await restore(repo, point, {
      target: flags.target.startsWith('/') ? flags.target : `${ctx.cwd}/${flags.target}`,
      delta: flags.delta,
      force: flags.force,
      include: flags.include,
      numericOwner: flags.numericOwner,
      concurrency: config.s3?.concurrency,
      signal: ctx.signal,
      reporter: renderer,
    }).catch(async (err: unknown) => {
      await appendEvent(repo.storage, { type: 'restore', point: point.id, target: flags.target, outcome: 'failed', durationMs: Date.now() - started, detail: { error: errorMessage(err) } }).catch(() => undefined);
      throw await withIntactAlternative(err, repo, point, (id) => `lifeboat restore ${id} --target ${flags.target}`);
    });
    // A restore may run with read-only credentials: failing to journal it must not fail it.
    await appendEvent(repo.storage, { type: 'restore', point: result.point, target: result.target, outcome: 'ok', durationMs: result.durationMs, detail: { files: result.files, bytes: result.bytes } }).catch(
      (err: unknown) => renderer.notice({ level: 'warning', code: 'journal', message: `could not record the restore in the journal: ${errorMessage(err)}` }),
    );
    renderer.stop();
    const json: Record<string, unknown> = {
      point: result.point,
      target: result.target,
      files: result.files,
      bytes: result.bytes,
      durationMs: result.durationMs,
      warnings: result.warnings.map(({ code, path, message }) => ({ code, path, message })),
    };
    if (result.rewritten !== undefined) Object.assign(json, { rewritten: result.rewritten, unchanged: result.unchanged, removed: result.removed });
    printResult(ctx, json, () => {
      const delta = result.rewritten !== undefined ? ` (${result.rewritten} rewritten, ${result.unchanged} unchanged, ${result.removed} removed)` : '';
      return `restored ${result.point} to ${result.target}: ${result.files} files, ${formatBytes(result.bytes)}, every checksum verified, in ${formatDuration(result.durationMs)}${delta}`;
    });
  } finally {
    renderer.stop();
    await close();
  }
}

export function registerRestore(program: Command, run: CommandRunner): Command {
  return program
    .command('restore')
    .description('restore a backup point into a directory, verifying every file; each source lands in DIR/<source>/')
    .argument('<point>', 'id, unique id prefix, latest, or an ISO-8601 time')
    .option('--target <dir>', 'where to restore (must be empty or absent, unless --delta or --force)')
    .option('--delta', 'update an existing target: rewrite only files whose content differs, remove what the point lacks')
    .option('--force', 'replace a non-empty target')
    .option('--numeric-owner', 'as root, give files the recorded uid and gid numbers instead of the local ids of the recorded user and group names')
    .option('-i, --include <glob>', 'restore only matching <source>/<path> entries; a directory or source name means all in it (repeatable)', collect, [])
    .addHelpText(
      'after',
      '\nExamples:\n  lifeboat restore latest --target /srv/restore\n  lifeboat restore 2026-11-20T03:00:00Z --target /srv/models-prev --delta\n  lifeboat restore latest --target /tmp/tok --include models/tokenizer',
    )
    .action(run((ctx, selector: string, flags: RestoreFlags) => runRestore(ctx, selector, flags)));
}
