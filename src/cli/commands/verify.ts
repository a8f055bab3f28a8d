import type { Command } from 'commander';
import { IntegrityError, UsageError } from '../../errors.js';
import { verify } from '../../core/verify.js';
import { LEDGER_KEY } from '../../core/verify-ledger.js';
import { openRepository, type CliContext } from '../context.js';
import { escapeUnprintable, formatBytes, quoteName, counted } from '../format.js';
import { ProgressRenderer, printResult, warningsJson } from '../output.js';
import type { CommandRunner } from '../main.js';
import { addCronOptions, runMonitored, type CronFlags, type RunFigures } from '../cron.js';
import { directoryFlag, percentFlag } from '../flags.js';

interface VerifyFlags extends CronFlags {
  readData?: boolean;
  sinceVerified?: boolean;
  sample?: string;
  subset?: string;
  deep?: boolean;
  workDir?: string;
}

function age(iso: string, now: number): string {
  const h = Math.max(0, (now - Date.parse(iso)) / 3_600_000);
  return h < 48 ? `${Math.round(h)} hour(s) ago` : `${Math.round(h / 24)} day(s) ago`;
}

export async function runVerify(ctx: CliContext, selector: string | undefined, flags: VerifyFlags, figures: RunFigures = {}): Promise<void> {
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, 'verify');
  try {
    const samplePercent = percentFlag('--sample', flags.sample);
    const subsetPercent = percentFlag('--subset', flags.subset);
    if (flags.sinceVerified && subsetPercent !== undefined) throw new UsageError('--since-verified and --subset choose volumes in different ways; give one of them');
    if (samplePercent !== undefined && !flags.sinceVerified) throw new UsageError('--sample goes with --since-verified');
    if (flags.workDir !== undefined && !flags.deep) throw new UsageError('--work-dir goes with --deep');
    const workDir = await directoryFlag(ctx.cwd, '--work-dir', flags.workDir);
    const readData = flags.readData === true || flags.sinceVerified === true || subsetPercent !== undefined;
    const point = selector !== undefined ? await repo.resolve(selector) : undefined;
    const result = await verify(repo, {
      point,
      readData,
      sinceVerified: flags.sinceVerified,
      samplePercent,
      subsetPercent,
      deep: flags.deep,
      tmpDir: workDir,
      concurrency: config.s3?.concurrency,
      signal: ctx.signal,
      reporter: renderer,
    });
    renderer.stop();
    Object.assign(figures, { point: point?.id ?? null, bytes: result.bytesRead, files: result.files, points: result.backups, warnings: result.warnings });
    printResult(
      ctx,
      {
        ok: result.ok,
        backups: result.backups,
        files: result.files,
        bytesRead: result.bytesRead,
        problems: result.problems,
        warnings: warningsJson(result.warnings),
        ...(result.volumes ? { oldestVerifiedAt: result.oldestVerifiedAt ?? null, volumes: result.volumes } : {}),
        ...(flags.deep ? { deep: true } : {}),
      },
      () => {
        const lines = [
          // --deep restores every file, its SHA-256 checked: that is no check of the structure only.
          `checked ${result.backups} backup point(s), ${counted(result.files, 'file')}${readData ? `, read ${formatBytes(result.bytesRead)}` : flags.deep ? '' : ' (structure only; --read-data reads every byte)'}${flags.deep ? ', restored them (every SHA-256 checked) and validated the model files' : ''}`,
        ];
        const v = result.volumes;
        if (v) {
          const why = v.fresh !== undefined ? ` (${v.fresh} never verified, ${v.sampled} as the 1-in-${v.buckets} sample)` : '';
          lines.push(`read ${v.read} of ${v.total} volume(s)${why}`);
          // Without the record written, it says what it said before this run: said as such, not as this run's.
          const unrecorded = v.recorded !== false ? '' : `this run's reads could not be recorded in ${LEDGER_KEY}, which still says: `;
          if (result.oldestVerifiedAt) lines.push(`${unrecorded}oldest verification: ${result.oldestVerifiedAt} (${age(result.oldestVerifiedAt, Date.now())})${v.neverVerified ? `; ${v.neverVerified} volume(s) never verified` : ''}`);
          else if (v.neverVerified) lines.push(`${unrecorded}${v.neverVerified} volume(s) never verified`);
        }
        for (const p of result.problems) lines.push(`  ${p.kind}: ${p.point} ${quoteName(p.path)}: ${escapeUnprintable(p.detail)}`);
        lines.push(result.ok ? 'no problems found' : `${result.problems.length} problem(s) found`);
        return lines.join('\n');
      },
      // The problems found are what a nightly verify --quiet is run for.
      { shownWhenQuiet: !result.ok },
    );
    if (!result.ok) {
      throw new IntegrityError(`verify found ${result.problems.length} problem(s) in ${repo.storage.location}`, {
        hint: result.problems.some((p) => p.kind === 'volume-archived')
          ? 'retrieve the archived volumes (aws s3api restore-object) and keep the repository out of lifecycle rules that archive objects, or take a new full backup'
          : 'restore from an older point that verifies, or take a new full backup',
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
    .option('--since-verified', 'read only volumes never verified, plus a rotating sample of the rest (implies --read-data)')
    .option('--sample <percent>', 'with --since-verified: the share re-read each run (default 5); every volume is re-read within ceil(100/PERCENT) runs')
    .option('--subset <percent>', 'read a random share of the volumes (implies --read-data)')
    .option('--deep', 'restore the point(s) into a temporary directory and check that the models there would load (safetensors, ONNX, GGUF, configs)')
    .option('--work-dir <dir>', 'with --deep: make the temporary restore directory here (default: the system temporary directory)')
    .addHelpText(
      'after',
      '\nEvery --read-data run records which volumes it read in the repository (ledger/verified.json).\n\nExamples:\n  lifeboat verify\n  lifeboat verify latest --read-data --json\n  lifeboat verify --read-data --since-verified --sample 10\n  lifeboat verify latest --deep')
    .action(run((ctx, selector: string | undefined, flags: VerifyFlags) => runMonitored(ctx, 'verify', flags, (figures) => runVerify(ctx, selector, flags, figures))));
  return addCronOptions(command);
}
