import type { Command } from 'commander';
import { IntegrityError } from '../../errors.js';
import { verify } from '../../core/verify.js';
import { openRepository, type CliContext } from '../context.js';
import { formatBytes } from '../format.js';
import { ProgressRenderer, printResult } from '../output.js';
import type { CommandRunner } from '../main.js';
import { addCronOptions, runMonitored, type CronFlags, type RunFigures } from '../cron.js';

interface VerifyFlags extends CronFlags {
  readData?: boolean;
}

export async function runVerify(ctx: CliContext, selector: string | undefined, flags: VerifyFlags, figures: RunFigures = {}): Promise<void> {
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, 'verify');
  try {
    const point = selector ? await repo.resolve(selector) : undefined;
    const result = await verify(repo, { point, readData: flags.readData, concurrency: config.s3?.concurrency, signal: ctx.signal, reporter: renderer });
    renderer.stop();
    Object.assign(figures, { point: point?.id ?? null, bytes: result.bytesRead, files: result.files, points: result.backups });
    printResult(
      ctx,
      {
        ok: result.ok,
        backups: result.backups,
        files: result.files,
        bytesRead: result.bytesRead,
        problems: result.problems,
        warnings: result.warnings.map(({ code, path, message }) => ({ code, path, message })),
      },
      () => {
        const lines = [
          `checked ${result.backups} backup point(s), ${result.files} files${flags.readData ? `, read ${formatBytes(result.bytesRead)}` : ' (structure only; --read-data reads every byte)'}`,
        ];
        for (const p of result.problems) lines.push(`  ${p.kind}: ${p.point} ${p.path}: ${p.detail}`);
        lines.push(result.ok ? 'no problems found' : `${result.problems.length} problem(s) found`);
        return lines.join('\n');
      },
    );
    if (!result.ok) {
      throw new IntegrityError(`verify found ${result.problems.length} problem(s) in ${repo.storage.location}`, {
        hint: 'restore from an older point that verifies, or take a new full backup',
      });
    }
  } finally {
    renderer.stop();
    await close();
  }
}

export function registerVerify(program: Command, run: CommandRunner): Command {
  const command = program
    .command('verify')
    .description('check that every point is complete; with --read-data, read everything back and check every checksum')
    .argument('[point]', 'only this point and what it depends on')
    .option('--read-data', 'read all data and check every SHA-256 and volume CRC-32')
    .addHelpText('after', '\nExamples:\n  lifeboat verify\n  lifeboat verify latest --read-data --json')
    .action(run((ctx, selector: string | undefined, flags: VerifyFlags) => runMonitored(ctx, 'verify', flags, (figures) => runVerify(ctx, selector, flags, figures))));
  return addCronOptions(command);
}
