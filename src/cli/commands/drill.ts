import type { Command } from 'commander';
import * as path from 'node:path';
import { HealthError, IntegrityError, RuntimeFailure, errorMessage, fileSystemHint } from '../../errors.js';
import { formatDuration } from '../../config/duration.js';
import { drill, unfinishedChecks, type CheckName, type DrillCheck, type DrillResult } from '../../core/drill.js';
import { drillErrorJUnit, drillJUnit } from '../../core/junit.js';
import { keepingWarnings, type Notice } from '../../core/events.js';
import { writeFileAtomic } from '../../core/metrics.js';
import { makeDirectories } from '../../format/mkdirs.js';
import { contextConfig, openRepository, repositoryUrl, type CliContext } from '../context.js';
import { withIntactAlternative } from '../damage.js';
import { addCronOptions, addReaderLockOptions, readerLockMs, runMonitored, type CronFlags } from '../cron.js';
import { escapeUnprintable, formatBytes, counted, quoteName } from '../format.js';
import { directoryFlag, durationFlag, nonEmpty, pathFlag, reportFileFlag } from '../flags.js';
import { ProgressRenderer, log, logNotice, printResult, warningsJson } from '../output.js';
import type { CommandRunner } from '../main.js';

interface DrillFlags extends CronFlags {
  smoke?: string;
  smokeTimeout?: string;
  rto?: string;
  rpo?: string;
  junit?: string;
  workDir?: string;
}

/** A timeout or objective: of 0, it could only fail. */
function duration(flag: string, text: string | undefined): number | undefined {
  return durationFlag(flag, text, { positive: true, example: '90s, 15m or 24h' });
}

export function drillJson(r: DrillResult) {
  return {
    ok: r.ok,
    point: r.point,
    rtoMs: r.rtoMs,
    rpoMs: r.rpoMs,
    objectives: r.objectives,
    files: r.files,
    bytes: r.bytes,
    smoke: r.smoke,
    problems: r.problems,
    checks: r.checks,
    exitCode: r.exitCode,
    warnings: warningsJson(r.warnings),
  };
}

/** Writes the JUnit report, its directory made if need be (`--junit reports/drill.xml` in a fresh CI checkout). */
async function writeReport(file: string, xml: string): Promise<void> {
  try {
    await makeDirectories(path.dirname(file));
    await writeFileAtomic(file, xml);
  } catch (err) {
    throw new RuntimeFailure(`could not write the JUnit report ${quoteName(file)}: ${errorMessage(err)}`, { cause: err, hint: fileSystemHint(err, path.dirname(file)) });
  }
}

function summary(r: DrillResult): string {
  const mark = (s: string) => (s === 'passed' ? 'ok  ' : s === 'failed' ? 'FAIL' : 'skip');
  const lines = [`drill of ${r.point}: ${r.ok ? 'passed' : 'FAILED'}`];
  // A message may name restored files, and the smoke command may print anything (colours, a progress line's \r):
  // neither may rewrite the operator's terminal or add lines of its own.
  for (const c of r.checks) lines.push(`  ${mark(c.status)}  ${c.name.padEnd(9)} ${escapeUnprintable(c.message)}`);
  lines.push(`  RTO ${formatDuration(r.rtoMs)} (restore ${counted(r.files, 'file')}, ${formatBytes(r.bytes)}, verify${r.smoke ? ', smoke' : ''}), RPO ${formatDuration(r.rpoMs)}`);
  if (r.smoke && r.smoke.exitCode !== 0 && r.smoke.output) {
    lines.push('  smoke output (tail):', ...r.smoke.output.trimEnd().split(/\r?\n/).slice(-20).map((l) => `    ${escapeUnprintable(l)}`));
  }
  return lines.join('\n');
}

