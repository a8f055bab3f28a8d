import * as path from 'node:path';
import type { Command } from 'commander';
import { Option } from 'commander';
import { ExitCode, UsageError, decidedBeforeInterruption, errorMessage, failureExitCode } from '../errors.js';
import type { LifeboatConfig } from '../config/config.js';
import { updateMetricsFile, type MetricSample } from '../core/metrics.js';
import { makeEvent, redactUrl, sendNotification } from '../core/notify.js';
import { contextConfig, deploymentName, repositoryUrl, type CliContext } from './context.js';
import { logNotice } from './output.js';
import { quoteName } from './format.js';
import { durationFlag, nonEmpty, reportFileFlag } from './flags.js';
import { makeDirectories } from '../format/mkdirs.js';

/** Flags every command run unattended takes (backup, verify, prune, drill). */
export interface CronFlags extends LockFlags {
  metricsFile?: string;
  notifyUrl?: string;
  notifyOn?: string[];
}

/** The flags of a command that takes the repository lock, or waits for a prune that holds it. */
export interface LockFlags {
  lockStaleAfter?: string;
  retryLock?: string;
}

/** What a command tells the wrapper about its run, for metrics and notifications. */
export interface RunFigures {
  point?: string | null;
  bytes?: number;
  files?: number;
  /** Points in the repository after the run. */
  points?: number;
  /** Drills: achieved RTO and RPO, and whether every objective was met. */
  rtoMs?: number;
  rpoMs?: number;
  objectivesMet?: boolean;
  /** What the run warned about (files left out, a file that kept changing …); it still succeeded. */
  warnings?: readonly RunWarning[];
}

export interface RunWarning {
  code: string;
  path?: string;
  message: string;
}

/** Warnings an event carries at most; the count is in `detail.warnings`. */
const EVENT_WARNINGS = 20;

const NOTIFY_ON = new Set(['failure', 'warning', 'success']);

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(',').map((v) => v.trim()).filter(Boolean)];

export function addCronOptions(command: Command, options: { lock?: boolean } = {}): Command {
  command
    .option('--metrics-file <path>', 'write Prometheus text-format metrics here (atomically), for node_exporter\'s textfile collector')
    .option('--notify-url <url>', 'POST a JSON event here when the run fails (or notify.url in the config)')
    .addOption(new Option('--notify-on <events>', 'when to notify: failure (always), warning (a success with warnings), success (comma-separated, repeatable)').argParser(collect));
  if (options.lock) {
    command
      .option('--lock-stale-after <duration>', 'take over a lock not refreshed for this long (lock.staleAfter; default 30m)')
      .option('--retry-lock <duration>', 'wait this long for a lock another live process holds, instead of exiting 4 at once (lock.retry)');
  }
  return command;
}

/**
 * The flags of a reader (restore, verify, drill, failover): how long it waits for a running prune before
 * exiting 4, and when that prune's lock is stale (a prune stopped, or killed on another host).
 */
export function addReaderLockOptions(command: Command, staleHelp = "take a prune's lock not refreshed for this long as stale and go on (lock.staleAfter; default 30m)"): Command {
  return command.option('--retry-lock <duration>', 'wait this long for a running prune to finish before exiting 4 (lock.retry; default 30m)').option('--lock-stale-after <duration>', staleHelp);
}

/** What a reader (restore, verify, drill, failover) tells its registration as a reader: flags > config > READER_WAIT_MS and the holder's lease. */
export function readerLockMs(flags: LockFlags, config: LifeboatConfig): { lockRetryMs?: number; lockStaleAfterMs?: number } {
  return { lockRetryMs: lockRetryMs(flags, config), lockStaleAfterMs: lockStaleAfterMs(flags, config) };
}

/** flags > config > default (the holder's recorded lease, 30 minutes by default). */
export function lockStaleAfterMs(flags: LockFlags, config: LifeboatConfig): number | undefined {
  return durationFlag('--lock-stale-after', flags.lockStaleAfter ?? config.lock?.staleAfter, { positive: true, example: '10m or 2h' });
}

/** flags > config > not at all. */
export function lockRetryMs(flags: LockFlags, config: LifeboatConfig): number | undefined {
  return durationFlag('--retry-lock', flags.retryLock ?? config.lock?.retry, { example: '10m or 2h' });
}

/**
 * Runs a command for cron and CI: measures it, then writes the metrics file and
 * sends the notification whether it succeeded or failed, and rethrows its error
 * so the exit code is unchanged. Neither metrics nor notification failures fail
 * the command; they are logged as warnings.
 */
