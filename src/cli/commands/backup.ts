import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { RuntimeFailure, UsageError, errorMessage } from '../../errors.js';
import { backup, checkBackupSources, type BackupResult } from '../../core/backup.js';
import { keepingWarnings, type Notice } from '../../core/events.js';
import { whileHoldingLock, type HeldLock } from '../../core/lock.js';
import { excludePatternProblem, notUtf8Path } from '../../core/scan.js';
import type { LifeboatConfig } from '../../config/config.js';
import type { BackupType } from '../../format/ids.js';
import { DEFAULT_DEPLOYMENT } from '../../format/manifest.js';
import { NAME, sourceNameFor } from '../../format/paths.js';
import { openRepository, type CliContext } from '../context.js';
import { escapeUnprintable, formatBytes, quoteName, counted, shellWord } from '../format.js';
import { formatDuration } from '../../config/duration.js';
import { ProgressRenderer, log, logNotice, printResult, warningsJson } from '../output.js';
import { captureSources, isStateSource, stateSource, type CapturedSources, type PendingSource } from '../../state/capture.js';
import { BackupHooks } from '../../state/hooks.js';
import type { CommandRunner } from '../main.js';
import { addCronOptions, lockRetryMs, lockStaleAfterMs, runMonitored, type CronFlags, type RunFigures } from '../cron.js';
import { directoryFlag, shownValue } from '../flags.js';

interface BackupFlags extends CronFlags {
  type?: string;
  source: string[];
  exclude: string[];
  tag: string[];
  dryRun?: boolean;
  strict?: boolean;
  allowEmpty?: boolean;
  workDir?: string;
}

const collect = (value: string, previous: string[]) => [...previous, value];

/** Sources from PATH arguments and --source flags, else from the config file. */
export function resolveSources(ctx: CliContext, paths: string[], flags: string[], config: LifeboatConfig): PendingSource[] {
  const specs: PendingSource[] = [];
  for (const p of paths) {
    // Read as a path, "" is the working directory (cron's is the home directory): a script's unset variable would back that up.
    if (p === '') throw new UsageError('a path to back up is empty (a variable not set?)', { hint: 'give the directory, or no path at all to back up the sources of the config' });
    const abs = path.resolve(ctx.cwd, p);
    const name = path.basename(abs);
    if (name === '') throw new UsageError(`${abs} has no name to give its source`, { hint: `name it: --source root=${shellWord(abs)}` });
    if (abs.includes('\uFFFD') && !existsSync(abs)) throw notUtf8Path(quoteName(abs));
    if (!NAME.test(name)) {
      // A directory such as `my models` or `.cache`: its name cannot name a source, but the directory can be backed up under another.
      throw new UsageError(`${quoteName(abs)}: its name cannot name a source (use letters, digits, '.', '_' or '-', starting with a letter, a digit or '_', at most 64)`, {
        hint: `name it: --source ${sourceNameFor(name)}=${shellWord(abs)}`,
      });
    }
    specs.push({ name, path: abs });
  }
  for (const f of flags) {
    const eq = f.indexOf('=');
    if (eq <= 0 || eq === f.length - 1) throw new UsageError(`--source ${shownValue(f)}: expected NAME=PATH`);
    specs.push({ name: f.slice(0, eq), path: path.resolve(ctx.cwd, f.slice(eq + 1)) });
  }
  if (specs.length > 0) return specs;
  for (const [name, src] of Object.entries(config.sources ?? {})) {
    if (typeof src === 'string') specs.push({ name, path: src });
    else if ('path' in src) specs.push({ name, path: src.path });
    else specs.push(stateSource(name, src));
  }
  return specs;
}

const TAG_KEY = /^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$/;

function parseTags(tags: string[]): Record<string, string> {
  const out = new Map<string, string>();
  for (const t of tags) {
    const eq = t.indexOf('=');
    if (eq <= 0) throw new UsageError(`--tag ${shownValue(t)}: expected KEY=VALUE`);
    const key = t.slice(0, eq);
    // Keys as labels are written elsewhere (Kubernetes, cloud tags); and one such as __proto__ would be lost in JSON objects.
    if (!TAG_KEY.test(key)) throw new UsageError(`--tag ${t}: a key is up to 128 letters, digits and . _ : / -, starting with a letter or digit`);
    // A point holds one value per key: the second would silently replace the first.
    if (out.has(key)) throw new UsageError(`--tag ${key} is given twice (${key}=${out.get(key)} and ${t})`, { hint: 'give each key once' });
    out.set(key, t.slice(eq + 1));
  }
  return Object.fromEntries(out);
}