export async function runDrill(ctx: CliContext, selector: string | undefined, flags: DrillFlags): Promise<void> {
  await runMonitored(ctx, 'drill', flags, async (figures) => {
    const options = {
      smoke: nonEmpty('--smoke', flags.smoke, 'a shell command'),
      smokeTimeoutMs: duration('--smoke-timeout', flags.smokeTimeout),
      rtoMs: duration('--rto', flags.rto),
      rpoMs: duration('--rpo', flags.rpo),
    };
    const junitFile = pathFlag(ctx.cwd, '--junit', flags.junit, 'a file');
    let repository = '(unknown)';
    const startedAt = new Date();
    // The checks made so far, and when the last ended: what an interrupted drill still reports.
    const made: DrillCheck[] = [];
    const outputs: Partial<Record<CheckName, string>> = {};
    let lastCheckEnded = startedAt.getTime();
    let running = false;
    let result: DrillResult;
    let damaged: unknown;
    const renderer = new ProgressRenderer(ctx, 'drill');
    // What the drill warned about, kept here too: one that does not finish still tells monitoring.
    const warned: Notice[] = [];
    let reportRefused = false;
    try {
      const workDir = await directoryFlag(ctx.cwd, '--work-dir', flags.workDir);
      // Known before the restore, not after it.
      await reportFileFlag(ctx.cwd, '--junit', flags.junit, 'drill.xml').catch((err: unknown) => {
        // Refused as it is, the report is not tried again: the refusal says it all.
        reportRefused = true;
        throw err;
      });
      const config = await contextConfig(ctx);
      repository = repositoryUrl(ctx, config);
      const { repo, close } = await openRepository(ctx);
      try {
        const point = await repo.resolve(selector ?? 'latest');
        figures.point = point.id;
        running = true;
        result = await drill(repo, point, {
          ...options,
          workDir,
          cwd: ctx.cwd,
          env: ctx.env,
          concurrency: config.s3?.concurrency,
          ...readerLockMs(flags, config),
          signal: ctx.signal,
          reporter: keepingWarnings(renderer, warned),
          onCheck: (c) => {
            made.push(c);
            lastCheckEnded = Date.now();
          },
          onOutput: (name, output) => (outputs[name] = output),
        });
        if (result.exitCode === 3) {
          // The checksums passed and the model check failed: the data is intact, and verify would find nothing.
          const modelOnly = !result.problems.some((p) => p.check === 'restore' || p.check === 'checksums');
          const failure = new IntegrityError(`drill of ${result.point} failed: ${result.problems[0]?.message ?? 'the data did not restore intact'}`, {
            hint: modelOnly
              ? `every file restored as it was backed up, so its models were like this when ${result.point} was taken (\`lifeboat show ${result.point}\` lists what its backup warned of); drill an older point whose models load`
              : 'run `lifeboat verify --read-data` to find every damaged point; drill an older point that verifies',
            volume: result.damagedVolume,
          });
          damaged = await withIntactAlternative(failure, repo, point, (id) => `lifeboat drill ${id}`);
        }
      } finally {
        await close();
      }
    } catch (err) {
      renderer.stop();
      // Interrupted too (a CI job's timeout sends SIGTERM): the job's report then says the drill did not finish, instead of
      // nothing, names the point it was drilling once one was chosen, and keeps the checks that had passed, the one it was
      // making marked with the error.
      const checks = unfinishedChecks(made, errorMessage(err), Date.now() - lastCheckEnded, outputs);
      if (junitFile && !reportRefused) {
        // Asked for and not written: said, as a drill that finished says it, never left for CI to find missing.
        await writeReport(junitFile, drillErrorJUnit(checks, repository, figures.point ?? selector ?? 'latest', startedAt)).catch((failure: unknown) => reportNotWritten(ctx, failure, warned));
      }
      // Its warnings count as a finished drill's do, in the metrics file and for --notify-on warning.
      figures.warnings = warned;
      if (running || warned.length) ctx.keepDocument?.({ ...(running ? { point: figures.point, checks } : {}), warnings: warningsJson(warned) });
      throw err;
    } finally {
      renderer.stop();
    }
    Object.assign(figures, { bytes: result.bytes, files: result.files, rtoMs: result.rtoMs, rpoMs: result.rpoMs, objectivesMet: result.ok, warnings: result.warnings });
    const failure = damaged ?? (result.exitCode === 5 ? new HealthError(`drill of ${result.point} failed: ${result.problems.map((p) => `${p.check}: ${p.message}`).join('; ')}`) : undefined);
    // A report that cannot be written (its directory replaced during the drill, a full disk) does not cost the
    // operator the result of the drill that ran: it is printed first, then the failure is told. A drill that failed
    // keeps its own exit code (3 damaged data, 5 a failed check), the missing report a warning besides.
    let reportFailure: unknown;
    if (junitFile) {
      try {
        await writeReport(junitFile, drillJUnit(result, repository));
        log(ctx, `wrote the JUnit report ${quoteName(junitFile)}`);
      } catch (err) {
        reportFailure = err;
        if (failure !== undefined) reportNotWritten(ctx, err, result.warnings);
      }
    }
    // A drill that failed says which checks did, --quiet or not.
    printResult(ctx, drillJson(result), () => summary(result), { shownWhenQuiet: !result.ok });
    if (failure !== undefined) throw failure;
    if (reportFailure !== undefined) throw reportFailure;
  });
}

/** A JUnit report that could not be written, beside a result that stands: a warning of the drill, said at once. */
function reportNotWritten(ctx: CliContext, err: unknown, warnings: Notice[]): void {
  const notice: Notice = { level: 'warning', code: 'junit-failed', message: errorMessage(err) };
  warnings.push(notice);
  logNotice(ctx, notice);
}

export function registerDrill(program: Command, run: CommandRunner): Command {
  const command = program
    .command('drill')
    .description('prove a point restores: restore it into a temporary directory, check every file, run a smoke test, measure RTO and RPO')
    .argument('[point]', 'id, unique id prefix, latest (default), or an ISO-8601 time')
    .option('--smoke <command>', 'run this shell command on the restored deployment (LIFEBOAT_RESTORE_DIR is set); non-zero exit fails the drill')
    .option('--smoke-timeout <duration>', 'kill the smoke command after this long (default 15m)')
    .option('--rto <duration>', 'recovery time objective: restore + verification + smoke must take at most this long')
    .option('--rpo <duration>', 'recovery point objective: the point must be at most this old')
    .option('--junit <file>', 'write a JUnit XML report (one testcase per check) for CI')
    .option('--work-dir <dir>', 'make the temporary restore directory here (default: the system temporary directory)');
  addReaderLockOptions(addCronOptions(command));
  return command
    .addHelpText(
      'after',
      '\nExit status: 0 every check passed, 3 the data did not restore intact or its models would not load, 5 the smoke test or an objective failed, 1 the restore could not run (no room in the work directory, a storage error).\n\nExamples:\n  lifeboat drill --rpo 26h --rto 15m --junit drill.xml\n  lifeboat drill latest --smoke \'python smoke.py "$LIFEBOAT_RESTORE_DIR/models"\' --json',
    )
    .action(run((ctx, selector: string | undefined, flags: DrillFlags) => runDrill(ctx, selector, flags)));
}