export async function runMonitored(ctx: CliContext, command: string, flags: CronFlags, body: (figures: RunFigures) => Promise<void>): Promise<void> {
  // Checked before the run: a mistyped flag must not leave a nightly failure unreported.
  for (const e of flags.notifyOn ?? []) {
    if (!NOTIFY_ON.has(e)) throw new UsageError(`--notify-on ${e}: use failure, warning or success`);
  }
  if (flags.notifyOn?.length === 0) throw new UsageError('--notify-on "": use failure, warning or success');
  nonEmpty('--notify-url', flags.notifyUrl, 'an http:// or https:// URL');
  const metricsFile = await reportFileFlag(ctx.cwd, '--metrics-file', flags.metricsFile, 'lifeboat.prom');
  const startedAt = new Date();
  const figures: RunFigures = {};
  let failure: unknown;
  try {
    await body(figures);
  } catch (err) {
    failure = err;
  }
  const endedAt = new Date();
  const code = failure === undefined ? ExitCode.ok : failureExitCode(failure, ctx.signal);
  const interrupted = code === ExitCode.interrupted;

  let config: LifeboatConfig = {};
  let deployment: string | undefined;
  try {
    config = await contextConfig(ctx);
    deployment = deploymentName(ctx, config);
  } catch {
    // The command reports a broken config itself; flags still work.
  }
  const warn = (message: string, code2: string) => logNotice(ctx, { level: 'warning', code: code2, message });

  if (metricsFile !== undefined) {
    try {
      // A textfile directory not made yet (a fresh host, a CI workspace) is made, as --junit's is.
      await makeDirectories(path.dirname(metricsFile));
      await updateMetricsFile(metricsFile, { command, deployment }, metricSamples({ command, deployment }, code, startedAt, endedAt, figures));
    } catch (err) {
      warn(`could not write the metrics file ${quoteName(flags.metricsFile!)}: ${errorMessage(err)}`, 'metrics-failed');
    }
  }

  const url = flags.notifyUrl ?? config.notify?.url;
  const on = new Set(flags.notifyOn ?? config.notify?.on ?? ['failure']);
  const warnings = figures.warnings ?? [];
  if (url && (failure !== undefined || on.has('success') || (on.has('warning') && warnings.length > 0))) {
    let repository: string | null = null;
    try {
      repository = repositoryUrl(ctx, config);
    } catch {
      // No repository was given; the event says so.
    }
    const event = makeEvent({
      command,
      outcome: failure === undefined ? 'success' : 'failure',
      exitCode: code,
      message: failure === undefined ? null : errorMessage(failure),
      repository,
      deployment: deployment ?? null,
      point: figures.point ?? null,
      startedAt: startedAt.toISOString(),
      endedAt: endedAt.toISOString(),
      durationMs: endedAt.getTime() - startedAt.getTime(),
      warnings: warnings.slice(0, EVENT_WARNINGS).map(({ code: c, path, message }) => ({ code: c, ...(path === undefined ? {} : { path }), message })),
      detail: { ...figures, warnings: warnings.length },
    });
    const problem = await sendNotification(url, event);
    if (problem) warn(`could not notify ${redactUrl(url)}: ${problem}`, 'notify-failed');
  }
  if (failure !== undefined) {
    // Metrics and notification said this code: a signal that arrived while they were sent does not change it.
    if (!interrupted) decidedBeforeInterruption(failure);
    throw failure;
  }
}

function metricSamples(run: { command: string; deployment?: string }, code: number, startedAt: Date, endedAt: Date, f: RunFigures): MetricSample[] {
  // A deployment label only where one is named, so the series of a repository of one deployment stay as they were.
  const labels: Record<string, string> = run.deployment === undefined ? { command: run.command } : { command: run.command, deployment: run.deployment };
  const seconds = (d: Date) => d.getTime() / 1000;
  const out: MetricSample[] = [
    { name: 'lifeboat_last_run_timestamp_seconds', labels, value: seconds(endedAt) },
    { name: 'lifeboat_last_run_duration_seconds', labels, value: (endedAt.getTime() - startedAt.getTime()) / 1000 },
    { name: 'lifeboat_last_run_exit_code', labels, value: code },
    { name: 'lifeboat_last_run_success', labels, value: code === 0 ? 1 : 0 },
  ];
  if (code === 0) out.push({ name: 'lifeboat_last_success_timestamp_seconds', labels, value: seconds(endedAt) });
  if (f.bytes !== undefined) out.push({ name: 'lifeboat_last_run_bytes', labels, value: f.bytes });
  if (f.files !== undefined) out.push({ name: 'lifeboat_last_run_files', labels, value: f.files });
  if (f.points !== undefined) out.push({ name: 'lifeboat_points', labels, value: f.points });
  if (f.rtoMs !== undefined) out.push({ name: 'lifeboat_drill_rto_seconds', labels, value: f.rtoMs / 1000 });
  if (f.rpoMs !== undefined) out.push({ name: 'lifeboat_drill_rpo_seconds', labels, value: f.rpoMs / 1000 });
  if (f.objectivesMet !== undefined) out.push({ name: 'lifeboat_drill_objectives_met', labels, value: f.objectivesMet ? 1 : 0 });
  if (f.warnings !== undefined) out.push({ name: 'lifeboat_last_run_warnings', labels, value: f.warnings.length });
  return out;
}

