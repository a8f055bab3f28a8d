import type { Command } from 'commander';
import { IntegrityError, UsageError } from '../../errors.js';
import { verify, type Problem } from '../../core/verify.js';
import { LEDGER_KEY } from '../../core/verify-ledger.js';
import { openRepository, type CliContext } from '../context.js';
import { escapeUnprintable, formatBytes, quoteName, counted } from '../format.js';
import { ProgressRenderer, printResult, warningsJson } from '../output.js';
import type { CommandRunner } from '../main.js';
import { addCronOptions, addReaderLockOptions, readerLockMs, runMonitored, type CronFlags, type RunFigures } from '../cron.js';
import { directoryFlag, percentFlag } from '../flags.js';
import { aheadOfClock, formatDuration } from '../../config/duration.js';

interface VerifyFlags extends CronFlags {
  readData?: boolean;
  sinceVerified?: boolean;
  sample?: string;
  subset?: string;
  deep?: boolean;
  workDir?: string;
}

/**
 * How long ago a verification was recorded; or, when its time is ahead of this host's clock (the clock
 * of the host that recorded it ran ahead, or this one's is behind), by how much, rather than an age of
 * 0 that reads as a verification just done.
 */
function age(iso: string, now: number): string {
  const ahead = aheadOfClock(iso, now);
  if (ahead !== undefined) return `${formatDuration(ahead)} in the future: the clock of the host that recorded it ran ahead of this one's`;
  const ms = Math.max(0, now - Date.parse(iso));
  const h = ms / 3_600_000;
  // Within the hour by minutes and seconds, as status says an age: "0 hour(s) ago" would not say whether it was a minute or fifty.
  if (h < 1) return `${formatDuration(ms)} ago`;
  return h < 48 ? `${Math.round(h)} hour(s) ago` : `${Math.round(h / 24)} day(s) ago`;
}

/** How many of the points that need one missing object a line of verify names. */
const POINTS_NAMED = 3;

/**
 * What several problems share when the same thing is missing or unusable for each: a volume that is
 * missing, cut short or archived, or a point (or a volume of one) that the points after it take
 * their files from. Undefined for a problem that is its own.
 */
function missingThing(p: Problem): string | undefined {
  if (p.kind === 'missing-volume' || p.kind === 'size-mismatch' || p.kind === 'volume-archived') return `${p.kind}\0${p.path}`;
  // "depends on X, which is missing", "its bytes are in X volume 0, which is missing", the volume a --deep restore could not read: the detail names it.
  if (p.kind === 'chain-broken' || p.kind === 'restore-failed') return `${p.kind}\0${p.detail}`;
  return undefined;
}

/**
 * The problems found, a line each, except those that share what is missing: a volume of a full that
 * is lost breaks every point of its chain, hundreds of lines saying the same. They are one line, the
 * first of them, with how many more there are and the first few points that have them. --json
 * lists each problem.
 */
function problemLines(problems: readonly Problem[]): string[] {
  const groups = new Map<string, Problem[]>();
  const shown: Problem[][] = [];
  for (const p of problems) {
    const thing = missingThing(p);
    const group = thing === undefined ? undefined : groups.get(thing);
    if (group) group.push(p);
    else {
      shown.push([p]);
      if (thing !== undefined) groups.set(thing, shown.at(-1)!);
    }
  }
  return shown.map(([first, ...more]) => {
    // A restore of --deep that failed is the point's, of no one file.
    const line = `  ${first!.kind}: ${first!.point}${first!.path === '' ? '' : ` ${quoteName(first!.path)}`}: ${escapeUnprintable(first!.detail)}`;
    if (more.length === 0) return line;
    // The points that need one volume; the files of the points that need one whose manifest is gone.
    const files = more.some((p) => p.path !== first!.path);
    const points = [...new Set((files ? [first!, ...more] : more).map((p) => p.point))];
    const named = `${points.slice(0, POINTS_NAMED).join(', ')}${points.length > POINTS_NAMED ? ` and ${points.length - POINTS_NAMED} more` : ''}`;
    const need = more.length === 1 ? 'needs' : 'need';
    return files ? `${line}; ${counted(more.length, 'more file')} ${need} it too, of ${counted(points.length, 'point')}: ${named}` : `${line}; ${counted(more.length, 'more point')} ${need} it too: ${named}`;
  });
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
      ...readerLockMs(flags, config),
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
        lines.push(...problemLines(result.problems));
        lines.push(result.ok ? 'no problems found' : `${result.problems.length} problem(s) found`);
        return lines.join('\n');
      },
      // The problems found are what a nightly verify --quiet is run for.
      { shownWhenQuiet: !result.ok },
    );
    if (!result.ok) {
      throw new IntegrityError(`verify found ${result.problems.length} problem(s) in ${quoteName(repo.storage.location)}`, {
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
    .argument('[point]', 'only this point and what it depends on: id, unique id prefix, latest, or an ISO-8601 time')
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
  return addReaderLockOptions(addCronOptions(command));
}