export function backupJson(r: BackupResult) {
  return {
    id: r.id,
    type: r.type,
    parent: r.parent,
    deployment: r.deployment,
    files: r.files,
    bytes: r.bytes,
    added: r.added,
    changed: r.changed,
    removed: r.removed,
    storedBytes: r.storedBytes,
    durationMs: r.durationMs,
    dryRun: r.dryRun,
    ...(r.wouldCapture ? { wouldCapture: r.wouldCapture.map(({ name, kind, origin }) => ({ name, kind, path: origin })) } : {}),
    warnings: warningsJson(r.warnings),
  };
}

export async function runBackup(ctx: CliContext, paths: string[], flags: BackupFlags, figures: RunFigures = {}): Promise<void> {
  const type = (flags.type ?? 'incr') as BackupType;
  if (!['full', 'diff', 'incr'].includes(type)) throw new UsageError(`--type ${shownValue(type)}: use full, diff or incr`);
  for (const pattern of flags.exclude) {
    const refused = excludePatternProblem(pattern);
    if (refused) throw new UsageError(`--exclude ${pattern}: ${refused.problem}`, { hint: refused.hint });
  }
  // Before the preBackup hook pauses the server.
  const workDir = await directoryFlag(ctx.cwd, '--work-dir', flags.workDir);
  // What the run warned about before it failed, for monitoring (none, when it fails before it starts: a
  // wrong password, a repository out of reach); a result that succeeded replaces it with its own.
  const warned: Notice[] = [];
  figures.warnings = warned;
  const { repo, config, close } = await openRepository(ctx);
  const renderer = new ProgressRenderer(ctx, flags.dryRun ? 'backup (dry run)' : 'backup');
  const reporter = keepingWarnings(renderer, warned);
  // A dry run takes nothing, so it does not pause the server either.
  const hooks = new BackupHooks(flags.dryRun ? undefined : config.hooks, { cwd: ctx.cwd, env: ctx.env, signal: ctx.signal, onOutput: (line) => log(ctx, line) });
  const lockOptions = { lockStaleAfterMs: lockStaleAfterMs(flags, config), lockRetryMs: lockRetryMs(flags, config), signal: ctx.signal };

  /** The pre-hook, the capture of serving state, the backup and the post-hook, under the lock when one is held. */
  const takeBackup = async (sources: PendingSource[], tags: Record<string, string>, lock: HeldLock | undefined): Promise<void> => {
    let state: CapturedSources | undefined;
    let point: string | undefined;
    try {
      await hooks.before();
      // A dry run does not run a dump that may take an hour: it says which state it would capture.
      const notCaptured = flags.dryRun ? sources.filter(isStateSource) : [];
      state = await captureSources(flags.dryRun ? sources.filter((s) => !isStateSource(s)) : sources, {
        cwd: ctx.cwd,
        env: ctx.env,
        signal: ctx.signal,
        notice: (n) => reporter.notice?.(n),
        onOutput: (line) => log(ctx, line),
        tmpDir: workDir,
      });
      const result = await backup(repo, {
        sources: state.sources,
        captureWarnings: state.warnings,
        notCaptured: notCaptured.map(({ name, state: st }) => ({ name, kind: st.kind, origin: st.kind === 'sqlite' ? st.database : st.command })),
        type,
        excludes: [...(config.exclude ?? []), ...flags.exclude],
        tags,
        dryRun: flags.dryRun,
        strict: flags.strict,
        allowEmpty: flags.allowEmpty,
        deployment: repo.deployment,
        lock,
        signal: ctx.signal,
        reporter,
        concurrency: config.s3?.concurrency,
      });
      if (!result.dryRun) point = result.id;
      Object.assign(figures, { point: point ?? null, bytes: result.bytes, files: result.files, points: (await repo.pointIds()).length, warnings: result.warnings });
      renderer.stop();
      printResult(ctx, backupJson(result), () => {
        const verb = result.dryRun ? 'would take' : 'took';
        return [
          `${verb} ${result.type} backup ${result.dryRun ? '' : `${result.id} `}${result.deployment === DEFAULT_DEPLOYMENT ? '' : `of ${result.deployment} `}${result.parent ? `(parent ${result.parent})` : ''}`.replace(/\s+$/, ''),
          `  ${counted(result.files, 'file')}, ${formatBytes(result.bytes)}; entries: ${result.added} added, ${result.changed} changed, ${result.removed} removed`,
          `  ${result.dryRun ? 'would store' : 'stored'} ${formatBytes(result.storedBytes)} in ${formatDuration(result.durationMs)}${result.warnings.length ? `, ${result.warnings.length} warning(s)` : ''}`,
          ...(result.wouldCapture ?? []).map((s) => `  would capture ${s.name}: ${s.kind === 'sqlite' ? `an online copy of the SQLite database ${quoteName(s.origin)}` : `the output of \`${escapeUnprintable(s.origin)}\``}`),
        ].join('\n');
      }, { shownWhenQuiet: result.dryRun });
    } catch (err) {
      await state?.cleanup();
      // A warning, printed with --quiet too: what the preBackup hook paused may still be paused.
      await hooks.after({ error: err }, (message) => logNotice(ctx, { level: 'warning', code: 'hook-failed', message }));
      throw err;
    } finally {
      renderer.stop();
      await state?.cleanup();
    }
    await hooks.after({ point }).catch((err: unknown) => {
      // Said alone (a cron mail of --quiet), the hook's failure reads as a failed backup, and says nothing of the server.
      if (point === undefined || !(err instanceof RuntimeFailure)) throw err;
      throw new RuntimeFailure(errorMessage(err), {
        cause: err,
        hint: `backup point ${point} was taken and is kept; what the preBackup hook paused may still be paused: see to it by hand`,
      });
    });
  };

  try {
    // Whatever makes the backup a usage error is found before the lock is waited for and a hook runs.
    const sources = resolveSources(ctx, paths, flags.source, config);
    checkBackupSources(sources);
    const tags = parseTags(flags.tag);
    // The lock comes first: a second backup exits 4 before it pauses the server or starts a dump, and
    // the post-hook runs before the next backup's pre-hook. A dry run changes nothing and takes none.
    if (flags.dryRun) await takeBackup(sources, tags, undefined);
    else await whileHoldingLock(repo.storage, 'backup', lockOptions, renderer, (lock) => takeBackup(sources, tags, lock));
  } finally {
    renderer.stop();
    await close();
  }
}

export function registerBackup(program: Command, run: CommandRunner): Command {
  const command = program
    .command('backup')
    .description('take a backup point of the sources (default type incr; the first backup is always full)')
    .argument('[paths...]', 'directories to back up, each a source named by its basename')
    .option('-t, --type <type>', 'full, diff (changes since the last full) or incr (changes since the last backup)')
    .option('-s, --source <name=path>', 'a named source (repeatable)', collect, [])
    .option('-e, --exclude <glob>', 'skip matching paths, relative to each source (repeatable)', collect, [])
    .option('--tag <key=value>', 'label the point (repeatable)', collect, [])
    .option('-n, --dry-run', 'show what would be stored, store nothing')
    .option('--strict', 'fail (exit 3) on any warning, such as a file that changed while it was read')
    .option('--work-dir <dir>', 'where SQLite copies and command output are staged before they are stored (default: the system temporary directory)')
    .option('--allow-empty', 'back up a source that is empty although the newest point has files in it (refused otherwise: a volume that did not mount?)')
    .addHelpText(
      'after',
      '\nExamples:\n  lifeboat backup /srv/models /etc/triton --type full\n  lifeboat backup --source models=/srv/models --exclude "**/*.tmp"\n  lifeboat backup            # sources from lifeboat.yaml, incremental',
    )
    .action(run((ctx, paths: string[], flags: BackupFlags) => runMonitored(ctx, 'backup', flags, (figures) => runBackup(ctx, paths, flags, figures))));
  return addCronOptions(command, { lock: true });
}
